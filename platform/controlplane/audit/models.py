"""The hash-chained, append-only audit log.

Each event's ``hash`` is SHA-256 over a canonical JSON of its own fields and the
previous event's hash, so changing, deleting, inserting or reordering a row breaks
the chain at that row (``python manage.py audit_verify``). On PostgreSQL a trigger
refuses UPDATE and DELETE outright (migration 0002). Signed checkpoints record the
head (sequence number and hash) with a key kept outside the database, so a rewritten
tail is detected too.
"""

from __future__ import annotations

from django.db import models


class ActorType(models.TextChoices):
    USER = "user", "User"
    KEY = "key", "API key"
    SYSTEM = "system", "System"


class AuditEvent(models.Model):
    seq = models.BigIntegerField(primary_key=True, help_text="Gapless sequence number, from 1")
    occurred_at = models.DateTimeField(db_index=True)
    actor_type = models.CharField(max_length=8, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True, db_index=True)
    actor_label = models.CharField(max_length=200, blank=True)
    # A plain id rather than a foreign key: the log outlives what it describes.
    organization_id = models.UUIDField(null=True, blank=True, db_index=True)
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, db_index=True)
    target_id = models.CharField(max_length=64, blank=True, db_index=True)
    target_repr = models.CharField(max_length=200, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    request_id = models.CharField(max_length=64, blank=True, db_index=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["seq"]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.target_type}:{self.target_id}"


class AuditCheckpoint(models.Model):
    """A signed statement "the chain had this head at this time"."""

    seq = models.BigIntegerField()
    hash = models.CharField(max_length=64)
    signed_at = models.DateTimeField()
    key_fingerprint = models.CharField(max_length=64)
    signature = models.CharField(max_length=128, help_text="Ed25519 signature, base64")

    class Meta:
        ordering = ["seq", "signed_at"]

    def __str__(self) -> str:
        return f"checkpoint @{self.seq}"
