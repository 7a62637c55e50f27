#!/usr/bin/env python3
"""Counts the server's instructions per call of bench scenarios under callgrind: a figure that does
not move with the machine's load, unlike CPU time.

One brainstemd runs under `valgrind --tool=callgrind` with collection on. For each scenario, a short
and a long bench run (the bench's own warm-up off, `--connections 1 --concurrency 8`) each go from zeroed counters
until the daemon is idle again (so work a call leaves queued, such as audit writes, is counted), then
the counters are dumped. The calls served are the daemon's own `brainstem_grpc_requests_total` over the
window. Instructions per call = (long - short instructions) / (long - short calls): the difference
cancels what a run costs once (connection, TLS handshake, the bench's own set-up calls). Before its
short run, each scenario runs for `--warmup` seconds uncounted: what the daemon does once, on the
first call of a kind (a decision cache's first miss, anything built lazily), would otherwise fall in
the short run alone and be subtracted from the per-call figure.

    cargo build --release -p brainstemd -p brainstem-client --bins
    python3 docs/measure-instructions.py target/release --runs ping,policy-check,flags-eval [--short 3 --long 9]

With `--cache-sim`, callgrind also simulates the caches, the last level sized as this machine's L2,
and each line adds the data misses per call: memory a call touches cold, which costs cycles that
instruction counts do not show.

Prints one line per scenario (instructions per call and the ratio to the first scenario) and leaves
the dumps (`callgrind.out.<pid>.<n>`, one per run, named after the trigger) in the printed directory
for `callgrind_annotate --inclusive=yes`.
"""

import argparse
import glob
import importlib.util
import os
import re
import subprocess
import tempfile
import time
import urllib.request

spec = importlib.util.spec_from_file_location(
    "measure_rpc", os.path.join(os.path.dirname(__file__), "measure-rpc.py"))
rpc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rpc)


def requests_served(metrics_addr):
    text = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=30).read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("brainstem_grpc_requests_total{"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def dump_totals(path):
    """The dump's totals by event (`Ir`, and with `--cache-sim` the misses too)."""
    events = ["Ir"]
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            if line.startswith("totals:") or line.startswith("summary:"):
                return dict(zip(events, map(int, line.split()[1:])))
    raise SystemExit(f"{path}: no totals line")


def l2_cache():
    """`--LL=size,assoc,line` of this machine's L2, from sysfs: valgrind models the last level as
    the L3 (which holds a whole run), so misses of the L2 (which does not) are what show a call's
    cold memory."""
    base = "/sys/devices/system/cpu/cpu0/cache/index2"
    size = open(f"{base}/size").read().strip()
    scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
    size = int(size.rstrip("KM")) * scale
    assoc = open(f"{base}/ways_of_associativity").read().strip()
    line = open(f"{base}/coherency_line_size").read().strip()
    return f"--LL={size},{assoc},{line}"


def control(*args):
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True)


def run(bin_dir, work, state, addr, metrics, pid, scenario, seconds, concurrency, tag):
    rpc.wait_idle(pid, quiet_s=1.0, deadline_s=120)
    control("--zero", str(pid))
    before = requests_served(metrics)
    rpc.bench(bin_dir, state, addr, scenario, seconds, 1, concurrency)
    rpc.wait_idle(pid, quiet_s=1.0, deadline_s=300)
    after = requests_served(metrics)
    known = set(glob.glob(f"{work}/callgrind.out.*"))
    control(f"--dump={tag}", str(pid))
    deadline = time.time() + 60
    while time.time() < deadline:
        new = set(glob.glob(f"{work}/callgrind.out.*")) - known
        if new:
            path = new.pop()
            time.sleep(0.5)
            return dump_totals(path), after - before, path
        time.sleep(0.2)
    raise SystemExit("callgrind did not dump")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin_dir")
    ap.add_argument("--runs", default="ping,policy-check,flags-eval")
    ap.add_argument("--short", type=int, default=3)
    ap.add_argument("--long", type=int, default=9)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1,
                    help="seconds of each scenario run first, not counted (0: none)")
    ap.add_argument("--listen", help="default: a free 127.0.0.1 port")
    ap.add_argument("--metrics-listen", help="default: a free 127.0.0.1 port")
    ap.add_argument("--cache-sim", action="store_true",
                    help="also simulate the caches (the last level as this machine's L2) and "
                         "print data misses per call")
    args = ap.parse_args()
    args.listen = args.listen or rpc.free_addr()
    args.metrics_listen = args.metrics_listen or rpc.free_addr()

    work = tempfile.mkdtemp(prefix="brainstem-callgrind-")
    state = f"{work}/s"
    daemon = subprocess.Popen(
        # --fair-sched=yes: with valgrind's default lock, a thread that spin-waits for another
        # holds the only running slot for its whole time slice; the daemon then took from 55 s to
        # over 5 minutes to start. With it, 6 s.
        ["valgrind", "--tool=callgrind", "--fair-sched=yes", "--dump-instr=no",
         *(["--cache-sim=yes", l2_cache()] if args.cache_sim else []),
         f"--callgrind-out-file={work}/callgrind.out.%p",
         f"{args.bin_dir}/brainstemd", "--dev", "--state-dir", state, "--listen", args.listen,
         "--metrics-listen", args.metrics_listen, "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=open(f"{work}/valgrind.log", "w"))
    print(f"dumps in {work}", flush=True)
    results = []
    try:
        rpc.wait_port(args.listen, deadline_s=300)
        for scenario in args.runs.split(","):
            if args.warmup > 0:
                # A first call's one-time work (a lazily built table, a decision cache's miss)
                # would land in the short run only and be subtracted from every later call.
                rpc.wait_idle(daemon.pid, quiet_s=1.0, deadline_s=120)
                rpc.bench(args.bin_dir, state, args.listen, scenario, args.warmup, 1,
                          args.concurrency)
            short = run(args.bin_dir, work, state, args.listen, args.metrics_listen, daemon.pid,
                        scenario, args.short, args.concurrency, f"{scenario}-short")
            long = run(args.bin_dir, work, state, args.listen, args.metrics_listen, daemon.pid,
                       scenario, args.long, args.concurrency, f"{scenario}-long")
            calls = max(long[1] - short[1], 1)
            per_call = (long[0]["Ir"] - short[0]["Ir"]) / calls
            results.append((scenario, per_call))
            misses = ""
            if args.cache_sim:
                l2 = sum(long[0].get(e, 0) - short[0].get(e, 0) for e in ("DLmr", "DLmw")) / calls
                l1 = sum(long[0].get(e, 0) - short[0].get(e, 0) for e in ("D1mr", "D1mw")) / calls
                misses = f"   data misses/call: L1 {l1:,.1f}, L2 {l2:,.1f}"
            print(f"{scenario:14} short {short[1]:>6} calls {short[0]['Ir']:>13,} Ir   "
                  f"long {long[1]:>6} calls {long[0]['Ir']:>13,} Ir   "
                  f"{per_call:>9,.0f} instructions/call{misses}   ({os.path.basename(long[2])})",
                  flush=True)
        base = results[0][1]
        for scenario, per_call in results[1:]:
            print(f"{scenario} vs {results[0][0]}: {per_call / base:.3f}x "
                  f"(+{per_call - base:,.0f} instructions/call)")
    finally:
        daemon.terminate()
        daemon.wait(timeout=120)


if __name__ == "__main__":
    main()
