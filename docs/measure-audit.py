#!/usr/bin/env python3
"""Measures the audit log under load: decisions/s with zero drops for `policy-check` and
`policy-batch`, server CPU per call of Check against Ping in the same run, and the time a stop takes
to write a full queue.

    cargo build --release -p brainstemd -p brainstem-client --bins
    python3 docs/measure-audit.py target/release [--rounds 3] [--seconds 5]

Per round and scenario (ping, policy-check, policy-batch; 1 connection x 64 callers, no warm-up) it
prints calls/s, decisions/s, the daemon's audit counters over the run (decisions made, records
written, unrecorded) and server CPU per call: utime + stime from /proc/<pid>/stat before the bench and
once the daemon is idle again, so audit work a call leaves queued is charged to it. Then: the audit
writer is stopped (`actors stop audit-writer`), `policy-batch` runs until the queue is full, and a
SIGTERM is timed; the daemon logs how long writing the queue took.
"""

import argparse
import json
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request

from importlib.machinery import SourceFileLoader
import os

rpc = SourceFileLoader("measure_rpc", os.path.join(os.path.dirname(__file__), "measure-rpc.py")).load_module()


def counter(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def metrics(addr):
    return urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin_dir")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="brainstem-audit-")
    state = f"{work}/s"
    addr, maddr = rpc.free_addr(), rpc.free_addr()
    log = open(f"{work}/stderr.log", "w")
    daemon = subprocess.Popen(
        [f"{args.bin_dir}/brainstemd", "--dev", "--state-dir", state, "--listen", addr,
         "--metrics-listen", maddr, "--log-level", "info"], stderr=log)
    ctl = [f"{args.bin_dir}/brainstemctl", "--state-dir", state, "--endpoint", addr]
    try:
        rpc.wait_port(addr)
        cpu = {}
        for r in range(1, args.rounds + 1):
            for scenario in ["ping", "policy-check", "policy-batch"]:
                rpc.wait_idle(daemon.pid)
                m0, before = metrics(maddr), rpc.cpu_seconds(daemon.pid)
                report = rpc.bench(args.bin_dir, state, addr, scenario, args.seconds, 1, 64)
                after = rpc.wait_idle(daemon.pid)
                m1 = metrics(maddr)
                d = {k: counter(m1, k) - counter(m0, k) for k in [
                    "brainstem_policy_decisions_total", "brainstem_audit_records_written_total",
                    "brainstem_audit_unrecorded_total"]}
                calls = max(report["calls"], 1)
                cpu_us = (after - before) / calls * 1e6
                cpu.setdefault(scenario, []).append(cpu_us)
                print(f"round {r} {scenario:13} {report['calls_per_sec']:>9.0f} calls/s "
                      f"{d['brainstem_policy_decisions_total'] / args.seconds:>9.0f} decisions/s  "
                      f"decisions {d['brainstem_policy_decisions_total']:.0f} "
                      f"written {d['brainstem_audit_records_written_total']:.0f} "
                      f"unrecorded {d['brainstem_audit_unrecorded_total']:.0f}  "
                      f"p50 {report['p50_us']} µs p99 {report['p99_us']} µs errors {report['errors']}  "
                      f"server CPU {cpu_us:.1f} µs/call", flush=True)
        ping = statistics.median(cpu["ping"])
        for s in ["policy-check", "policy-batch"]:
            print(f"{s}: median server CPU per call {statistics.median(cpu[s]):.1f} µs = "
                  f"{statistics.median(cpu[s]) / ping:.2f}x Ping ({ping:.1f} µs)")

        # Drain at stop: hold the writer, fill the queue, SIGTERM.
        subprocess.run(ctl + ["actors", "stop", "audit-writer"], check=True, capture_output=True)
        rpc.bench(args.bin_dir, state, addr, "policy-batch", 2, 1, 64)
        m = metrics(maddr)
        queued = counter(m, "brainstem_policy_decisions_total") - counter(
            m, "brainstem_audit_records_written_total") - counter(m, "brainstem_audit_unrecorded_total")
        t0 = time.time()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        print(f"stop with about {queued:.0f} records queued: exit {daemon.returncode} after "
              f"{(time.time() - t0) * 1000:.0f} ms")
        log.close()
        for line in open(f"{work}/stderr.log"):
            if re.search(r"left queued|brainstemd stopped|not marked clean", line):
                print("  " + line.strip())
    finally:
        if daemon.poll() is None:
            daemon.terminate()
            daemon.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
