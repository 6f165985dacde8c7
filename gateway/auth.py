"""Authenticate an API key against the in-memory snapshot.

The key may come as ``Authorization: Bearer``, ``api-key`` or ``x-api-key``; all three
lead to the same decision. Nothing here touches Redis or a database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway import contract
from gateway.errors import GatewayError
from gateway.snapshot import CompiledSnapshot

_HEADER_NAMES = (b"authorization", b"api-key", b"x-api-key")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key and the subjects its limits roll up to."""

    key: contract.KeyEntry
    org_id: str
    org: contract.OrgEntry
    team_id: str | None
    team: contract.TeamEntry | None

    @property
    def key_id(self) -> str:
        return self.key["id"]

    @property
    def user(self) -> str | None:
        return self.key.get("user")


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key from the first of the accepted headers that carries one."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in _HEADER_NAMES and lowered not in found:
            found[lowered] = value
    auth = found.get(b"authorization")
    if auth is not None:
        scheme, _, token = auth.decode("latin-1").strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    for name in (b"api-key", b"x-api-key"):
        value = found.get(name)
        if value is not None and value.strip():
            return value.decode("latin-1").strip()
    return None


def _unauthorized(message: str, code: str) -> GatewayError:
    return GatewayError(
        401, message, code=code, headers=[(b"www-authenticate", b'Bearer realm="gateway"')]
    )


def authenticate(
    raw_key: str | None, snapshot: CompiledSnapshot, pepper: bytes, now: float | None = None
) -> Principal:
    """Return the caller or raise a 401 (unknown, malformed, expired or revoked key)."""
    if raw_key is None:
        raise _unauthorized(
            "Missing API key: send it as 'Authorization: Bearer <key>', 'api-key' or 'x-api-key'.",
            "missing_api_key",
        )
    parsed = contract.parse_api_key(raw_key)
    if parsed is None:
        raise _unauthorized("Invalid API key format.", "invalid_api_key")
    entry = snapshot.keys.get(parsed.prefix)
    if entry is None or not contract.verify_api_key_secret(parsed.secret, entry["hash"], pepper):
        raise _unauthorized("Incorrect API key provided.", "invalid_api_key")
    if entry.get("revoked"):
        raise _unauthorized("This API key has been revoked.", "revoked_api_key")
    expires_at = entry.get("expires_at")
    if expires_at is not None and expires_at < (time.time() if now is None else now):
        raise _unauthorized("This API key has expired.", "expired_api_key")
    org = snapshot.orgs.get(entry["org"])
    if org is None:
        # A key whose organization is gone from the snapshot is as good as revoked.
        raise _unauthorized("Incorrect API key provided.", "invalid_api_key")
    team_id = entry.get("team")
    team = snapshot.teams.get(team_id) if team_id else None
    return Principal(key=entry, org_id=entry["org"], org=org, team_id=team_id, team=team)


def require_scope(principal: Principal, scope: str = contract.SCOPE_INFERENCE) -> None:
    if scope not in (principal.key.get("scopes") or ()):
        raise GatewayError(
            403,
            f"This API key lacks the '{scope}' scope.",
            code="insufficient_scope",
        )
