"""Create or update a node agent's Redis ACL user and print the broker URL to give it.

    python manage.py node_redis_user gpu-07            # a new password each time
    python manage.py node_redis_user gpu-07 --delete

The user may consume only the node's own queue and push reports onto the fleet queue
(``workers/agent/broker_acl.py``); it cannot read the gateway snapshot, the limit
counters, the fleet queue or another node's queue. The command connects with the
control plane's broker credentials, which need the ACL rights. Redis keeps ACL users in
memory: with an ``aclfile`` configured the command saves them (ACL SAVE); otherwise
run it again after a Redis restart.
"""

from __future__ import annotations

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from controlplane.redis import redis_url
from workers.agent import broker_acl
from workers.agent.settings import NODE_NAME_RE


class Command(BaseCommand):
    help = "Create or update the Redis ACL user of a node's agent; print its broker URL."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--delete", action="store_true", help="Remove the user instead")

    def handle(self, *args, **options):
        name = options["name"]
        if not NODE_NAME_RE.match(name):
            raise CommandError(f"{name!r} is not a node name")
        url = settings.CELERY_BROKER_URL or redis_url()
        client = redis.Redis.from_url(url)
        try:
            if options["delete"]:
                removed = broker_acl.delete_agent_user(client, name)
                self.stdout.write(f"{'removed' if removed else 'no'} Redis user of node {name}")
                return
            username, password = broker_acl.ensure_agent_user(client, name)
            try:
                agent_url = broker_acl.agent_broker_url(url, username, password)
            except ValueError as error:
                raise CommandError(str(error)) from None
            try:
                client.execute_command("ACL", "SAVE")
            except redis.ResponseError:
                self.stderr.write("Redis has no aclfile: the user lasts until Redis restarts.")
        except redis.RedisError as error:
            raise CommandError(f"Redis refused: {error}") from None
        finally:
            client.close()
        self.stdout.write(f"AGENT_BROKER_URL={agent_url}")
