"""Encryption of the upstream API keys the gateway must send in clear.

Fernet with a key derived from ``UPSTREAM_SECRETS_KEY`` (default: SECRET_KEY), so a
database dump alone does not reveal them.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

from controlplane.env import env_str


def _fernet() -> Fernet:
    material = env_str("UPSTREAM_SECRETS_KEY") or settings.SECRET_KEY
    digest = hashlib.sha256(b"upstream-secrets:" + material.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt_secret(value: str) -> str:
    return _fernet().encrypt(value.encode()).decode() if value else ""


def decrypt_secret(token: str) -> str | None:
    if not token:
        return None
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        return None
