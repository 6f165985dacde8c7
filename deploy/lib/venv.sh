# Shared by deploy/run-local.sh, tests/run.sh and the test suite: create a virtualenv
# with Python 3.11+ and install exactly the locked set into it (requirements/*.txt,
# sha256-checked; refreshed with deploy/lock.sh), then the platform itself without
# dependencies. Runs again only when the lock or pyproject.toml changed.
#
#   ensure_platform_venv            # ./.venv, runtime lock (what a new user gets)
#   ensure_platform_venv dev        # ./.venv, runtime + test/lint tools
#   ensure_platform_venv "" DIR     # runtime lock into DIR
find_python() {
    local python="${PYTHON:-}"
    if [ -z "$python" ]; then
        for candidate in python3.11 python3; do
            if command -v "$candidate" >/dev/null 2>&1 &&
                "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))'; then
                python="$candidate"
                break
            fi
        done
    fi
    if [ -z "$python" ]; then
        echo "Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
        return 1
    fi
    echo "$python"
}

ensure_platform_venv() {
    local extras="${1:-}"
    local venv="${2:-.venv}"
    local lock="requirements/platform.txt"
    [ "$extras" = dev ] && lock="requirements/dev.txt"
    local python
    python="$(find_python)" || exit 1
    if [ ! -x "$venv/bin/python" ]; then
        echo "==> creating $venv with $("$python" --version)"
        "$python" -m venv "$venv" || return 1
    fi
    local stamp="$venv/.installed"
    local want dev_want
    want="$(cat "$lock" pyproject.toml | sha256sum | cut -d' ' -f1)"
    # The dev lock is the runtime lock plus tools, so a current dev venv serves the
    # runtime too (a developer's ./.venv is not reinstalled by run-local.sh).
    dev_want="$(cat requirements/dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
    local have=""
    [ -f "$stamp" ] && have="$(cat "$stamp")"
    if [ "$have" != "$want" ] && [ "$have" != "$dev_want" ]; then
        rm -f "$stamp"
        echo "==> installing the platform into $venv from $lock"
        local progress=off
        [ -t 1 ] && progress=on # download bars for a person at a terminal
        # --require-hashes: every package pinned in the lock, and each file checked
        # against its recorded sha256.
        "$venv/bin/python" -m pip install --quiet --progress-bar "$progress" \
            --require-hashes -r "$lock" || return 1
        # Exactly the lock: what an older lock installed and this one dropped goes.
        "$venv/bin/python" - "$lock" <<'PY'
import re
import subprocess
import sys
from importlib import metadata

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

with open(sys.argv[1]) as lock:
    locked = {norm(re.split(r"[=\s]", line, maxsplit=1)[0])
              for line in lock if re.match(r"[A-Za-z0-9]", line)}
keep = locked | {"pip", "setuptools", "wheel", "sovereign-ai-platform"}
extra = sorted({norm(d.metadata["Name"] or "") for d in metadata.distributions()} - keep - {""})
if extra:
    print("==> removing what the lock does not list:", " ".join(extra))
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", *extra],
                   check=True)
PY
        [ $? -eq 0 ] || return 1
        "$venv/bin/python" -m pip install --quiet --no-deps -e . || return 1
        echo "$want" >"$stamp"
    fi
}
