"""Exact prompt counts, asked of the serving replica when a request is near a budget.

vLLM's ``POST /tokenize`` renders a chat request with the model's own template (or a
completion or embedding prompt with the same special tokens) and returns ``count``: the
number the replica reports as ``prompt_tokens`` when it serves the request. Only used on
the slow path (a token budget close to its limit), so it adds no latency elsewhere.
Prompts given as token ids are counted here, without a call.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from gateway import contract
from gateway.policy import Plan
from gateway.upstream import UpstreamClient, UpstreamError

log = logging.getLogger("gateway.tokencount")

#: Replicas tried, in the plan's order (own capacity first), before giving up.
_MAX_ROUTES = 2


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _requests(plan: Plan, served_model: str) -> tuple[list[dict[str, Any]], int]:
    """The ``/tokenize`` bodies to send, and the tokens already known (token-id prompts)."""
    body = plan.body
    if plan.endpoint == "chat.completions":
        request: dict[str, Any] = {
            "model": served_model,
            "messages": body["messages"],
            "add_generation_prompt": True,
        }
        for name in ("tools", "chat_template_kwargs"):
            if body.get(name) is not None:
                request[name] = body[name]
        return [request], 0
    items = body.get("prompt" if plan.endpoint == "completions" else "input")
    if isinstance(items, str):
        items = [items]
    elif isinstance(items, list) and items and _is_int(items[0]):
        return [], len(items)  # one prompt of token ids
    known = 0
    requests: list[dict[str, Any]] = []
    for item in items or ():
        if isinstance(item, list):
            known += len(item)
        else:
            requests.append({"model": served_model, "prompt": item})
    return requests, known


async def _count_one(client: UpstreamClient, route: contract.Route, request: dict) -> int:
    headers = [(b"content-type", b"application/json")]
    if route.get("api_key"):
        headers.append((b"authorization", b"Bearer " + route["api_key"].encode()))
    response = await client.post(route["url"], "/tokenize", orjson.dumps(request), headers)
    data = await response.read()
    if response.status != 200:
        raise UpstreamError("status", f"HTTP {response.status} from /tokenize")
    count = orjson.loads(data).get("count")
    if not _is_int(count) or count < 0:
        raise UpstreamError("status", "/tokenize answered without a count")
    return count


async def count_prompt(client: UpstreamClient, plan: Plan) -> int | None:
    """The prompt tokens of ``plan`` as its replica counts them; ``None`` if no replica
    of it could count (none internal, or none answered)."""
    requests, known = _requests(plan, plan.alias)
    if not requests:
        return known
    routes = [r for r in plan.routes if not r.get("external")][:_MAX_ROUTES]
    for route in routes:
        served = [dict(r, model=route["model"]) for r in requests]
        try:
            counts = await asyncio.gather(*(_count_one(client, route, r) for r in served))
        except (UpstreamError, OSError, ValueError) as exc:
            log.info("route %s could not count a prompt: %s", route["id"], exc)
            continue
        return known + sum(counts)
    return None
