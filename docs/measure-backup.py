#!/usr/bin/env python3
"""Backup and restore of a large store: time, size, the writers' pause, and restore + start (RTO).

Starts one release `brainstemd --dev` whose episodic buffer holds `--entries` episodes of a small
embedding (8 floats), fills it with `brainstemctl bench --prefill` (StoreBatch of 200), then times `brainstemctl backup --out`, reads the writers' pause from
`brainstem_backup_writer_pause_seconds`, stops the daemon, and times `brainstemd restore` into a
fresh directory and a daemon start on it until it answers Ping.

    cargo build --release --locked -p brainstemd -p brainstem-client --bins
    python3 docs/measure-backup.py target/release [--entries 1000000]
"""

import argparse
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

spec = importlib.util.spec_from_file_location(
    "measure_rpc", os.path.join(os.path.dirname(__file__), "measure-rpc.py"))
rpc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rpc)


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin_dir")
    ap.add_argument("--entries", type=int, default=1_000_000)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="brainstem-backup-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    state, restored = f"{work}/s", f"{work}/r"
    config = f"{work}/brainstemd.toml"
    with open(config, "w") as f:
        f.write(f"[episodic]\ncapacity = {args.entries + 1000}\nembedding_dimension = 8\n"
                "mailbox_capacity = 4096\n[server]\nrequest_timeout_seconds = 600\n")
    addr, metrics_port = rpc.free_addr(), int(rpc.free_addr().rsplit(":", 1)[1])
    daemon = subprocess.Popen(
        [f"{args.bin_dir}/brainstemd", "--dev", "--config", config, "--state-dir", state,
         "--listen", addr, "--metrics-listen", f"127.0.0.1:{metrics_port}", "--log-level", "warn"])
    ctl = [f"{args.bin_dir}/brainstemctl", "--state-dir", state, "--endpoint", addr]
    try:
        rpc.wait_port(addr)
        start = time.monotonic()
        # StoreBatch of 200 episodes per call, each durable before the next.
        subprocess.run(
            ctl + ["--timeout-seconds", "3600", "bench", "--scenario", "episodic-query",
                   "--prefill", str(args.entries), "--dimension", "8", "--concurrency", "1",
                   "--duration-seconds", "1", "--warmup-seconds", "0"],
            check=True, stdout=subprocess.DEVNULL)
        print(f"fill: {time.monotonic() - start:.0f} s", flush=True)
        rpc.wait_idle(daemon.pid)
        backup = f"{work}/store.bsbackup"
        start = time.monotonic()
        subprocess.run(ctl + ["--timeout-seconds", "600", "backup", "--out", backup], check=True,
                       stdout=subprocess.DEVNULL)
        took = time.monotonic() - start
        pause = metric(metrics_port, "brainstem_backup_writer_pause_seconds")
        size = os.path.getsize(backup)
        db = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(f"{state}/db")
                 for n in ns)
        print(f"backup: {took:.1f} s, {size / 2**20:.0f} MiB (database on disk {db / 2**20:.0f} MiB), "
              f"writers paused {pause * 1000:.0f} ms", flush=True)
        daemon.terminate()
        daemon.wait(timeout=60)
        start = time.monotonic()
        subprocess.run([f"{args.bin_dir}/brainstemd", "--dev", "restore", "--from", backup,
                        "--state-dir", restored, "--master-key-file", f"{state}/master.key"],
                       check=True, stdout=subprocess.DEVNULL)
        restore = time.monotonic() - start
        daemon = subprocess.Popen(
            [f"{args.bin_dir}/brainstemd", "--dev", "--config", config, "--state-dir", restored,
             "--listen", addr, "--metrics-listen", f"127.0.0.1:{metrics_port}", "--log-level", "warn"])
        rpc.wait_port(addr)
        ready = time.monotonic() - start
        print(f"restore: {restore:.1f} s; restore + start until the port answers: {ready:.1f} s (RTO)")
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
