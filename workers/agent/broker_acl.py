"""The Redis ACL user of one node agent: its own queue, and pushing reports, nothing else.

What the agent does on the broker (measured with MONITOR on a full agent cycle: start,
desired state received, replicas reported, stop):

- consume its queue: BRPOP on ``agent.<node>`` and its priority lists
  ``agent.<node>\\x06\\x16<n>``; declaring it at start adds its binding to
  ``_kombu.binding.agent.<node>`` and ``_kombu.binding_permanent.agent.<node>`` (SADD)
  and counts its lists (LLEN); a message taken but not processed at shutdown is pushed
  back (LPUSH/RPUSH);
- publish reports: LPUSH on ``fleet`` through the default exchange, without declaring
  the queue (``celery_app.send_node_report``), so it needs no binding table of the
  control plane's;
- SELECT, PING, MULTI/EXEC, connection set-up (HELLO, CLIENT SETNAME).

Ack emulation is off for the agent (``celery_app``), so it never touches kombu's shared
``unacked``/``unacked_index``/``unacked_mutex`` keys, which hold every consumer's
in-flight messages (other nodes' desired states, with their replica keys). No pub/sub
(remote control, events and gossip are off). The user can therefore not read the
gateway snapshot (``sap:snapshot``), the limit counters (``sap:lim:*``), the fleet
queue or any other node's queue.

What remains: ``fleet`` accepts any message from any agent. A report signed with another
node's secret cannot be forged (the control plane checks the signature), but an agent
can push other Celery tasks there; the control plane's tasks take ids and are
idempotent. Redis ACLs need Redis 7 (selectors).
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from workers import protocol

#: kombu's separator between a queue's name and its priority (``Channel.sep``).
PRIORITY_SEPARATOR = "\x06\x16"
USER_PREFIX = "sap-agent-"
_ACCOUNT_COMMANDS = (
    "+select",
    "+ping",
    "+echo",
    "+multi",
    "+exec",
    "+discard",
    "+hello",
    "+auth",
    "+quit",
    "+reset",
    "+client|setname",
    "+client|id",
)
_OWN_QUEUE_COMMANDS = ("+brpop", "+lpush", "+rpush", "+llen", "+sadd", "+smembers", "+srem")


def acl_username(node_name: str) -> str:
    return USER_PREFIX + node_name


def agent_key_patterns(node_name: str) -> list[str]:
    """The keys of the node's own queue (node names hold no glob characters)."""
    queue = protocol.agent_queue(node_name)
    return [
        queue,
        queue + PRIORITY_SEPARATOR + "*",
        f"_kombu.binding.{queue}",
        f"_kombu.binding_permanent.{queue}",
    ]


def agent_acl_rules(node_name: str, password: str) -> list[str]:
    """ACL SETUSER rules: reset everything, then grant the agent's own keys, and LPUSH
    alone on the fleet queue (a selector: it cannot read or pop that queue)."""
    rules = ["reset", "on", f">{password}", "resetchannels", "-@all"]
    rules += list(_ACCOUNT_COMMANDS) + list(_OWN_QUEUE_COMMANDS)
    rules += [f"~{pattern}" for pattern in agent_key_patterns(node_name)]
    rules.append(f"(~{protocol.FLEET_QUEUE} +lpush)")
    return rules


def ensure_agent_user(client: Any, node_name: str, password: str | None = None) -> tuple[str, str]:
    """Create or replace the node's ACL user (a new password unless one is given);
    returns (username, password). ``client`` is a redis.Redis with ACL rights."""
    password = password or secrets.token_urlsafe(32)
    username = acl_username(node_name)
    client.execute_command("ACL", "SETUSER", username, *agent_acl_rules(node_name, password))
    return username, password


def delete_agent_user(client: Any, node_name: str) -> bool:
    return bool(client.execute_command("ACL", "DELUSER", acl_username(node_name)))


def agent_broker_url(broker_url: str, username: str, password: str) -> str:
    """``broker_url`` (the control plane's) with the agent's user and password."""
    parts = urlsplit(broker_url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("the agent's broker URL needs a redis:// or rediss:// broker")
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
