"""Secrets from Python: put a value, read it back, list, and watch a prefix for a change.

    BRAINSTEM_EXAMPLE_SECRET=... python3 client/python/examples/secrets.py [PATH]
    some-command | python3 client/python/examples/secrets.py [PATH]

The value comes from the environment variable BRAINSTEM_EXAMPLE_SECRET, else from standard input
(all bytes) - never from the command line, where shell history and /proc/<pid>/cmdline would keep it.
The script prints paths, versions and whether the value read back matches; it never prints the
value. It connects like every client (BRAINSTEM_* variables, else ./.brainstem-dev; docs/CLIENTS.md)
and needs secrets.read and secrets.write on PATH (default /examples/demo/db).
"""

from __future__ import annotations

import os
import sys
import threading

import brainstem


def read_value() -> bytes:
    from_env = os.environ.get("BRAINSTEM_EXAMPLE_SECRET")
    if from_env is not None:
        return from_env.encode()
    if sys.stdin.isatty():
        print("reading the value from standard input; end it with Ctrl-D", file=sys.stderr)
    return sys.stdin.buffer.read()


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "/examples/demo/db"
    prefix = path.rsplit("/", 1)[0] or "/"
    value = read_value()
    if not value:
        print("the value is empty; set BRAINSTEM_EXAMPLE_SECRET or pipe it in", file=sys.stderr)
        return 2

    bs = brainstem.connect()

    # Watch the prefix before writing. The daemon answers the call's headers once the watch is
    # subscribed, so after initial_metadata() returns the put below is in the stream. Events carry
    # the path, version and kind, never the value.
    events = []
    stream = bs.secrets.watch(prefix=prefix)
    stream.initial_metadata()

    def watch_one() -> None:
        try:
            for event in stream:
                events.append(event)
                break
        except brainstem.errors.BrainstemError as err:  # Cancelled when we stop waiting
            if not isinstance(err, brainstem.errors.Cancelled):
                print(f"watch ended: {err.code} {err.message}", file=sys.stderr)

    watcher = threading.Thread(target=watch_one, daemon=True)
    watcher.start()

    # Put changes state: an idempotency key lets the client retry it safely (docs/CLIENTS.md).
    put = bs.secrets.put(path=path, value=value, idempotency_key=brainstem.new_idempotency_key())
    print(f"put {path}: version {put.version}")

    got = bs.secrets.get(path=path)
    print(f"get {path}: version {got.version}, matches what was put: {got.value == value}")

    paths, token = [], ""
    while True:
        page = bs.secrets.list(prefix=prefix, page_token=token)
        paths.extend(page.paths)
        token = page.next_page_token
        if not token:
            break
    print(f"list {prefix}: {len(paths)} secret(s)")
    for p in paths:
        print(f"  {p}")

    watcher.join(10)
    stream.cancel()
    if events:
        e = events[0]
        print(f"watch {prefix}: {e.kind} {e.path} v{e.version}")
    else:
        print(f"watch {prefix}: no event within 10 s")

    meta = bs.secrets.metadata(path=path)
    states = ", ".join(
        f"v{v.version} ({'destroyed' if v.destroyed else 'deleted' if v.deleted else 'live'})" for v in meta.versions
    )
    print(f"versions of {path}: {states} (current v{meta.current_version})")
    bs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
