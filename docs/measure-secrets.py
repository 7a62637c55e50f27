#!/usr/bin/env python3
"""Measures the secrets scenarios against an empty Ping on one brainstemd, interleaved per round.

For each round: `ping`, `secrets-get` and `secrets-put` at 1 x 64 (concurrent puts share flushes:
group commit), then `secrets-put` at 1 x 1 (one put per flush: no group commit). Each line gives
calls/s, p50/p99 and the server's CPU time per call (utime + stime from /proc/<pid>/stat, from the
start of the window until the daemon is idle again). The store runs with flush = "always".

    cargo build --release --locked -p brainstemd -p brainstem-client --bins
    python3 docs/measure-secrets.py target/release [--rounds 3] [--seconds 5]
"""

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import tempfile

spec = importlib.util.spec_from_file_location(
    "measure_rpc", os.path.join(os.path.dirname(__file__), "measure-rpc.py"))
rpc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rpc)

RUNS = [("ping", 64), ("secrets-get", 64), ("secrets-put", 64), ("secrets-put", 1)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin_dir")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="brainstem-secrets-bench-")
    state = f"{work}/s"
    addr = "127.0.0.1:50072"
    daemon = subprocess.Popen(
        [f"{args.bin_dir}/brainstemd", "--dev", "--state-dir", state, "--listen", addr,
         "--metrics-listen", "127.0.0.1:9172", "--log-level", "warn"])
    results = {run: [] for run in RUNS}
    try:
        rpc.wait_port(addr)
        for r in range(1, args.rounds + 1):
            for scenario, concurrency in RUNS:
                rpc.wait_idle(daemon.pid)
                before = rpc.cpu_seconds(daemon.pid)
                report = rpc.bench(args.bin_dir, state, addr, scenario, args.seconds, 1, concurrency)
                after = rpc.wait_idle(daemon.pid)
                cpu_us = (after - before) / max(report["calls"], 1) * 1e6
                results[(scenario, concurrency)].append((report["calls_per_sec"], cpu_us))
                print(f"round {r} {scenario:12} 1x{concurrency:<3} {report['calls_per_sec']:>9.0f} calls/s  "
                      f"p50 {report['p50_us']} µs  p99 {report['p99_us']} µs  errors {report['errors']}  "
                      f"server CPU {cpu_us:.1f} µs/call", flush=True)
        ping = results[("ping", 64)]
        for run in RUNS[1:]:
            rate = [p[0] / s[0] for p, s in zip(ping, results[run])]
            cpu = [s[1] / p[1] for p, s in zip(ping, results[run])]
            print(f"{run[0]} 1x{run[1]} vs ping: calls/s ratio ping/it {statistics.median(rate):.2f}, "
                  f"CPU per call it/ping {statistics.median(cpu):.2f} "
                  f"(rounds: {', '.join(f'{x:.2f}' for x in cpu)})")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
