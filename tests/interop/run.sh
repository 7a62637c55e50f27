#!/usr/bin/env bash
# Python checks for brainstemd against already-built binaries: tests/interop/check.py (raw grpcio over
# mTLS), tests/interop/openfeature_check.py (the real OpenFeature flagd provider), then the Python
# client package: a wheel of client/python is built, installed into the venv, and its pytest suite
# (client/python/tests) runs against the real daemon.
#
#   bash tests/interop/run.sh [BIN_DIR]          # BIN_DIR defaults to target/debug; relative paths are from the repo root
#
# Env: INTEROP_VENV (default target/interop-venv) is created on first use and reused after;
#      INTEROP_PYTHON (default python3) is the interpreter that creates it.
# Needs PyPI for the first install. Builds nothing: build the binaries first (cargo build [--release]).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

bin_dir="${1:-${BRAINSTEM_BIN_DIR:-target/debug}}"
venv="${INTEROP_VENV:-target/interop-venv}"
python="${INTEROP_PYTHON:-python3}"

for exe in brainstemd brainstemctl; do
    if [[ ! -x "$bin_dir/$exe" ]]; then
        echo "run.sh: $bin_dir/$exe not found or not executable (build it first)" >&2
        exit 2
    fi
done

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
# Reinstall only when requirements.txt changed since the last successful install.
stamp="$venv/.interop-requirements"
if ! cmp -s "$here/requirements.txt" "$stamp" 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$stamp"
fi

# The OpenFeature check uses the real PyPI SDK and flagd provider, unpinned: it proves that what
# providers ship today works against brainstemd.
if ! "$venv/bin/python" -c "import openfeature.contrib.provider.flagd" 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check openfeature-sdk openfeature-provider-flagd
fi

status=0
"$venv/bin/python" "$here/check.py" --bin-dir "$bin_dir" --proto-dir "$root/proto" || status=$?
"$venv/bin/python" "$here/openfeature_check.py" --bin-dir "$bin_dir" || status=$?

# The package as a user gets it: a wheel built from the repository (stubs generated from proto/ at
# build time), installed, then tested.
wheel_dir="target/python-dist"
rm -rf "$wheel_dir"
"$venv/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$wheel_dir" ./client/python
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall "$wheel_dir"/brainstem_client-*.whl
BRAINSTEM_BIN_DIR="$bin_dir" "$venv/bin/python" -m pytest -q -p no:cacheprovider client/python/tests || status=$?
exit "$status"
