#!/usr/bin/env python3
"""Measures brainstemd's lifecycle figures for docs/PERFORMANCE.md: cold start to READY=1 (exec to the
notify datagram), SIGTERM to exit, and idle RSS. Uses a fresh dev state dir each run (first start, so
dev PKI creation is included) and a second start over the same dir (warm: PKI exists).

    python3 docs/measure-lifecycle.py target/release/brainstemd [runs]
"""
import os, signal, socket, statistics, subprocess, sys, tempfile, time

def one(binary, state_dir, tmp):
    sock_path = os.path.join(tmp, "notify.sock")
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, RUST_LOG="warn")
    t0 = time.perf_counter()
    proc = subprocess.Popen([binary, "--dev", "--state-dir", state_dir, "--listen", "127.0.0.1:0",
                             "--metrics-listen", "127.0.0.1:0"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        msg = sock.recv(4096).decode()
        if "READY=1" in msg:
            break
    ready_ms = (time.perf_counter() - t0) * 1000
    time.sleep(1.0)
    with open(f"/proc/{proc.pid}/status") as f:
        rss_kib = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    t1 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    stop_ms = (time.perf_counter() - t1) * 1000
    sock.close()
    assert code == 0, code
    return ready_ms, stop_ms, rss_kib

def main():
    binary = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    cold, warm, stops, rss = [], [], [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            state = os.path.join(tmp, "state")
            r, s, m = one(binary, state, tmp); cold.append(r); stops.append(s); rss.append(m)
            r, s, m = one(binary, state, tmp); warm.append(r); stops.append(s); rss.append(m)
    med = statistics.median
    print(f"start to READY, first start (creates dev PKI): median {med(cold):.1f} ms (min {min(cold):.1f}, max {max(cold):.1f})")
    print(f"start to READY, existing state dir:            median {med(warm):.1f} ms (min {min(warm):.1f}, max {max(warm):.1f})")
    print(f"SIGTERM to exit (idle):                         median {med(stops):.1f} ms (max {max(stops):.1f})")
    print(f"idle RSS 1 s after READY:                       median {med(rss)/1024:.1f} MiB (max {max(rss)/1024:.1f})")

if __name__ == "__main__":
    main()
