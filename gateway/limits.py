"""Rate limits, concurrency slots and token budgets, enforced atomically in Redis.

One Lua call admits a request against every level at once (key, team, organization,
each for all models and for the requested model), so admission is atomic across levels
and across gateway processes; the tightest limit wins. A request reserves its worst case
(prompt estimate + completion bound) and a second call settles the real count once the
upstream has reported ``usage``; that same call frees the concurrency slot and appends
the usage event, so a request costs two Redis round trips in all.

Semantics (all clocks are Redis server time):

* ``rpm`` / ``tpm``: a rolling 60-second window kept as one-second buckets in a hash
  per subject (``<base>:rpm``, ``<base>:tpm``); exact at one-second granularity. The
  hash also keeps the window's running total (field ``t``), the second through which
  expired buckets were swept (``w``) and its oldest live second (``f``), so an admission
  reads a few fields, not sixty.
* ``concurrency``: a sorted set of in-flight request ids scored by expiry
  (``<base>:conc``); a slot left behind by a vanished gateway frees itself after
  ``concurrency_slot_ttl`` seconds.
* ``daily_tokens`` / ``monthly_tokens``: counters per UTC day and UTC calendar month
  (``<base>:d:<days since epoch>``, ``<base>:m:<yyyymm>``). They are kept for every
  subject whether or not it has a budget, so a budget introduced mid-period sees the
  period's usage so far.

A subject's usage of one model has its own base, ``<base>:model:<alias>``, with the same
counters; it is one more level of the admission, limited by the subject's limits for
that alias (none: counted only).

Key names are built inside the scripts (the day depends on the server's clock), which
needs a standalone Redis (or Sentinel), not Redis Cluster.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from gateway import contract
from gateway.errors import GatewayError
from gateway.resp import LuaScript, ScriptClient

log = logging.getLogger("gateway.limits")

#: Shared by the admission and the settle script.
_LUA_COUNTERS = r"""
-- Add to a budget counter; a counter this call created gets its expiry (a counter keeps
-- the expiry of its first write: a day's counter lives two days, a month's 33).
local function add(key, amount, ttl)
  if redis.call('INCRBY', key, amount) == amount then redis.call('EXPIRE', key, ttl) end
end
"""

_LUA_CALENDAR = r"""
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m
end
local function days_from_civil(y, m)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5)
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
-- the unix second at which the month after month m of year y starts
local function next_month_start(y, m)
  if m == 12 then return days_from_civil(y + 1, 1) * 86400 end
  return days_from_civil(y, m + 1) * 86400
end
"""

#: ARGV: member, reserve, slot_ttl, nlevels, budget reserve, budget floor, exact ('1':
#: the budget reserve is exact, '0': it is a worst case), then per level: base, rpm, tpm,
#: concurrency, daily, monthly (-1 = no limit).
#: Returns {1, sec, day, month, rpm_limit, rpm_remaining, rpm_reset, tpm_limit,
#: tpm_remaining, tpm_reset, seed epoch, budget reserve held}, {3} when the counters are
#: not seeded and a budget applies, {0, reason, level index, limit, remaining, retry_after}, or
#: {2, reason, level index} when the worst case does not fit a budget but the floor does:
#: count the prompt and ask again (nothing was changed).
ADMIT_LUA = (
    _LUA_CALENDAR
    + _LUA_COUNTERS
    + r"""
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec + tonumber(t[2]) / 1000000
local day = math.floor(sec / 86400)
local y, m = civil_from_days(day)
local month = y * 100 + m
local member = ARGV[1]
local reserve = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local breserve = tonumber(ARGV[5])
local floor = tonumber(ARGV[6])
local exact = ARGV[7] == '1'
local cutoff = sec - 60
-- Counters not seeded from the ledger (Redis lost them): budgets cannot be checked, and
-- no counter is written until the seed, which rebuilds them from the ledger.
local epoch = redis.call('GET', '__SEEDED__')
if not epoch then
  for i = 0, n - 1 do
    local o = 8 + i * 6
    if tonumber(ARGV[o + 4]) >= 0 or tonumber(ARGV[o + 5]) >= 0 then
      return {3, 'unseeded', i + 1}
    end
  end
  breserve = 0
  epoch = ''
end

