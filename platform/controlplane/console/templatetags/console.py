from __future__ import annotations

import json

from django import template
from django.utils import timezone

register = template.Library()


@register.filter
def get_item(mapping, key):
    if not mapping or key is None:
        return None
    return mapping.get(str(key))


@register.simple_tag
def query_with(params, **changes) -> str:
    """The current query string with some parameters replaced (autoescaped where used)."""
    query = params.copy() if hasattr(params, "copy") else dict(params or {})
    for name, value in changes.items():
        query[name] = value
    return query.urlencode() if hasattr(query, "urlencode") else ""


@register.simple_tag
def key_state(key, now=None) -> str:
    now = now or timezone.now()
    if key.revoked_at:
        return "revoked"
    if key.expires_at and key.expires_at <= now:
        return "expired"
    return "active"


@register.filter
def group_label(value, group_by) -> str:
    """A summary group as people read it: a day or hour in UTC without the ISO noise."""
    if value is None:
        return "(none)"
    if group_by == "day":
        return str(value)[:10]
    if group_by == "hour":
        return str(value)[:13].replace("T", " ") + ":00 UTC"
    return str(value)


@register.filter
def as_json(value) -> str:
    """A stored value as compact JSON (``null``, not Python's ``None``); autoescaped
    where it is used."""
    return json.dumps(value, default=str, ensure_ascii=False, separators=(", ", ": "))
