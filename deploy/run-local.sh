#!/usr/bin/env bash
# Run the platform on this machine with the single-machine defaults (SQLite and an
# embedded Redis in ./data, unless DATABASE_URL / REDIS_URL are set). Installs what is
# missing into ./.venv first; a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/lib/venv.sh
ensure_platform_venv
exec .venv/bin/python -m controlplane.local "$@"