-- A window hash holds one field per second with traffic plus three of its own: 't', the
-- sum of its live seconds; 'w', the second through which older fields were swept
-- (deleted and taken off 't'); 'f', its oldest live second. Each call sweeps only the
-- seconds that left the window since the last one (usually none or one), so an
-- admission costs a few field reads per window, not a read of all sixty. A window
-- without them (new, or left by an older version) is read in full once.
-- Returns the live total and the oldest live second (nil: empty).
local function window(key)
  local meta = redis.call('HMGET', key, 't', 'w', 'f')
  local total, swept, first = tonumber(meta[1]), tonumber(meta[2]), tonumber(meta[3])
  if total == nil or swept == nil or swept < cutoff - 120 then
    total, first = 0, nil
    local flat = redis.call('HGETALL', key)
    if #flat == 0 then return 0, nil end
    local stale = {}
    for i = 1, #flat, 2 do
      local s = tonumber(flat[i])
      if s ~= nil then
        if s <= cutoff then
          stale[#stale + 1] = flat[i]
        else
          total = total + tonumber(flat[i + 1])
          if first == nil or s < first then first = s end
        end
      end
    end
    if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  elseif swept < cutoff then
    local gone = {}
    for s = swept + 1, cutoff do gone[#gone + 1] = s end
    local counts = redis.call('HMGET', key, unpack(gone))
    for i = 1, #counts do
      if counts[i] then total = total - tonumber(counts[i]) end
    end
    redis.call('HDEL', key, unpack(gone))
    if first ~= nil and first <= cutoff then
      -- The oldest second left: the next one with traffic (in steady traffic the first
      -- looked at; a scan of the window only after a quiet spell).
      first = nil
      for s = cutoff + 1, sec do
        if redis.call('HEXISTS', key, s) == 1 then
          first = s
          break
        end
      end
    end
  else
    return total, first
  end
  if first == nil then
    redis.call('HSET', key, 't', total, 'w', cutoff)
    redis.call('HDEL', key, 'f')
  else
    redis.call('HSET', key, 't', total, 'w', cutoff, 'f', first)
  end
  return total, first
end

-- seconds until enough of the window has expired to free `need` units (refusals only)
local function wait_for(key, need)
  local flat = redis.call('HGETALL', key)
  local live = {}
  for i = 1, #flat, 2 do
    local s = tonumber(flat[i])
    if s ~= nil and s > cutoff then live[#live + 1] = {s, tonumber(flat[i + 1])} end
  end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  local freed = 0
  for _, b in ipairs(live) do
    freed = freed + b[2]
    if freed >= need then return math.max(1, b[1] + 60 - sec) end
  end
  return 60
end

-- add `amount` at this second to a window whose live total is `total` and oldest live
-- second `first`
local function count(key, total, first, amount)
  -- The expiry moves when this second first gets traffic: the key outlives its newest
  -- second by 61 s.
  if redis.call('HINCRBY', key, sec, amount) == amount then redis.call('EXPIRE', key, 61) end
  redis.call('HSET', key, 't', total + amount, 'w', cutoff, 'f', first or sec)
end

local state = {}
local best_rpm = {-1, -1, 0}
local best_tpm = {-1, -1, 0}
for i = 0, n - 1 do
  local o = 8 + i * 6
  local base = ARGV[o]
  local rpm = tonumber(ARGV[o + 1])
  local tpm = tonumber(ARGV[o + 2])
  local conc = tonumber(ARGV[o + 3])
  local daily = tonumber(ARGV[o + 4])
  local monthly = tonumber(ARGV[o + 5])
  local lvl = i + 1
  local rpm_used, tpm_used, rpm_first, tpm_first = 0, 0, nil, nil
  if rpm >= 0 then
    local key = base .. ':rpm'
    rpm_used, rpm_first = window(key)
    if rpm_used + 1 > rpm then
      return {0, 'rpm', lvl, rpm, math.max(0, rpm - rpm_used), wait_for(key, rpm_used + 1 - rpm)}
    end
    if best_rpm[1] < 0 or rpm - rpm_used - 1 < best_rpm[2] then
      best_rpm = {rpm, rpm - rpm_used - 1, (rpm_first or sec) + 60 - sec}
    end
  end
  if tpm >= 0 then
    local key = base .. ':tpm'
    tpm_used, tpm_first = window(key)
    if reserve > tpm then
      return {0, 'tpm_request', lvl, tpm, math.max(0, tpm - tpm_used), 60}
    end
    if tpm_used + reserve > tpm then
      return {0, 'tpm', lvl, tpm, math.max(0, tpm - tpm_used),
              wait_for(key, tpm_used + reserve - tpm)}
    end
    if best_tpm[1] < 0 or tpm - tpm_used - reserve < best_tpm[2] then
      best_tpm = {tpm, tpm - tpm_used - reserve, (tpm_first or sec) + 60 - sec}
    end
  end
  if conc >= 0 then
    local key = base .. ':conc'
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local used = redis.call('ZCARD', key)
    if used + 1 > conc then
      return {0, 'concurrency', lvl, conc, math.max(0, conc - used), 1}
    end
  end
  if daily >= 0 then
    local used = tonumber(redis.call('GET', base .. ':d:' .. day) or '0')
    if used + breserve > daily then
      if not exact and used + floor <= daily then return {2, 'daily_tokens', lvl} end
      return {0, 'daily_tokens', lvl, daily, math.max(0, daily - used),
              (day + 1) * 86400 - sec}
    end
  end
  if monthly >= 0 then
    local used = tonumber(redis.call('GET', base .. ':m:' .. month) or '0')
    if used + breserve > monthly then
      if not exact and used + floor <= monthly then return {2, 'monthly_tokens', lvl} end
      return {0, 'monthly_tokens', lvl, monthly, math.max(0, monthly - used),
              next_month_start(y, m) - sec}
    end
  end
  state[lvl] = {base, rpm, tpm, conc, rpm_used, tpm_used, rpm_first, tpm_first}
end

for lvl = 1, n do
  local base, rpm, tpm, conc = state[lvl][1], state[lvl][2], state[lvl][3], state[lvl][4]
  if rpm >= 0 then count(base .. ':rpm', state[lvl][5], state[lvl][7], 1) end
  if tpm >= 0 then count(base .. ':tpm', state[lvl][6], state[lvl][8], reserve) end
  if conc >= 0 then
    redis.call('ZADD', base .. ':conc', now + ttl, member)
    redis.call('EXPIRE', base .. ':conc', math.ceil(ttl) + 60)
  end
  if breserve ~= 0 then
    add(base .. ':d:' .. day, breserve, 2 * 86400)
    add(base .. ':m:' .. month, breserve, 33 * 86400)
  end
end
return {1, sec, day, month, best_rpm[1], best_rpm[2], best_rpm[3],
        best_tpm[1], best_tpm[2], best_tpm[3], epoch, breserve}
"""
).replace("__SEEDED__", contract.LIMITS_SEEDED_KEY)

#: KEYS[1]: usage stream. ARGV: member, tpm delta, reservation second ('' if none), day
#: ('' = today), month, maxlen, event json ('' = none), nlevels, budget delta (day and
#: month counters), the reservation's seed epoch, the actual tokens, seconds to remember
#: that the request settled, then per level: base, has_tpm, has_conc. Returns 1, or 0 if
#: the request had settled already (nothing changed). The budget delta applies only to
#: a reservation of the current seed epoch; one made before Redis lost its counters is
#: charged in full, and while the counters are not seeded they are left alone (the seed
#: counts the event).
SETTLE_LUA = (
    (
        _LUA_CALENDAR
        + _LUA_COUNTERS
        + r"""
local member = ARGV[1]
local delta = tonumber(ARGV[2])
local res_sec = ARGV[3]
local day = ARGV[4]
local month = ARGV[5]
if day == '' then
  local sec = tonumber(redis.call('TIME')[1])
  local d = math.floor(sec / 86400)
  local y, m = civil_from_days(d)
  day = tostring(d)
  month = tostring(y * 100 + m)
end
local n = tonumber(ARGV[8])
local bdelta = tonumber(ARGV[9])
-- Each request settles once: a replay (journal) of a settle that was applied although
-- its answer was lost changes nothing. A member '<process id>:<hex sequence>' is one bit
-- of its process's bitmap of settled requests (a key per million requests, kept while
-- settles keep landing in it); any other member is a key of its own.
if member ~= '' then
  local process, seq = string.match(member, '^(%w+):(%x+)$')
  if process then
    local n = tonumber(seq, 16)
    local key = '__PREFIX__settled:' .. process .. ':' .. math.floor(n / 1048576)
    if redis.call('SETBIT', key, n % 1048576, 1) == 1 then return 0 end
    redis.call('EXPIRE', key, ARGV[12])
  elseif not redis.call('SET', '__PREFIX__settled:' .. member, '1', 'NX', 'EX', ARGV[12]) then
    return 0
  end
end
local current = redis.call('GET', '__SEEDED__')
if not current then
  bdelta = 0
elseif ARGV[10] ~= current then
  bdelta = tonumber(ARGV[11])
end
for i = 0, n - 1 do
  local o = 13 + i * 3
  local base = ARGV[o]
  if ARGV[o + 2] == '1' then
    redis.call('ZREM', base .. ':conc', member)
  end
  if delta ~= 0 and ARGV[o + 1] == '1' and res_sec ~= '' then
    -- Only while the reservation's second is in the window (not yet swept).
    if redis.call('HEXISTS', base .. ':tpm', res_sec) == 1 then
      redis.call('HINCRBY', base .. ':tpm', res_sec, delta)
      redis.call('HINCRBY', base .. ':tpm', 't', delta)
    end
  end
  if bdelta ~= 0 then
    add(base .. ':d:' .. day, bdelta, 2 * 86400)
    add(base .. ':m:' .. month, bdelta, 33 * 86400)
  end
end
if ARGV[7] ~= '' then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '*', 'event', ARGV[7])
end
return 1
"""
    )
    .replace("__SEEDED__", contract.LIMITS_SEEDED_KEY)
    .replace("__PREFIX__", contract.LIMITS_PREFIX)
)

#: ARGV: member, slot_ttl, then the bases whose concurrency slot to extend.
RENEW_LUA = r"""
local t = redis.call('TIME')
local expiry = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[2])
for i = 3, #ARGV do
  redis.call('ZADD', ARGV[i] .. ':conc', 'XX', expiry, ARGV[1])
