from __future__ import annotations

import uuid

from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from controlplane.catalog.models import alias_validator
from controlplane.tenancy.models import ApiKey, Organization, Team
from controlplane.tenancy.scoping import ScopedQuerySet

LIMIT_FIELDS = ("rpm", "tpm", "concurrency", "daily_tokens", "monthly_tokens", "max_tokens")
FAIL_MODES = [("", "gateway default"), ("closed", "closed"), ("open", "open")]


def _limit(help_text: str) -> models.PositiveBigIntegerField:
    return models.PositiveBigIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text=help_text
    )


class LimitPolicy(models.Model):
    """Limits of one organization, team or key; empty fields mean "no limit here".

    A policy without ``model`` applies to every model; one with ``model`` (a model alias)
    applies to that model only, on top of the all-models policy. The effective limit of
    a request is the tightest of all the policies that apply to it: its key's, its
    team's and its organization's, each for all models and for the requested model."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="limit_policies"
    )
    team = models.ForeignKey(
        Team, on_delete=models.CASCADE, null=True, blank=True, related_name="limit_policies"
    )
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.CASCADE, null=True, blank=True, related_name="limit_policies"
    )
    model = models.CharField(
        max_length=64,
        blank=True,
        default="",
        validators=[alias_validator],
        help_text="Model alias these limits apply to; empty for all models",
    )
    rpm = _limit("Requests per minute")
    tpm = _limit("Tokens (prompt + completion) per minute")
    concurrency = _limit("Requests in flight at once")
    daily_tokens = _limit("Token budget per UTC day")
    monthly_tokens = _limit("Token budget per UTC calendar month")
    max_tokens = _limit("Cap on max_tokens of one request")
    fail_mode = models.CharField(
        max_length=8,
        blank=True,
        default="",
        choices=FAIL_MODES,
        help_text="When the gateway cannot reach its limit store: 'closed' refuses requests "
        "with limits (503), 'open' admits them against per-process shares of each limit; "
        "empty: the gateway's setting. Only on an organization's all-models policy.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    scope_org_path = "organization"
    objects = ScopedQuerySet.as_manager()

    class Meta:
        ordering = ["organization", "team", "api_key", "model"]
        constraints = [
            models.CheckConstraint(
                condition=Q(team__isnull=True) | Q(api_key__isnull=True),
                name="limit_policy_one_subject",
            ),
            models.UniqueConstraint(
                fields=["organization", "model"],
                condition=Q(team__isnull=True, api_key__isnull=True),
                name="limit_policy_unique_org",
            ),
            models.UniqueConstraint(
                fields=["team", "model"],
                condition=Q(team__isnull=False),
                name="limit_policy_unique_team",
            ),
            models.UniqueConstraint(
                fields=["api_key", "model"],
                condition=Q(api_key__isnull=False),
                name="limit_policy_unique_key",
            ),
        ]

    def __str__(self) -> str:
        target = self.api_key or self.team or self.organization
        scope = f" for {self.model}" if self.model else ""
        return f"limits of {self.subject} {target}{scope}"

    @property
    def subject(self) -> str:
        if self.api_key_id:
            return "key"
        if self.team_id:
            return "team"
        return "organization"

    def as_dict(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in LIMIT_FIELDS}


class UsageRecord(models.Model):
    """One row per request the gateway handled (the ledger). Ids are plain values, not
    foreign keys: usage must outlive the keys and teams it names."""

    request_id = models.CharField(max_length=64, unique=True)
    organization_id = models.UUIDField(db_index=True)
    team_id = models.UUIDField(null=True, blank=True)
    api_key_id = models.UUIDField(null=True, blank=True, db_index=True)
    user_id = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=64, db_index=True)
    endpoint = models.CharField(max_length=32)
    replica = models.CharField(max_length=64, blank=True)
    owner_id = models.UUIDField(
        null=True,
        blank=True,
        db_index=True,
        help_text="Organization owning the deployment that served it; empty for platform "
        "capacity, an external provider or no upstream at all",
    )
    status = models.PositiveSmallIntegerField()
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.FloatField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    error = models.CharField(max_length=64, blank=True)
    occurred_at = models.DateTimeField(db_index=True)
    recorded_at = models.DateTimeField(auto_now_add=True)

    scope_org_path = "organization_id"
    objects = ScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-occurred_at"]

    def __str__(self) -> str:
        return self.request_id

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# Upper bounds (ms) of the fixed histogram buckets of UsageHourly; a last bucket holds
# everything above the largest bound. Percentiles read from it are the bucket's bound.
LATENCY_BOUNDS_MS = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000)
BUCKETS = len(LATENCY_BOUNDS_MS) + 1
LATENCY_BUCKET_FIELDS = tuple(f"latency_b{i}" for i in range(BUCKETS))
TTFT_BUCKET_FIELDS = tuple(f"ttft_b{i}" for i in range(BUCKETS))
ROLLUP_SUM_FIELDS = (
    "requests",
    "errors_4xx",
    "errors_5xx",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms_sum",
    "ttft_ms_sum",
    "ttft_count",
    *LATENCY_BUCKET_FIELDS,
    *TTFT_BUCKET_FIELDS,
)


class UsageSums(models.Model):
    """The figures every usage rollup sums: counts, token totals, latency sums and the
    fixed latency and TTFT histograms percentiles are read from."""

    requests = models.PositiveBigIntegerField(default=0)
    errors_4xx = models.PositiveBigIntegerField(default=0)
    errors_5xx = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    latency_ms_sum = models.FloatField(default=0)
    ttft_ms_sum = models.FloatField(default=0)
    ttft_count = models.PositiveBigIntegerField(default=0, help_text="Requests with a TTFT")
    for _name in LATENCY_BUCKET_FIELDS + TTFT_BUCKET_FIELDS:
        locals()[_name] = models.PositiveBigIntegerField(default=0)
    del _name

    scope_org_path = "organization_id"
    objects = ScopedQuerySet.as_manager()

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return self.bucket


class UsageHourly(UsageSums):
    """The usage ledger summed per (organization, team, key, model, UTC hour): what
    charts and summaries read instead of scanning UsageRecord. Written by the ledger
    consumer in the transaction that inserts the records, from the records that insert
    reports as new, so a replayed event is never counted twice; ``manage.py
    rebuild_usage_rollup`` recomputes it from the ledger."""

    # One text key for the five dimensions: team and key may be empty, and a unique
    # constraint over nullable columns would let two rows share a bucket.
    bucket = models.CharField(max_length=200, unique=True, editable=False)
    organization_id = models.UUIDField()
    team_id = models.UUIDField(null=True, blank=True)
    api_key_id = models.UUIDField(null=True, blank=True)
    model = models.CharField(max_length=64)
    hour = models.DateTimeField()

    class Meta:
        ordering = ["hour"]
        indexes = [models.Index(fields=["organization_id", "hour"], name="usage_hourly_org_hour")]


class UsageDaily(UsageSums):
    """UsageHourly summed per (organization, team, model, UTC day), without the key:
    per day, team and model figures of a month read a few thousand rows, not the
    hundreds of thousands of hourly ones of an organization with thousands of keys.
    Always the sum of the hourly rows of its day (written with them, in the same
    transaction, and rebuilt from them)."""

    bucket = models.CharField(max_length=200, unique=True, editable=False)
    organization_id = models.UUIDField()
    team_id = models.UUIDField(null=True, blank=True)
    model = models.CharField(max_length=64)
    day = models.DateTimeField(help_text="Midnight UTC")

    class Meta:
        ordering = ["day"]
        indexes = [models.Index(fields=["organization_id", "day"], name="usage_daily_org_day")]


class UsageDailyKey(UsageSums):
    """UsageHourly summed per (organization, API key, UTC day): the per-key figures
    (usage by key, top keys) at one row per key and day."""

    bucket = models.CharField(max_length=200, unique=True, editable=False)
    organization_id = models.UUIDField()
    api_key_id = models.UUIDField(null=True, blank=True)
    day = models.DateTimeField(help_text="Midnight UTC")

    class Meta:
        ordering = ["day"]
        indexes = [
            models.Index(fields=["organization_id", "day"], name="usage_daily_key_org_day"),
            # The figures of the few keys a page shows (top keys), without a scan.
            models.Index(
                fields=["organization_id", "api_key_id", "day"], name="usage_daily_key_org_key"
            ),
        ]
