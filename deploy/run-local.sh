#!/usr/bin/env bash
# Run the whole platform on this machine with the single-machine defaults (SQLite and
# an embedded Redis in ./data, unless DATABASE_URL / REDIS_URL are set). Installs what
# is missing first: the platform in ./.venv, vLLM (CPU build, or the GPU build where
# nvidia-smi finds a GPU) in ./.engine-venv; a second run installs nothing.
# Arguments go to `python -m controlplane.local` (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/lib/venv.sh
ensure_platform_venv
case " $* " in
    *" --control-plane-only "* | *" --help "* | *" -h "*) ;;
    *) bash deploy/install-engine.sh ;;
esac
# The data directory holds the database, keys and the routing snapshot: owner only.
umask 077
exec .venv/bin/python -m controlplane.local "$@"