end
return 1
"""

#: Add ``extra`` tokens to what an admitted reservation holds in the day and month
#: counters, if every budget still has room. ARGV: extra, the reservation's day and month,
#: its seed epoch, nlevels, then per level: base, daily, monthly (-1 = no limit).
#: Returns {1}, {3} when the counters were re-seeded since the reservation (it cannot be
#: added to), or {0, reason, level index, limit, remaining, retry_after}.
TOP_UP_LUA = (
    _LUA_CALENDAR
    + _LUA_COUNTERS
    + r"""
if redis.call('GET', '__SEEDED__') ~= ARGV[4] then return {3} end
local extra = tonumber(ARGV[1])
local day, month = ARGV[2], ARGV[3]
local n = tonumber(ARGV[5])
local sec = tonumber(redis.call('TIME')[1])
for i = 0, n - 1 do
  local o = 6 + i * 3
  local base = ARGV[o]
  local daily = tonumber(ARGV[o + 1])
  local monthly = tonumber(ARGV[o + 2])
  if daily >= 0 then
    local used = tonumber(redis.call('GET', base .. ':d:' .. day) or '0')
    if used + extra > daily then
      return {0, 'daily_tokens', i + 1, daily, math.max(0, daily - used),
              (tonumber(day) + 1) * 86400 - sec}
    end
  end
  if monthly >= 0 then
    local used = tonumber(redis.call('GET', base .. ':m:' .. month) or '0')
    if used + extra > monthly then
      local y, m = math.floor(tonumber(month) / 100), tonumber(month) % 100
      return {0, 'monthly_tokens', i + 1, monthly, math.max(0, monthly - used),
              next_month_start(y, m) - sec}
    end
  end
