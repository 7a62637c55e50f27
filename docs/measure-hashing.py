#!/usr/bin/env python3
"""Registry hashing throughput against sha256sum on the same 1 GiB file, interleaved per round.

Starts one release `brainstemd --dev`, writes a 1 GiB file under its artifact root
(`STATE/artifacts/`), and per round times `sha256sum FILE` and `brainstemctl registry register`
of a new version of that file (the daemon streams it through SHA-256 on a blocking thread). The
file is read once beforehand so both read it from the page cache. Reports MiB/s for each and the
ratio registry/sha256sum (the issue's target is >= 0.9).

    cargo build --release --locked -p brainstemd -p brainstem-client --bins
    python3 docs/measure-hashing.py target/release [--rounds 3] [--mib 1024]
"""

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import tempfile
import time

spec = importlib.util.spec_from_file_location(
    "measure_rpc", os.path.join(os.path.dirname(__file__), "measure-rpc.py"))
rpc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rpc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin_dir")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=1024)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="brainstem-hashing-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    state = f"{work}/s"
    addr = rpc.free_addr()
    daemon = subprocess.Popen(
        [f"{args.bin_dir}/brainstemd", "--dev", "--state-dir", state, "--listen", addr,
         "--metrics-listen", rpc.free_addr(), "--log-level", "warn"])
    try:
        rpc.wait_port(addr)
        os.makedirs(f"{state}/artifacts", exist_ok=True)
        path = f"{state}/artifacts/weights.bin"
        block = os.urandom(1 << 20)
        with open(path, "wb") as f:
            for _ in range(args.mib):
                f.write(block)
        subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)
        ratios = []
        for r in range(1, args.rounds + 1):
            start = time.monotonic()
            subprocess.run(["sha256sum", path], stdout=subprocess.DEVNULL, check=True)
            sha = args.mib / (time.monotonic() - start)
            start = time.monotonic()
            subprocess.run(
                [f"{args.bin_dir}/brainstemctl", "--state-dir", state, "--endpoint", addr,
                 "registry", "register", "hashing-bench", "--weights", path],
                stdout=subprocess.DEVNULL, check=True)
            reg = args.mib / (time.monotonic() - start)
            ratios.append(reg / sha)
            print(f"round {r}: sha256sum {sha:.0f} MiB/s, registry register {reg:.0f} MiB/s, "
                  f"ratio {reg / sha:.2f}", flush=True)
        print(f"median ratio registry/sha256sum {statistics.median(ratios):.2f}")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
