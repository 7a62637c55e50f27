#!/usr/bin/env python3
"""OpenFeature interop check: the real PyPI `openfeature-sdk` and `openfeature-provider-flagd` (RPC
resolver, flagd.evaluation.v2) evaluate brainstem's flags over mutual TLS, unchanged.

Starts `brainstemd --dev` with a flagd definitions file in its state directory, connects the flagd
provider with `channel_credentials=grpc.ssl_channel_credentials(ca, key, cert)` (the dev admin
identity), and checks: the provider becomes ready (EventStream's provider_ready), boolean, string,
integer and object flags resolve as defined, `fractional` buckets as flagd does (flagd-testbed's
vectors), unknown flags and type mismatches come back as FLAG_NOT_FOUND and TYPE_MISMATCH, and a
change to the file reaches the client (configuration_change, then the new value).

Prints `PASS name` / `FAIL name: reason` per check and the closing line `interop: N passed, M failed`.

    python tests/interop/openfeature_check.py --bin-dir target/debug
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check import CheckFailed, Daemon, Results, expect, read  # noqa: E402

DEADLINE_S = 15.0


def definitions(banner_default):
    return {
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": {
            "banner": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": banner_default,
            },
            # flagd-testbed's fractional-flag: its vectors hold for this key and these weights.
            "fractional-flag": {
                "state": "ENABLED",
                "variants": {"clubs": "clubs", "diamonds": "diamonds", "hearts": "hearts", "spades": "spades"},
                "defaultVariant": "clubs",
                "targeting": {
                    "fractional": [
                        {"cat": [{"var": "$flagd.flagKey"}, {"var": "user.name"}]},
                        ["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25],
                    ]
                },
            },
            # The issue's vector: murmur3("headerColorrachel@faas.com") lands in bucket 42 of 100.
            "headerColor": {
                "state": "ENABLED",
                "variants": {"a": "a", "b": "b", "c": "c"},
                "defaultVariant": "a",
                "targeting": {"fractional": [["a", 42], ["b", 1], ["c", 57]]},
            },
            "retries": {
                "state": "ENABLED",
                "variants": {"few": 2, "many": 10},
                "defaultVariant": "few",
                "targeting": {"if": [{"$ref": "is_staff"}, "many", None]},
            },
            "layout": {
                "state": "ENABLED",
                "variants": {"a": {"columns": 2}, "b": {"columns": 3}},
                "defaultVariant": "b",
            },
            "legacy": {"state": "DISABLED", "variants": {"on": True}, "defaultVariant": "on"},
        },
        "$evaluators": {"is_staff": {"ends_with": [{"var": "email"}, "@example.com"]}},
    }


def write_atomically(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin-dir", default="target/debug")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()

    from openfeature import api
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import ResolverType
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.event import ProviderEvent
    from openfeature.exception import ErrorCode

    work_dir = tempfile.mkdtemp(prefix="brainstem-openfeature-")
    results = Results()
    daemon = None
    try:
        daemon = Daemon(os.path.abspath(args.bin_dir), work_dir)
        os.makedirs(daemon.state_dir, mode=0o700)
        flags_file = os.path.join(daemon.state_dir, "flags.json")
        write_atomically(flags_file, definitions("on"))
        try:
            daemon.start()
        except CheckFailed as err:
            results.fail("startup", str(err))
            return results.summary()
        print(f"# brainstemd up: {daemon.status_line}", flush=True)
        pki = os.path.join(daemon.state_dir, "pki")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(os.path.join(pki, "ca.pem")),
            private_key=read(os.path.join(pki, "admin.key")),
            certificate_chain=read(os.path.join(pki, "admin.pem")),
        )
        host, port = daemon.grpc_addr.rsplit(":", 1)

        changes = []
        changed = threading.Condition()

        def on_change(details):
            with changed:
                changes.append(list(details.flags_changed or []))
                changed.notify_all()

        api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
        provider = FlagdProvider(
            host=host,
            port=int(port),
            tls=True,
            resolver_type=ResolverType.RPC,
            channel_credentials=credentials,
            deadline_ms=5000,
        )
        client = api.get_client()

        def ready():
            # Initialising the provider waits for EventStream's provider_ready.
            api.set_provider_and_wait(provider)
            details = client.get_boolean_details("banner", False)
            expect(details.error_code is None, f"{details.error_code}: {details.error_message}")

        def boolean():
            details = client.get_boolean_details("banner", False)
            expect(details.value is True, f"value {details.value!r}")
            expect(details.variant == "on", f"variant {details.variant!r}")
            expect(details.reason in ("STATIC", "CACHED"), f"reason {details.reason!r}")

        def string_fractional():
            for name, want in (("jack", "hearts"), ("queen", "spades"), ("ten", "clubs"), ("nine", "diamonds")):
                ctx = EvaluationContext(attributes={"user": {"name": name}})
                details = client.get_string_details("fractional-flag", "fallback", ctx)
                expect(details.value == want, f"{name}: {details.value!r}, want {want!r}")
                expect(details.reason == "TARGETING_MATCH", f"{name}: reason {details.reason!r}")
            ctx = EvaluationContext(targeting_key="rachel@faas.com")
            value = client.get_string_value("headerColor", "fallback", ctx)
            expect(value == "b", f"rachel@faas.com: {value!r}, want 'b' (bucket 42)")

        def integer_and_object():
            staff = EvaluationContext(attributes={"email": "ops@example.com"})
            expect(client.get_integer_value("retries", 0, staff) == 10, "staff retries")
            expect(client.get_integer_value("retries", 0) == 2, "default retries")
            layout = client.get_object_value("layout", {})
            expect(layout == {"columns": 3}, f"layout {layout!r}")

        def errors():
            missing = client.get_boolean_details("no.such.flag", True)
            expect(missing.error_code == ErrorCode.FLAG_NOT_FOUND, f"{missing.error_code!r}")
            expect(missing.value is True, "the caller's default on FLAG_NOT_FOUND")
            mismatch = client.get_string_details("banner", "x")
            expect(mismatch.error_code == ErrorCode.TYPE_MISMATCH, f"{mismatch.error_code!r}")
            disabled = client.get_boolean_details("legacy", False)
            expect(disabled.value is False and disabled.reason == "DISABLED", f"{disabled!r}")

        def file_change_reaches_client():
            write_atomically(flags_file, definitions("off"))
            deadline = time.monotonic() + DEADLINE_S
            with changed:
                while not any("banner" in c for c in changes):
                    left = deadline - time.monotonic()
                    expect(left > 0, f"no configuration_change naming banner within {DEADLINE_S:.0f} s: {changes!r}")
                    changed.wait(left)
            value = client.get_boolean_value("banner", True)
            expect(value is False, f"banner is {value!r} after the change")

        results.run("provider_ready_over_mtls", ready)
        results.run("boolean_flag", boolean)
        results.run("string_and_fractional_flags", string_fractional)
        results.run("integer_and_object_flags", integer_and_object)
        results.run("not_found_and_type_mismatch", errors)
        results.run("file_change_reaches_client", file_change_reaches_client)
        api.shutdown()
        return results.summary()
    finally:
        if daemon is not None:
            daemon.stop()
            daemon.kill()
        if args.keep:
            print(f"# kept {work_dir}", flush=True)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
