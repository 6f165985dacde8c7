"""The playground's key and its relay to the gateway.

On first use the console makes the signed-in user a one-hour inference key through
``create_api_key`` (audited like any key). Its secret lives in the server-side session
only: no page shows it. Signing out revokes it. Chats go to the gateway at
``CONSOLE_GATEWAY_URL`` like any client's, so they obey the key's limits and policy and
appear in usage; the answer's text is relayed to the browser as it streams in.

This module does not import the console's views: the sign-out view calls it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time

import httpx
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.utils import timezone

from controlplane.console.streaming import streamed
from controlplane.tenancy import services as tenancy_services
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import ApiKey
from gateway.contract import SCOPE_INFERENCE

log = logging.getLogger(__name__)

SESSION_KEY = "console.playground"
KEY_LIFETIME = dt.timedelta(hours=1)
# A key this close to its expiry is replaced rather than used for one more chat.
KEY_MARGIN = dt.timedelta(minutes=2)
MAX_PROMPT_CHARS = 20_000
TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=10.0, pool=5.0)
# A new key reaches every gateway process within a second (snapshot pub/sub).
NEW_KEY_WAIT_SECONDS = 2.0


def _stored(request) -> dict:
    return request.session.get(SESSION_KEY, {})


def current_key(request) -> ApiKey | None:
    """The caller's usable playground key in this organization, if there is one."""
    entry = _stored(request).get(str(request.organization.pk))
    if not entry:
        return None
    return (
        ApiKey.objects.filter(
            pk=entry["key_id"],
            organization=request.organization,
            revoked_at=None,
            expires_at__gt=timezone.now() + KEY_MARGIN,
        )
        .select_related("user")
        .first()
    )


def key_for(request) -> tuple[str, bool]:
    """``(secret, created)``: the session's key for this organization, or a new one.
    The service's ``ValidationError``/``PermissionDenied`` pass through."""
    organization, actor = request.organization, request.actor
    entry = _stored(request).get(str(organization.pk))
    if entry and current_key(request) is not None:
        return entry["secret"], False
    key, secret = tenancy_services.create_api_key(
        actor=actor,
        organization=organization,
        name=f"Console playground ({request.user.get_username()})"[:100],
        scopes=[SCOPE_INFERENCE],
        # A platform administrator who is no member gets a service key, as on keys/.
        user=request.user if organization.pk in actor.roles else None,
        expires_at=timezone.now() + KEY_LIFETIME,
    )
    stored = dict(_stored(request))
    stored[str(organization.pk)] = {"key_id": str(key.pk), "secret": secret}
    request.session[SESSION_KEY] = stored
    return secret, True


def revoke_session_keys(request) -> None:
    """Revoke the playground keys this session made (called on sign-out)."""
    stored = _stored(request)
    if not stored or not request.user.is_authenticated:
        return
    ids = [entry["key_id"] for entry in stored.values()]
    for key in ApiKey.objects.filter(pk__in=ids, revoked_at=None):
        try:
            tenancy_services.revoke_api_key(actor=Actor.for_user(request.user), key=key)
        except PermissionDenied:
            # The user lost the role that made the key since: it goes all the same.
            tenancy_services.revoke_api_key(actor=Actor.system("console sign-out"), key=key)
    request.session.pop(SESSION_KEY, None)


# --------------------------------------------------------------------------- relay
def _text(message: str, status: int) -> HttpResponse:
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")


def _error_message(response: httpx.Response) -> str:
    body = response.read()[:4000]
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace").strip() or response.reason_phrase
    return str(message)[:500]


class _Relay:
    """Iterates the text of an OpenAI chat stream (server-sent events); ``close``
    (Django calls it when the response ends, however it ends) frees the connection."""

    def __init__(self, client: httpx.Client, response: httpx.Response) -> None:
        self.client = client
        self.response = response

    def __iter__(self):
        try:
            for line in self.response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("error"):
                    error = event["error"]
                    text = error.get("message") if isinstance(error, dict) else error
                    yield f"\n[The gateway stopped: {text}]"
                    return
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text
        except httpx.HTTPError as exc:
            log.warning("playground stream broke: %s", exc)
            yield "\n[The answer broke off.]"

    def close(self) -> None:
        self.response.close()
        self.client.close()


def relay_chat(request, secret: str, *, model: str, messages: list[dict], fresh_key: bool):
    """POST the chat to the gateway and relay its answer; a refusal is a short text."""
    url = f"{settings.CONSOLE_GATEWAY_URL}/chat/completions"
    body = {"model": model, "messages": messages, "stream": True}
    headers = {"Authorization": f"Bearer {secret}", "Accept": "text/event-stream"}
    client = httpx.Client(timeout=TIMEOUT, follow_redirects=False)
    deadline = time.monotonic() + (NEW_KEY_WAIT_SECONDS if fresh_key else 0)
    try:
        while True:
            outgoing = client.build_request("POST", url, json=body, headers=headers)
            response = client.send(outgoing, stream=True)
            if response.status_code == 401 and time.monotonic() < deadline:
                # A key made a moment ago may not have reached this gateway process yet.
                response.close()
                time.sleep(0.2)
                continue
            break
    except httpx.HTTPError as exc:
        client.close()
        log.warning("playground: gateway %s unreachable: %s", url, exc)
        return _text("The gateway did not answer; try again later.", 502)
    if response.status_code != 200:
        message = _error_message(response)
        response.close()
        client.close()
        status = 429 if response.status_code == 429 else 502
        return _text(f"The gateway refused ({response.status_code}): {message}", status)
    answer = streamed(request, _Relay(client, response), content_type="text/plain; charset=utf-8")
    answer["Cache-Control"] = "no-store"
    answer["X-Accel-Buffering"] = "no"  # a proxy in front must not hold the stream back
    return answer
