#!/usr/bin/env python3
"""Measures the secrets scenarios against an empty Ping on one brainstemd, interleaved per round.

`secrets-get` and `secrets-put` at 1 x 64 (concurrent puts share flushes: group commit), then
`secrets-put` at 1 x 1 (one put per flush). See measure-scenarios.py for what each line reports.

    cargo build --release --locked -p brainstemd -p brainstem-client --bins
    python3 docs/measure-secrets.py target/release [--rounds 3] [--seconds 5]
"""

import argparse
import importlib.util
import os

spec = importlib.util.spec_from_file_location(
    "measure_scenarios", os.path.join(os.path.dirname(__file__), "measure-scenarios.py"))
scenarios = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scenarios)

RUNS = [("ping", 64), ("secrets-get", 64), ("secrets-put", 64), ("secrets-put", 1)]

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("bin_dir")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    scenarios.measure(args.bin_dir, RUNS, args.rounds, args.seconds)
