"""Redis is a cache of the ledger: rebuild the gateway's day and month token counters
from the usage ledger when Redis has lost them (``contract.LIMITS_SEEDED_KEY`` missing).

Until the seed, the gateway refuses requests that have a token budget as
``limits_unavailable`` and writes no day/month counter; the usage events it appends
meanwhile stay in the stream. The seed then sets every counter of the current UTC day and
month to

    ledger totals (one database snapshot)
  + the stream's events that snapshot does not hold (read inside the seed script)

in one Lua call that first checks the marker, so two seeders racing cannot both write
(no double count), and an event is counted once whether the ledger consumer has recorded
it yet or not.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections import defaultdict

import redis
from django.db import connection, transaction
from django.db.models import Sum

from controlplane.quotas.models import UsageRecord
from gateway import contract
from gateway.limits import _LUA_CALENDAR, Subject

log = logging.getLogger(__name__)

#: KEYS[1]: marker, KEYS[2]: usage stream. ARGV: epoch, day, month, n counters, then
#: n x (counter key, tokens), then request ids the ledger totals already hold.
#: Returns 1 (seeded), 0 (already seeded by someone else), -1 (the UTC day or month
#: changed since the totals were read: read again).
SEED_LUA = (
    _LUA_CALENDAR
    + r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local sec = tonumber(redis.call('TIME')[1])
local day = math.floor(sec / 86400)
local y, m = civil_from_days(day)
if tostring(day) ~= ARGV[2] or tostring(y * 100 + m) ~= ARGV[3] then return -1 end
local totals = {}
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  local key = ARGV[5 + i * 2]
  totals[key] = (totals[key] or 0) + tonumber(ARGV[6 + i * 2])
end
local known = {}
for i = 5 + n * 2, #ARGV do known[ARGV[i]] = true end
local prefix = '__PREFIX__'
local entries = redis.call('XRANGE', KEYS[2], '-', '+')
for _, entry in ipairs(entries) do
  local fields = entry[2]
  local raw = nil
  for j = 1, #fields, 2 do
    if fields[j] == 'event' then raw = fields[j + 1] end
  end
  local ok, event = pcall(cjson.decode, raw or '')
  if ok and type(event) == 'table' and not known[tostring(event.request_id)]
     and type(event.ts) == 'number' and type(event.org) == 'string' then
    local tokens = (tonumber(event.prompt_tokens) or 0) + (tonumber(event.completion_tokens) or 0)
    local eday = math.floor(event.ts / 86400)
    local ey, em = civil_from_days(eday)
    local subjects = {'org:' .. event.org}
    if type(event.team) == 'string' then subjects[#subjects + 1] = 'team:' .. event.team end
    if type(event.key) == 'string' then subjects[#subjects + 1] = 'key:' .. event.key end
    local model = type(event.model) == 'string' and event.model or nil
    for _, subject in ipairs(subjects) do
      local bases = {prefix .. subject}
      if model then bases[2] = prefix .. subject .. ':model:' .. model end
      for _, base in ipairs(bases) do
        if tokens > 0 and ey * 100 + em == tonumber(ARGV[3]) then
          local mk = base .. ':m:' .. ARGV[3]
          totals[mk] = (totals[mk] or 0) + tokens
          if eday == day then
            local dk = base .. ':d:' .. ARGV[2]
            totals[dk] = (totals[dk] or 0) + tokens
          end
        end
      end
    end
  end
end
for key, tokens in pairs(totals) do
  local ttl = 33 * 86400
  if string.find(key, ':d:', 1, true) then ttl = 2 * 86400 end
  redis.call('SET', key, tokens, 'EX', ttl)
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""
).replace("__PREFIX__", contract.LIMITS_PREFIX)


def _period(now: dt.datetime) -> tuple[int, int, dt.datetime, dt.datetime]:
    day = int(now.timestamp()) // 86400
    day_start = dt.datetime.fromtimestamp(day * 86400, tz=dt.UTC)
    month_start = day_start.replace(day=1)
    return day, day_start.year * 100 + day_start.month, day_start, month_start


def _bases(org, team, key, model) -> list[str]:
    subjects = [("org", org), ("team", team), ("key", key)]
    bases = []
    for level, subject_id in subjects:
        if subject_id is None:
            continue
        bases.append(Subject(level, str(subject_id), {}).base)
        if model:
            bases.append(Subject(level, str(subject_id), {}, model).base)
    return bases


def ledger_totals(
    day: int, month: int, day_start: dt.datetime, month_start: dt.datetime
) -> dict[str, int]:
    """Counter key -> tokens of the ledger for the current day and month."""
    totals: dict[str, int] = defaultdict(int)
    rows = (
        UsageRecord.objects.filter(occurred_at__gte=month_start)
        .values("organization_id", "team_id", "api_key_id", "model")
        .annotate(
            month=Sum("prompt_tokens") + Sum("completion_tokens"),
        )
    )
    for row in rows:
        for base in _bases(row["organization_id"], row["team_id"], row["api_key_id"], row["model"]):
            totals[f"{base}:m:{month}"] += row["month"] or 0
    rows = (
        UsageRecord.objects.filter(occurred_at__gte=day_start)
        .values("organization_id", "team_id", "api_key_id", "model")
        .annotate(today=Sum("prompt_tokens") + Sum("completion_tokens"))
    )
    for row in rows:
        for base in _bases(row["organization_id"], row["team_id"], row["api_key_id"], row["model"]):
            totals[f"{base}:d:{day}"] += row["today"] or 0
    return {key: tokens for key, tokens in totals.items() if tokens}


def prepare_seed(client: redis.Redis, now: dt.datetime | None = None) -> list:
    """The seed script's arguments: the ledger's totals for the current day and month and
    the ids of the streamed events those totals already hold."""
    day, month, day_start, month_start = _period(now or dt.datetime.now(dt.UTC))
    # One database snapshot for the totals and for which streamed events they hold; the
    # stream is read after the snapshot was taken, so an event appended later cannot be
    # in it.
    outer = connection.in_atomic_block
    with transaction.atomic():
        # Inside a caller's transaction its isolation applies. SQLite (the single-machine
        # default) reads one snapshot per transaction already, and has no such statement.
        if not outer and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        totals = ledger_totals(day, month, day_start, month_start)
        streamed = [
            _request_id(fields) for _id, fields in client.xrange(contract.USAGE_STREAM, "-", "+")
        ]
        ids = [r for r in streamed if r]
        known = []
        for start in range(0, len(ids), 500):  # bounded statements (SQLite's variable cap)
            known += UsageRecord.objects.filter(
                request_id__in=ids[start : start + 500]
            ).values_list("request_id", flat=True)
    args: list = [uuid.uuid4().hex, day, month, len(totals)]
    for key, tokens in totals.items():
        args += [key, tokens]
    return args + known


def apply_seed(client: redis.Redis, args: list) -> int:
    """1: seeded; 0: the counters were seeded already (nothing written); -1: the day or
    month turned since ``prepare_seed``."""
    return int(client.eval(SEED_LUA, 2, contract.LIMITS_SEEDED_KEY, contract.USAGE_STREAM, *args))


def seed_counters(client: redis.Redis, *, now: dt.datetime | None = None) -> bool:
    """Seed the counters if they are missing; returns whether this call seeded them."""
    if client.exists(contract.LIMITS_SEEDED_KEY):
        return False
    for _attempt in range(3):
        args = prepare_seed(client, now)
        result = apply_seed(client, args)
        if result == 1:
            log.warning("budget counters re-seeded from the usage ledger (%d counters)", args[3])
            return True
        if result == 0:
            return False
    return False


def _request_id(fields: dict) -> str:
    raw = fields.get(b"event") or fields.get("event")
    try:
        return str(json.loads(raw).get("request_id") or "")
    except (TypeError, ValueError, AttributeError):
        return ""