end
for i = 0, n - 1 do
  local base = ARGV[6 + i * 3]
  add(base .. ':d:' .. day, extra, 2 * 86400)
  add(base .. ':m:' .. month, extra, 33 * 86400)
end
return {1}
"""
).replace("__SEEDED__", contract.LIMITS_SEEDED_KEY)

ADMIT = LuaScript(ADMIT_LUA)
RENEW = LuaScript(RENEW_LUA)
SETTLE = LuaScript(SETTLE_LUA)
TOP_UP = LuaScript(TOP_UP_LUA)

REASON_CODES = {
    "rpm": ("rate_limit_exceeded", "requests per minute"),
    "tpm": ("rate_limit_exceeded", "tokens per minute"),
    "tpm_request": ("request_too_large", "tokens per minute"),
    "concurrency": ("concurrency_limit_exceeded", "concurrent requests"),
    "daily_tokens": ("budget_exceeded", "daily token budget"),
    "monthly_tokens": ("budget_exceeded", "monthly token budget"),
}
_NO_LIMIT = -1
#: Seconds a settled request is remembered, so that a replayed settle is not applied
#: twice: longer than a journal takes to replay once Redis answers again.
SETTLED_MARK_TTL = 900


class LimitsUnavailable(Exception):
    """Redis could not be reached to check limits."""


@dataclass(slots=True)
class Subject:
    level: str  # "key" | "team" | "org"
    id: str
    limits: contract.Limits
    #: A model alias: this subject's usage and limits for that model only.
    model: str | None = None

    @property
    def base(self) -> str:
        base = f"{contract.LIMITS_PREFIX}{self.level}:{self.id}"
        # Aliases are [a-z0-9._-]: no ':' to collide with the suffixes below.
        return base if self.model is None else f"{base}:model:{self.model}"

    @property
    def label(self) -> str:
        """How a refusal names this subject."""
        return self.level if self.model is None else f"{self.level} for the model '{self.model}'"


class NeedsExactCount(Exception):
    """The worst case of a request does not fit a token budget but its floor does: count
    the prompt exactly and admit again (the admission changed nothing)."""

    def __init__(self, reason: str, level: str, index: int) -> None:
        super().__init__(f"{reason} of the {level}")
        self.reason = reason
        self.level = level
        #: The subject (position in the admission's list) whose budget is near.
        self.index = index


class NearBudgets:
    """Subjects this process recently found near a token budget, so their next requests
    count the prompt first and make one exact admission instead of an estimate admission
    that would only answer "count first" (a Redis round trip saved per request near a
    budget). Only a hint: a subject wrongly held near is counted needlessly, one wrongly
    held far gets the estimate admission, which says "count first" again. It is
    forgotten after ``ttl`` seconds, on a new snapshot (a budget may have changed) and
    when an exact admission finds the budget spent."""

    def __init__(self, ttl: float = 10.0, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._until: dict[str, tuple[float, str]] = {}

    def reason(self, subjects: list[Subject]) -> str | None:
        """The budget (``daily_tokens`` / ``monthly_tokens``) one of ``subjects`` is
        near, if this process saw it near within the last ``ttl`` seconds."""
        if not self._until:
            return None
        now = time.monotonic()
        for subject in subjects:
            held = self._until.get(subject.base)
            if held is not None and held[0] > now:
                return held[1]
        return None

    def mark(self, base: str, reason: str) -> None:
        now = time.monotonic()
        if len(self._until) >= self.size:
            self._until = {b: h for b, h in self._until.items() if h[0] > now}
            if len(self._until) >= self.size:
                self._until.clear()
        self._until[base] = (now + self.ttl, reason)

    def forget(self, subjects: list[Subject] | None = None) -> None:
        if subjects is None:
            self._until.clear()
        for subject in subjects or ():
            self._until.pop(subject.base, None)


@dataclass(slots=True)
class Reservation:
    member: str
    #: Held in the tokens-per-minute windows.
    reserved: int = 0
    #: Held in the day and month counters (the worst case, or the exact count).
    budget_reserved: int = 0
    #: The seed epoch of the counters it was made in ('' = none, nothing held).
    epoch: str = ""
    sec: int | None = None
    day: int | None = None
    month: int | None = None
    #: (base, has_tpm, has_conc) for each level the admission touched.
    levels: list[tuple[str, bool, bool]] = field(default_factory=list)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def _limit(limits: contract.Limits, name: str) -> int:
    value = limits.get(name)
    return _NO_LIMIT if value is None else int(value)


def has_admission_limits(subjects: list[Subject]) -> bool:
    return any(
        s.limits.get(name) is not None
        for s in subjects
        for name in ("rpm", "tpm", "concurrency", "daily_tokens", "monthly_tokens")
    )


#: The token budgets' limit fields, which are also their refusal reasons.
BUDGET_LIMITS = ("daily_tokens", "monthly_tokens")


def has_budget(subjects: list[Subject]) -> bool:
    return any(s.limits.get(name) is not None for s in subjects for name in BUDGET_LIMITS)


def _rate_headers(values: list[int]) -> list[tuple[bytes, bytes]]:
    rpm_limit, rpm_remaining, rpm_reset, tpm_limit, tpm_remaining, tpm_reset = values
    headers: list[tuple[bytes, bytes]] = []
    if rpm_limit >= 0:
        headers += [
            (b"x-ratelimit-limit-requests", str(rpm_limit).encode()),
            (b"x-ratelimit-remaining-requests", str(max(0, rpm_remaining)).encode()),
            (b"x-ratelimit-reset-requests", f"{max(0, rpm_reset)}s".encode()),
        ]
    if tpm_limit >= 0:
        headers += [
            (b"x-ratelimit-limit-tokens", str(tpm_limit).encode()),
            (b"x-ratelimit-remaining-tokens", str(max(0, tpm_remaining)).encode()),
            (b"x-ratelimit-reset-tokens", f"{max(0, tpm_reset)}s".encode()),
        ]
    return headers


class Limiter:
    def __init__(self, scripts: ScriptClient, slot_ttl: float, usage_maxlen: int) -> None:
        self.scripts = scripts
        self.slot_ttl = slot_ttl
        self.usage_maxlen = usage_maxlen

    def unlimited(self, subjects: list[Subject], member: str) -> Reservation:
        """A reservation for a request that needs no admission check: settling it
        still counts its tokens in the subjects' day and month counters."""
        return Reservation(member=member, levels=[(s.base, False, False) for s in subjects])

    async def renew_slot(self, reservation: Reservation) -> None:
        """Push the expiry of a long request's concurrency slots forward, so a stream
        that outlives ``slot_ttl`` keeps counting against the limit."""
        bases = [base for base, _, has_conc in reservation.levels if has_conc]
        if bases:
            await self.scripts.run(RENEW, [], [reservation.member, self.slot_ttl, *bases])

    async def admit(
        self,
        subjects: list[Subject],
        member: str,
        reserve: int,
        *,
        budget_reserve: int | None = None,
        floor: int = 0,
    ) -> Reservation:
        """Reserve ``reserve`` tokens in the minute windows and ``budget_reserve`` (by
        default the same) in the day and month counters, one request and one slot at
        every level, or raise a 429 ``GatewayError`` naming the limit;
        ``LimitsUnavailable`` if Redis is down.

        With ``budget_reserve`` given, it is a worst case: when it does not fit a budget
        but ``floor`` (the least the request can cost) does, nothing is reserved and
        ``NeedsExactCount`` is raised; the caller counts and admits again with exact
        figures."""
        exact = budget_reserve is None
        breserve = reserve if budget_reserve is None else budget_reserve
        args: list[Any] = [
            member,
            reserve,
            self.slot_ttl,
            len(subjects),
            breserve,
            floor,
            "1" if exact else "0",
        ]
        for s in subjects:
            lim = s.limits
            args += [
                s.base,
                _limit(lim, "rpm"),
                _limit(lim, "tpm"),
                _limit(lim, "concurrency"),
                _limit(lim, "daily_tokens"),
                _limit(lim, "monthly_tokens"),
            ]
        try:
            result = await self.scripts.run(ADMIT, [], args)
        except (RedisError, OSError) as exc:
            raise LimitsUnavailable(str(exc) or type(exc).__name__) from exc
        if int(result[0]) == 3:
            raise LimitsUnavailable(
                "the budget counters are not seeded from the usage ledger yet (is the "
                "ledger consumer running?)"
            )
        if int(result[0]) == 1:
            epoch = result[10].decode() if isinstance(result[10], bytes) else str(result[10])
            return Reservation(
                member=member,
                reserved=reserve,
                budget_reserved=int(result[11]),
                epoch=epoch,
                sec=int(result[1]),
                day=int(result[2]),
                month=int(result[3]),
                levels=[
                    (
                        s.base,
                        s.limits.get("tpm") is not None,
                        s.limits.get("concurrency") is not None,
                    )
                    for s in subjects
                ],
                headers=_rate_headers([int(v) for v in result[4:10]]),
            )
        if int(result[0]) == 2:
            reason = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
            index = int(result[2]) - 1
            raise NeedsExactCount(reason, subjects[index].label, index)
        raise _refused(result, subjects, reserve)

    async def top_up(self, reservation: Reservation, subjects: list[Subject], extra: int) -> None:
        """Hold ``extra`` more tokens in the day and month counters for an admitted
        request (its prompt counted more than its reservation), or raise the budget's 429
        ``GatewayError`` (nothing changed; the reservation stays to be settled);
        ``LimitsUnavailable`` if Redis is down or lost the counters since."""
        args: list[Any] = [
            extra,
            reservation.day,
            reservation.month,
            reservation.epoch,
            len(subjects),
        ]
        for s in subjects:
            args += [s.base, _limit(s.limits, "daily_tokens"), _limit(s.limits, "monthly_tokens")]
        try:
            result = await self.scripts.run(TOP_UP, [], args)
        except (RedisError, OSError) as exc:
            raise LimitsUnavailable(str(exc) or type(exc).__name__) from exc
        if int(result[0]) == 1:
            reservation.budget_reserved += extra
            return
        if int(result[0]) == 3:
            raise LimitsUnavailable("the budget counters were re-seeded during the admission")
        raise _refused(result, subjects, extra)

    def settle_args(
        self, reservation: Reservation | None, actual_tokens: int, event_json: str
    ) -> list[Any]:
        if reservation is None:
            return [
                "",
                actual_tokens,
                "",
                "",
                "",
                self.usage_maxlen,
                event_json,
                0,
                0,
                "",
                0,
                SETTLED_MARK_TTL,
            ]
        args: list[Any] = [
            reservation.member,
            actual_tokens - reservation.reserved,
            "" if reservation.sec is None else reservation.sec,
            "" if reservation.day is None else reservation.day,
            "" if reservation.month is None else reservation.month,
            self.usage_maxlen,
            event_json,
            len(reservation.levels),
            actual_tokens - reservation.budget_reserved,
            reservation.epoch,
            actual_tokens,
            SETTLED_MARK_TTL,
        ]
        for base, has_tpm, has_conc in reservation.levels:
            args += [base, "1" if has_tpm else "0", "1" if has_conc else "0"]
        return args

    async def settle(
        self, reservation: Reservation | None, actual_tokens: int, event_json: str
    ) -> None:
        """Replace the reservation by the real count, free the slot, append the event."""
        await self.run_settle(self.settle_args(reservation, actual_tokens, event_json))

    async def run_settle(self, args: list[Any]) -> bool:
        """Run a settle from its arguments (a journal replays them); ``False`` if that
        request had settled already."""
        return int(await self.scripts.run(SETTLE, [contract.USAGE_STREAM], args)) == 1


