"""Filters shared by the API's resources."""

from __future__ import annotations

import datetime as dt

import django_filters
from rest_framework.exceptions import ValidationError


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 date-time, sent to the database in UTC: offsets Python accepts but
    PostgreSQL does not (beyond ±15:59) cannot turn a filter into a server error."""

    def filter(self, qs, value):
        if value is not None and value.tzinfo is not None:
            try:
                value = value.astimezone(dt.UTC)
            except OverflowError:
                raise ValidationError({self.field_name: ["Date out of range."]}) from None
        return super().filter(qs, value)
