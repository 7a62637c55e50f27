#!/usr/bin/env python3
"""Measures bench scenarios against an empty Ping on one brainstemd, interleaved per round.

Each round runs every scenario in `--runs` (`name:concurrency`, comma-separated; `ping:64` first)
on one connection. Each line gives calls/s, p50/p99 and the server's CPU time per call (utime +
stime from /proc/<pid>/stat, from the start of the window until the daemon is idle again, so
queued work is charged to the calls that caused it), and the store's mean group-commit size over
the window (durable writes answered / flushes, from the daemon's metrics). The summary gives each
scenario's medians as ratios to Ping's in the same round, with a 95 % interval for the CPU ratio's
median from six rounds on (on a busy host, read a target against the interval, not the median
alone). The store runs with flush = "always" (the default).
`--shuffle` runs each round's scenarios in a new random order (Ping included), so a scenario is not
always the one that runs first after the daemon sat idle, or last.

    cargo build --release --locked -p brainstemd -p brainstem-client --bins
    python3 docs/measure-scenarios.py target/release --runs ping:64,registry-get:64 [--rounds 3] [--seconds 5] [--shuffle]
"""

import argparse
import importlib.util
import math
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import urllib.request

spec = importlib.util.spec_from_file_location(
    "measure_rpc", os.path.join(os.path.dirname(__file__), "measure-rpc.py"))
rpc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rpc)


def parse_runs(text):
    runs = []
    for item in text.split(","):
        name, _, concurrency = item.partition(":")
        runs.append((name, int(concurrency or 64)))
    if runs[0] != ("ping", 64):
        runs.insert(0, ("ping", 64))
    return runs


def sync_counts(metrics_addr):
    """(durable writes answered, store flushes, audit records written, audit syncs) so far, from the
    daemon's Prometheus endpoint."""
    names = ("brainstem_store_flushed_writes_total", "brainstem_store_flushes_total",
             "brainstem_audit_records_written_total", "brainstem_audit_syncs_total")
    counts = [0.0] * len(names)
    try:
        with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return tuple(counts)
    for line in text.splitlines():
        for i, name in enumerate(names):
            if line.startswith(name) and line[len(name)] in " {":
                counts[i] += float(line.split()[-1])
    return tuple(counts)


def median_interval(values, level=0.95):
    """A distribution-free confidence interval for the median: the k-th smallest and k-th largest of
    the values, k the largest with P(Binomial(n, 1/2) < k) <= (1 - level) / 2. None below 6 values
    (no such k at 95 %)."""
    n = len(values)
    tail, k = 0.0, 0
    while k < n:
        tail += math.comb(n, k) / 2 ** n
        if tail > (1 - level) / 2:
            break
        k += 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def measure(bin_dir, runs, rounds, seconds, extra_args=(), shuffle=False):
    work = tempfile.mkdtemp(prefix="brainstem-scenarios-")
    state = f"{work}/s"
    addr, metrics = rpc.free_addr(), rpc.free_addr()
    daemon = subprocess.Popen(
        [f"{bin_dir}/brainstemd", "--dev", "--state-dir", state, "--listen", addr,
         "--metrics-listen", metrics, "--log-level", "warn", *extra_args])
    results = {run: [] for run in runs}
    try:
        rpc.wait_port(addr)
        order = list(runs)
        for r in range(1, rounds + 1):
            if shuffle:
                random.shuffle(order)
            for scenario, concurrency in order:
                rpc.wait_idle(daemon.pid)
                before = rpc.cpu_seconds(daemon.pid)
                counts_before = sync_counts(metrics)
                report = rpc.bench(bin_dir, state, addr, scenario, seconds, 1, concurrency)
                after = rpc.wait_idle(daemon.pid)
                writes, flushes, records, syncs = (
                    b - a for a, b in zip(counts_before, sync_counts(metrics)))
                group = f"  writes/flush {writes / flushes:.1f} ({flushes:.0f} flushes)" if flushes else ""
                if syncs:
                    group += f"  audit records/sync {records / syncs:.1f} ({syncs:.0f} syncs)"
                cpu_us = (after - before) / max(report["calls"], 1) * 1e6
                results[(scenario, concurrency)].append((report["calls_per_sec"], cpu_us))
                print(f"round {r} {scenario:18} 1x{concurrency:<3} {report['calls_per_sec']:>9.0f} calls/s  "
                      f"p50 {report['p50_us']} µs  p99 {report['p99_us']} µs  errors {report['errors']}  "
                      f"server CPU {cpu_us:.1f} µs/call{group}", flush=True)
        ping = results[runs[0]]
        for run in runs[1:]:
            rate = [s[0] / p[0] for p, s in zip(ping, results[run])]
            cpu = [s[1] / p[1] for p, s in zip(ping, results[run])]
            interval = median_interval(cpu)
            within = f", 95 % interval {interval[0]:.2f}-{interval[1]:.2f}" if interval else ""
            print(f"{run[0]} 1x{run[1]} vs ping: calls/s it/ping {statistics.median(rate):.2f}, "
                  f"CPU per call it/ping {statistics.median(cpu):.2f}{within} "
                  f"(rounds: {', '.join(f'{x:.2f}' for x in cpu)})")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin_dir")
    ap.add_argument("--runs", default="ping:64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--shuffle", action="store_true",
                    help="a new random order of the scenarios in every round")
    args = ap.parse_args()
    measure(args.bin_dir, parse_runs(args.runs), args.rounds, args.seconds, shuffle=args.shuffle)


if __name__ == "__main__":
    main()
