#!/usr/bin/env bash
# Refresh the hashed lock files in requirements/ (run it after changing the dependencies
# in pyproject.toml or requirements/engine-*.in, then commit the result):
#
#   deploy/lock.sh              # every lock
#   deploy/lock.sh platform     # platform.txt and dev.txt only
#   deploy/lock.sh engine-cpu   # one engine lock (engine-cpu | engine-gpu)
#
# Locks are resolved by uv (`uv pip compile --generate-hashes`): the platform's for every
# Python from 3.11 on and every OS (markers keep what only some need, such as
# async-timeout before Python 3.11.3), the engine's for Linux x86_64 and Python 3.11.
# Each lists every package with the sha256 of each of its published files, so an
# install (plain pip with --require-hashes) takes exactly this set and refuses anything
# else. Versions already in a lock are kept unless LOCK_UPGRADE=1.
#
#   requirements/platform.txt    the platform's runtime (what deploy/run-local.sh installs)
#   requirements/dev.txt         runtime + the test and lint tools (tests/run.sh)
#   requirements/engine-cpu.txt  vLLM CPU build, its torch and the packaged MiniLM model
#   requirements/engine-gpu.txt  vLLM CUDA build and the packaged MiniLM model
#
# The CPU torch build (torch==2.13.0+cpu) is not on PyPI: it comes from the PyTorch CPU
# index, or from local wheels when PIP_FIND_LINKS names a folder that holds it.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly UV_REQUIREMENT="uv==0.13.9"
python="${PYTHON:-python3}"
tools="${LOCK_TOOLS_VENV:-${TMPDIR:-/tmp}/sap-lock-tools}"
if [ ! -x "$tools/bin/uv" ]; then
    "$python" -m venv "$tools"
    "$tools/bin/python" -m pip install --quiet "$UV_REQUIREMENT"
fi

compile() {
    local out="$1"
    shift
    local upgrade=()
    [ "${LOCK_UPGRADE:-0}" = 1 ] && upgrade=(--upgrade)
    echo "==> $out"
    # Index options stay out of the file: a lock names packages and hashes, and each
    # machine reaches its package index its own way.
    UV_CUSTOM_COMPILE_COMMAND="deploy/lock.sh" "$tools/bin/uv" pip compile --quiet \
        --generate-hashes \
        "${upgrade[@]}" --output-file "$out" "$@"
}

torch_cpu_source=(--extra-index-url https://download.pytorch.org/whl/cpu
    --index-strategy unsafe-best-match)
if [ -n "${PIP_FIND_LINKS:-}" ]; then
    torch_cpu_source=(--find-links "$PIP_FIND_LINKS")
fi
linux=(--python-version 3.11 --python-platform x86_64-manylinux_2_28)

what="${1:-all}"
if [ "$what" = all ] || [ "$what" = platform ]; then
    compile requirements/platform.txt --universal --python-version 3.11 pyproject.toml
    compile requirements/dev.txt --universal --python-version 3.11 --extra dev \
        --constraint requirements/platform.txt pyproject.toml
fi
if [ "$what" = all ] || [ "$what" = engine-cpu ]; then
    compile requirements/engine-cpu.txt "${linux[@]}" "${torch_cpu_source[@]}" \
        requirements/engine-cpu.in
fi
if [ "$what" = all ] || [ "$what" = engine-gpu ]; then
    compile requirements/engine-gpu.txt "${linux[@]}" requirements/engine-gpu.in
fi
