# Shared by deploy/run-local.sh and tests/run.sh: create ./.venv with Python 3.11 and
# install the project into it, again only when pyproject.toml changed.
ensure_platform_venv() {
    local extras="${1:-}"
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
        exit 1
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "==> creating .venv with $("$python" --version)"
        "$python" -m venv .venv
        .venv/bin/python -m pip install --quiet --upgrade pip
    fi
    local stamp=".venv/.installed-${extras:-base}"
    local want
    want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "==> installing the platform into .venv${extras:+ (with [$extras])}"
        if [ -t 1 ]; then
            # At a terminal: pip's own progress (what it fetches, with download bars).
            .venv/bin/python -m pip install --progress-bar on -e ".${extras:+[$extras]}"
        else
            .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
        fi
        echo "$want" >"$stamp"
    fi
}
