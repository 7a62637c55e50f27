"""The model registry from Python: register a version, move an alias, read its history, record a
quality metric, check drift and export the signed model card.

    python3 client/python/examples/registry.py WEIGHTS_FILE [NAME]

WEIGHTS_FILE is an absolute path on the daemon's host under one of its artifact roots (dev mode:
<state_dir>/artifacts/, e.g. $PWD/.brainstem-dev/artifacts/model.bin); the daemon hashes it itself.
NAME defaults to examples/demo. The script connects like every client (BRAINSTEM_* variables, else
./.brainstem-dev; docs/CLIENTS.md) and needs registry.read and registry.write on /NAME (docs/REGISTRY.md).
"""

from __future__ import annotations

import hashlib
import os
import sys

import brainstem


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    weights = os.path.abspath(sys.argv[1])
    name = sys.argv[2] if len(sys.argv) > 2 else "examples/demo"
    bs = brainstem.connect()

    # Register changes state: an idempotency key lets the client retry it safely. The version is
    # left empty, so the daemon takes the next patch version. Declaring the hash makes the daemon
    # refuse the registration if the file it reads is not the one we hashed.
    reply = bs.registry.register(
        name=name,
        algorithm="example",
        weights_path=weights,
        weights_sha256=sha256_of(weights),
        metrics={"accuracy": 0.92},
        tags={"source": "examples/registry.py"},
        card={"intended_use": "Demonstrating the registry API.", "caveats": "Not a real model."},
        idempotency_key=brainstem.new_idempotency_key(),
    )
    version = reply.version
    print(f"registered {name}@{version}: sha256 {reply.weights_sha256}")

    bs.registry.set_alias(name=name, alias="staging", version=version)
    history = bs.registry.alias_history(name=name, alias="staging")
    for entry in history.entries:
        until = entry.until.ToJsonString() if entry.HasField("until") else "now"
        print(f"  staging -> {entry.version} since {entry.since.ToJsonString()} until {until} by {entry.principal}")

    bs.registry.record_quality_metric(name=name, version=version, metric="accuracy", value=0.85)
    drift = bs.registry.detect_drift(
        name=name, version=version, metric="accuracy", threshold_percent=5.0, window_seconds=3600
    )
    print(
        f"drift: {'drifted' if drift.drifted else 'steady'} "
        f"(baseline {drift.baseline} from {drift.baseline_source}, recent {drift.recent}, "
        f"{drift.relative_change_percent:+.1f}%)"
    )

    verified = bs.registry.verify_artifacts(name=name, version=version)
    print(f"artifacts ok: {verified.ok}")

    card = bs.registry.export_model_card(name=name, version=version).card
    with open("card.json", "w", encoding="utf-8", newline="") as f:
        f.write(card)  # exactly the signed bytes: any added byte fails verification
    key = bs.registry.get_card_public_key().public_key
    with open("registry.pub", "w", encoding="utf-8") as f:
        f.write(key + "\n")
    print("wrote card.json and registry.pub; verify offline with:")
    print("  brainstemctl registry verify-card --public-key registry.pub card.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