def _refused(result: list[Any], subjects: list[Subject], reserve: int) -> GatewayError:
    """The 429 of a script's refusal, ``{0, reason, level index, limit, remaining,
    retry_after}``."""
    reason = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
    subject = subjects[int(result[2]) - 1]
    limit, remaining, retry_after = int(result[3]), int(result[4]), max(1, int(result[5]))
    return refusal(
        reason, subject.level, limit, remaining, retry_after, reserve, label=subject.label
    )


def refusal(
    reason: str,
    level: str,
    limit: int,
    remaining: int,
    retry_after: int,
    reserve: int,
    *,
    label: str | None = None,
) -> GatewayError:
    code, what = REASON_CODES.get(reason, ("rate_limit_exceeded", reason))
    label = label or level
    if reason == "tpm_request":
        message = (
            f"This request needs up to {reserve} tokens, more than the limit of the {label} "
            f"of {limit} tokens per minute; lower max_tokens or the prompt size."
        )
    else:
        message = (
            f"Rate limit reached: {what} of the {label} ({limit}). Retry after {retry_after} s."
        )
    headers = [(b"retry-after", str(retry_after).encode())]
    if reason in ("rpm",):
        headers += [
            (b"x-ratelimit-limit-requests", str(limit).encode()),
            (b"x-ratelimit-remaining-requests", str(remaining).encode()),
            (b"x-ratelimit-reset-requests", f"{retry_after}s".encode()),
        ]
    elif reason in ("tpm", "tpm_request", "daily_tokens", "monthly_tokens"):
        headers += [
            (b"x-ratelimit-limit-tokens", str(limit).encode()),
            (b"x-ratelimit-remaining-tokens", str(remaining).encode()),
            (b"x-ratelimit-reset-tokens", f"{retry_after}s".encode()),
        ]
    else:
        headers += [
            (b"x-ratelimit-limit-concurrency", str(limit).encode()),
            (b"x-ratelimit-remaining-concurrency", str(remaining).encode()),
        ]
    return GatewayError(429, message, code=code, headers=headers, reason=reason, level=level)
