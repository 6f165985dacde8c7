"""How API callers prove who they are: a browser session (the console) or a bearer
API key with the ``manage`` scope (automation)."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import ApiKey
from controlplane.tenancy.services import touch_last_used
from gateway.contract import SCOPE_MANAGE, parse_api_key, verify_api_key_secret


class KeyPrincipal:
    """``request.user`` for a key that belongs to no user (a service key)."""

    is_authenticated = True
    is_active = True
    is_superuser = False
    pk = None

    def __init__(self, key: ApiKey):
        self.key = key

    def __str__(self) -> str:
        return self.key.display_prefix


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode(errors="replace")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        parsed = parse_api_key(token)
        if parsed is None:
            raise exceptions.AuthenticationFailed("Malformed API key.")
        key = (
            ApiKey.objects.select_related("organization", "user")
            .filter(prefix=parsed.prefix)
            .first()
        )
        if key is None or not verify_api_key_secret(
            parsed.secret, key.secret_hash, settings.API_KEY_PEPPER
        ):
            raise exceptions.AuthenticationFailed("Invalid API key.")
        if not key.is_active():
            raise exceptions.AuthenticationFailed("This API key is revoked or expired.")
        if SCOPE_MANAGE not in key.scopes:
            raise exceptions.PermissionDenied("This API key lacks the 'manage' scope.")
        if key.user_id is not None and not key.user.is_active:
            raise exceptions.AuthenticationFailed("The owner of this API key is deactivated.")
        actor = Actor.for_key(key)
        if not actor.roles:
            # Its user (or, for a service key, its maker) has left the organization.
            raise exceptions.AuthenticationFailed(
                "This API key no longer acts for anyone in its organization."
            )
        touch_last_used(key)
        request.actor = actor
        return (key.user if key.user_id else KeyPrincipal(key), key)

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class SessionAuthentication(authentication.SessionAuthentication):
    def authenticate(self, request):
        result = super().authenticate(request)
        if result is not None:
            request.actor = Actor.for_user(result[0])
        return result


def get_actor(request) -> Actor | None:
    return getattr(request, "actor", None)


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "controlplane.api.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key with the 'manage' scope: sk-<prefix>.<secret>",
        }


class SessionScheme(OpenApiAuthenticationExtension):
    target_class = "controlplane.api.authentication.SessionAuthentication"
    name = "session"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}
