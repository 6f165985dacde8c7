"""Policy: validate a request body and decide what may go upstream.

Checks, in order: JSON shape and parameters (400, naming the parameter), the model
exists (404), the key and organization may use it (403), its routes may be used by the
organization (external upstreams need ``allow_external``; a replica serves only the
organization owning its deployment, or those a platform deployment is shared with:
none left is 503), and the caps (``max_tokens``,
``n``, embedding inputs). The result is a ``Plan`` with the worst-case token reservation
the limits will hold before the request goes upstream.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import contract
from gateway.auth import Principal
from gateway.errors import GatewayError, bad_request, invalid_param
from gateway.settings import Settings
from gateway.snapshot import CompiledSnapshot

ENDPOINT_TASKS = {
    "chat.completions": ("chat",),
    "completions": ("completion", "chat"),
    "embeddings": ("embedding",),
}
TOKEN_LIMIT_FIELDS = ("tpm", "daily_tokens", "monthly_tokens", "max_tokens")


@dataclass(slots=True)
class Plan:
    endpoint: str
    body: dict[str, Any]
    alias: str
    model: contract.ModelEntry
    #: The routes this organization may use: its own capacity (its deployments'
    #: replicas) first, then the platform's shared with it.
    routes: list[contract.Route]
    stream: bool
    #: The client asked for the usage chunk of a stream itself.
    client_wants_usage: bool
    #: Tokens reserved against the limits before going upstream (prompt + completion).
    reserve_tokens: int
    prompt_estimate: int
    #: ``max_tokens`` the gateway adds upstream when the client omitted it and a token
    #: limit applies (``None``: leave the body as the client sent it).
    inject_max_tokens: int | None
    affinity_key: str | None
    #: How many of ``routes`` (the first ones) are the organization's own; the rest are
    #: shared platform capacity, used when none of its own is healthy.
    own_routes: int = 0
    #: The most tokens the request can cost, whatever its prompt tokenizes to: the
    #: model's context length per prompt (no upstream accepts a longer one; the body's
    #: size in bytes when the catalog has no context length) plus the completion bound.
    #: Token budgets hold this much while the request is far from them.
    worst_tokens: int = 0
    #: Completion tokens the request may generate in all (a lower bound of its cost, less
    #: its prompt).
    completion_tokens: int = 0
    #: The body's size in bytes: the prompt bound when no replica can count it.
    body_bytes: int = 0


def split_by_owner(
    routes: list[contract.Route], org_id: str
) -> tuple[list[contract.Route], list[contract.Route]]:
    """``(own, shared)``: the routes of ``org_id``'s deployments, and the platform routes
    shared with it. Every other route (another organization's capacity) is in neither."""
    own: list[contract.Route] = []
    shared: list[contract.Route] = []
    for route in routes:
        owner = route.get("owner")
        orgs = route.get("orgs")
        if orgs is not None and org_id not in orgs:
            continue
        if owner is None:
            shared.append(route)
        elif owner == org_id:
            own.append(route)
    return own, shared


def level_limits(
    principal: Principal, alias: str | None = None
) -> list[tuple[str, str, contract.Limits, str | None]]:
    """``(level, subject id, limits, model)`` for the key, its team and its organization.

    ``model`` is ``None`` for a subject's limits over all models. With ``alias``, each
    level is followed by the same subject for that model alone (its limits for that
    alias, possibly none), so that per-model counters are kept and per-model limits are
    checked in the same admission as the others: the tightest applicable limit wins.
    """
    entries: list[tuple[str, str, Any]] = [("key", principal.key_id, principal.key)]
    if principal.team_id and principal.team is not None:
        entries.append(("team", principal.team_id, principal.team))
    entries.append(("org", principal.org_id, principal.org))
    levels: list[tuple[str, str, contract.Limits, str | None]] = []
    for level, subject_id, entry in entries:
        levels.append((level, subject_id, entry.get("limits") or {}, None))
        if alias is not None:
            per_model = (entry.get("model_limits") or {}).get(alias) or {}
            levels.append((level, subject_id, per_model, alias))
    return levels


def tightest(levels: list[tuple[str, str, contract.Limits, str | None]], name: str) -> int | None:
    values = [lim.get(name) for _, _, lim, _ in levels]
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request(
            "We could not parse the JSON body of your request. The body must be valid JSON.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return body


def _check_optional_number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    if name in body and body[name] is not None:
        value = body[name]
        if not _is_number(value) or not (low <= value <= high):
            raise invalid_param(name, f"'{name}' must be a number between {low} and {high}.")


def _validate_chat(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_param("messages", "'messages' must be a non-empty array.")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise invalid_param(
                f"messages[{index}]", f"'messages[{index}]' must be an object with a 'role'."
            )
        content = message.get("content")
        if not (
            content is None
            or isinstance(content, str)
            or (isinstance(content, list) and all(isinstance(p, dict) for p in content))
        ):
            raise invalid_param(
                f"messages[{index}].content",
                f"'messages[{index}].content' must be a string or an array of content parts.",
            )


def _validate_completion(body: dict[str, Any]) -> None:
    prompt = body.get("prompt")
    ok = isinstance(prompt, str) or (
        isinstance(prompt, list)
        and prompt
        and (
            all(isinstance(p, str) for p in prompt)
            or all(_is_int(p) for p in prompt)
            or all(isinstance(p, list) and all(_is_int(t) for t in p) for p in prompt)
        )
    )
    if not ok:
        raise invalid_param(
            "prompt", "'prompt' must be a string, an array of strings or of token ids."
        )


def _validate_embedding(body: dict[str, Any], settings: Settings) -> None:
    items = body.get("input")
    if isinstance(items, str):
        count = 1
    elif isinstance(items, list) and items:
        if all(isinstance(i, str) for i in items) or all(
            isinstance(i, list) and all(_is_int(t) for t in i) for i in items
        ):
            count = len(items)
        elif all(_is_int(i) for i in items):
            count = 1
        else:
            raise invalid_param(
                "input", "'input' must be a string, an array of strings or of token arrays."
            )
    else:
        raise invalid_param(
            "input", "'input' must be a non-empty string or array.", code="invalid_value"
        )
    if count > settings.max_embedding_inputs:
        raise invalid_param(
            "input",
            f"'input' has {count} items; at most {settings.max_embedding_inputs} are allowed.",
            code="too_many_inputs",
        )


def _affinity_key(endpoint: str, body: dict[str, Any], prefix_chars: int) -> str | None:
    user = body.get("user")
    if isinstance(user, str) and user:
        return "u:" + user
    if endpoint == "chat.completions":
        parts: list[str] = []
        size = 0
        for message in body.get("messages") or ():
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                # Only the text parts count (images and other parts do not); a part
                # of any other shape is skipped, never a crash.
                content = "".join(
                    p["text"]
                    for p in content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
            if isinstance(content, str):
                parts.append(content)
                size += len(content)
            if size >= prefix_chars:
                break
        text = "\x1e".join(parts)
    elif endpoint == "completions":
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()
    else:
        items = body.get("input")
        text = items if isinstance(items, str) else orjson.dumps(items).decode()
    return "p:" + text[:prefix_chars] if text else None


def plan_request(
    endpoint: str,
    raw_body: bytes,
    principal: Principal,
    snapshot: CompiledSnapshot,
    settings: Settings,
    *,
    body: dict[str, Any] | None = None,
) -> Plan:
    if body is None:
        body = parse_body(raw_body)
    alias = body.get("model")
    if not isinstance(alias, str) or not alias:
        raise invalid_param("model", "'model' is required and must be a string.", "missing")

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid_param("stream", "'stream' must be a boolean.")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise invalid_param("stream_options", "'stream_options' must be an object.")
    client_wants_usage = bool(stream_options and stream_options.get("include_usage") is True)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid_param("user", "'user' must be a string.")

    if endpoint == "chat.completions":
        _validate_chat(body)
    elif endpoint == "completions":
        _validate_completion(body)
    else:
        _validate_embedding(body, settings)
    _check_optional_number(body, "temperature", 0.0, 2.0)
    _check_optional_number(body, "top_p", 0.0, 1.0)

    n = body.get("n", 1)
    if n is None:
        n = 1
    if not _is_int(n) or n < 1:
        raise invalid_param("n", "'n' must be a positive integer.")
    if n > settings.max_n:
        raise invalid_param("n", f"'n' must be at most {settings.max_n}.", "n_too_large")
    best_of = body.get("best_of")
    if best_of is not None and (not _is_int(best_of) or not 1 <= best_of <= settings.max_n):
        raise invalid_param("best_of", f"'best_of' must be an integer from 1 to {settings.max_n}.")
    samples = max(n, best_of or 1)

    # The model: exists (404), allowed (403), usable routes (403/503).
    model = snapshot.models.get(alias)
    if model is None:
        raise GatewayError(
            404, f"The model '{alias}' does not exist.", code="model_not_found", param="model"
        )
    if alias not in snapshot.allowed_models(principal.key):
        raise GatewayError(
            403,
            f"This API key may not use the model '{alias}'.",
            code="model_not_allowed",
            param="model",
        )
    if model.get("task") not in ENDPOINT_TASKS[endpoint]:
        raise invalid_param(
            "model",
            f"The model '{alias}' is a {model.get('task')} model and does not serve "
            f"/v1/{endpoint.replace('.', '/')}.",
            "model_not_supported",
        )
    routes = list(model.get("routes") or ())
    if not principal.org.get("allow_external"):
        internal = [r for r in routes if not r.get("external")]
        if routes and not internal:
            raise GatewayError(
                403,
                f"The model '{alias}' is served by an external provider, which your "
                "organization's policy does not allow.",
                code="external_not_allowed",
                param="model",
            )
        routes = internal
    own, shared = split_by_owner(routes, principal.org_id)
    # An autoscaled model with no ready replica: the gateway holds the request
    # (gateway.coldstart) rather than refusing it.
    if not own and not shared and not model.get("cold_start"):
        raise GatewayError(
            503,
            f"Your organization has no deployment of the model '{alias}' with a ready "
            "replica, and no platform deployment of it is shared with your organization.",
            code="no_route",
        )

    levels = level_limits(principal, alias)
    prompt_estimate = max(1, math.ceil(len(raw_body) / settings.chars_per_token))
    inject: int | None = None
    prompts = prompt_count(endpoint, body)
    context = model.get("context_length")
    prompt_bound = prompts * context if context else len(raw_body)
    completion_total = 0
    if endpoint == "embeddings":
        reserve = prompt_estimate
    else:
        cap = settings.max_tokens_cap
        level_cap = tightest(levels, "max_tokens")
        if level_cap is not None:
            cap = min(cap, level_cap)
        requested: int | None = None
        param = "max_tokens"
        for name in ("max_completion_tokens", "max_tokens"):
            value = body.get(name)
            if value is not None:
                if not _is_int(value) or value < 1:
                    raise invalid_param(name, f"'{name}' must be a positive integer.")
                if requested is None or value < requested:
                    requested, param = value, name
        if requested is not None:
            if requested > cap:
                raise invalid_param(
                    param,
                    f"'{param}' is {requested}; at most {cap} is allowed for this key.",
                    "max_tokens_too_large",
                )
            completion = requested
        else:
            completion = min(cap, settings.default_max_tokens)
            if context:
                completion = min(completion, context)
            if any(tightest(levels, f) is not None for f in TOKEN_LIMIT_FIELDS):
                inject = completion
        # Each prompt of a batched completion generates its own answers.
        completion_total = completion * samples * prompts
        reserve = prompt_estimate + completion_total

    return Plan(
        endpoint=endpoint,
        body=body,
        alias=alias,
        model=model,
        routes=own + shared,
        own_routes=len(own),
        stream=stream,
        client_wants_usage=client_wants_usage,
        reserve_tokens=reserve,
        prompt_estimate=prompt_estimate,
        worst_tokens=max(reserve, prompt_bound + completion_total),
        completion_tokens=completion_total,
        body_bytes=len(raw_body),
        inject_max_tokens=inject,
        affinity_key=None,
    )


def prompt_count(endpoint: str, body: dict[str, Any]) -> int:
    """How many prompts the request holds (validated already): a batched completion or
    a list of embedding inputs holds several, each up to the context length."""
    if endpoint == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not _is_int(prompt[0]):
            return len(prompt)
        return 1
    if endpoint == "embeddings":
        items = body.get("input")
        if isinstance(items, list) and items and not _is_int(items[0]):
            return len(items)
    return 1


def affinity_key_for(plan: Plan, prefix_chars: int) -> str | None:
    return _affinity_key(plan.endpoint, plan.body, prefix_chars)


def _prompt_text(endpoint: str, body: dict[str, Any]) -> str:
    """The prompt as the engine will see it, up to its template: each chat message's
    role and text (text parts only), or the completion prompt."""
    if endpoint == "chat.completions":
        pieces: list[str] = []
        for message in body.get("messages") or ():
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(
                    p["text"]
                    for p in content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
            role = message.get("role")
            pieces.append(
                f"{role if isinstance(role, str) else ''}\x1f"
                f"{content if isinstance(content, str) else ''}\x1e"
            )
        return "".join(pieces)
    if endpoint == "completions":
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()
    return ""  # embeddings keep no prefix cache


def prompt_blocks(plan: Plan, block_chars: int, max_blocks: int) -> tuple[int, ...]:
    """Chained hashes of the prompt's whole ``block_chars`` blocks (at most
    ``max_blocks``), seeded with the model: equal block ``i`` means equal text up to
    the end of block ``i``, the way engines key their prefix caches."""
    text = _prompt_text(plan.endpoint, plan.body)
    count = min(len(text) // block_chars, max_blocks)
    blocks: list[int] = []
    previous = plan.alias.encode("utf-8", "surrogatepass")
    for i in range(count):
        chunk = text[i * block_chars : (i + 1) * block_chars]
        previous = hashlib.blake2b(
            previous + chunk.encode("utf-8", "surrogatepass"), digest_size=8
        ).digest()
        blocks.append(int.from_bytes(previous, "big"))
    return tuple(blocks)
