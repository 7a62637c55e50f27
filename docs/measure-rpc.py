#!/usr/bin/env python3
"""Measures an RPC scenario against brainstemd and the bare tonic + rustls reference, in one run.

For each round and each server it records the bench harness's calls/s and latency and the server's CPU
time per call: utime + stime from /proc/<pid>/stat, read before the bench starts and again once the
server is idle (so work a call leaves queued, such as audit writes, is charged to the calls that caused
it). The bench runs without a warm-up, so every call counted is one the CPU window saw.

    cargo build --release --workspace --bins --examples
    python3 docs/measure-rpc.py target/release [--rounds 3] [--seconds 10] [--scenario ping]

Prints one line per round and server, then the median ratio to bare (calls/s and CPU per call).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields after the command: state is [0]; utime and stime are fields 14 and 15 of the line.
    return (int(fields[11]) + int(fields[12])) / TICK


def free_addr():
    """A 127.0.0.1 address with a port nothing listens on now: measurements on a shared machine must
    not reach another engineer's daemon on a fixed port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def wait_port(addr, deadline_s=30):
    host, port = addr.rsplit(":", 1)
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            socket.create_connection((host, int(port)), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {addr}")


def wait_idle(pid, quiet_s=0.5, deadline_s=60):
    """Returns the CPU total once the process used less than one tick over `quiet_s`."""
    end = time.time() + deadline_s
    last = cpu_seconds(pid)
    while time.time() < end:
        time.sleep(quiet_s)
        now = cpu_seconds(pid)
        if now - last < 1.0 / TICK + 1e-9:
            return now
        last = now
    return last


def bench(bin_dir, state, endpoint, scenario, seconds, connections, concurrency):
    out = subprocess.run(
        [f"{bin_dir}/brainstemctl", "--state-dir", state, "--endpoint", endpoint, "bench",
         "--scenario", scenario, "--connections", str(connections), "--concurrency",
         str(concurrency), "--duration-seconds", str(seconds), "--warmup-seconds", "0"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin_dir")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--scenario", default="ping")
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="brainstem-bench-")
    state = f"{work}/s"
    daemon_addr, bare_addr, metrics_addr = free_addr(), free_addr(), free_addr()
    procs = []
    try:
        daemon = subprocess.Popen(
            [f"{args.bin_dir}/brainstemd", "--dev", "--state-dir", state, "--listen", daemon_addr,
             "--metrics-listen", metrics_addr, "--log-level", "warn"])
        procs.append(daemon)
        wait_port(daemon_addr)
        bare = subprocess.Popen([f"{args.bin_dir}/examples/bare_ping_server", state, bare_addr])
        procs.append(bare)
        wait_port(bare_addr)
        servers = [("bare", bare, bare_addr), ("brainstemd", daemon, daemon_addr)]
        results = {name: [] for name, _, _ in servers}
        for r in range(1, args.rounds + 1):
            for name, proc, addr in servers:
                if name == "bare" and args.scenario != "ping":
                    continue
                wait_idle(proc.pid)
                before = cpu_seconds(proc.pid)
                report = bench(args.bin_dir, state, addr, args.scenario, args.seconds,
                               args.connections, args.concurrency)
                after = wait_idle(proc.pid)
                cpu_us = (after - before) / max(report["calls"], 1) * 1e6
                results[name].append((report["calls_per_sec"], cpu_us))
                print(f"round {r} {name:10} {report['calls_per_sec']:>10.0f} calls/s  "
                      f"p50 {report['p50_us']} µs  p99 {report['p99_us']} µs  "
                      f"errors {report['errors']}  server CPU {cpu_us:.1f} µs/call", flush=True)
        if results["bare"]:
            rate = [d[0] / b[0] for b, d in zip(results["bare"], results["brainstemd"])]
            cpu = [d[1] / b[1] for b, d in zip(results["bare"], results["brainstemd"])]
            print(f"brainstemd / bare: calls/s {', '.join(f'{x:.2f}' for x in rate)} "
                  f"(median {statistics.median(rate):.2f}); CPU per call "
                  f"{', '.join(f'{x:.2f}' for x in cpu)} (median {statistics.median(cpu):.2f})")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
