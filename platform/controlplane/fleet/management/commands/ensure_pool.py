"""Create node pools that do not exist yet; leave existing ones as they are.

    python manage.py ensure_pool h100 [a10 ...] [--description TEXT]

Deployments run it before node agents start (the Helm chart's migration Job runs it
for each agent pool): the control plane drops reports that name a pool it does not
know, so the pool must exist before the first agent of it reports.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from controlplane.fleet.models import Pool
from controlplane.fleet.services import create_pool
from controlplane.tenancy.actors import Actor


class Command(BaseCommand):
    help = "Create the named node pools unless they exist (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="+", metavar="NAME")
        parser.add_argument("--description", default="", help="For pools created now")

    def handle(self, *args, names, description, **options):
        actor = Actor.system("manage.py ensure_pool")
        for name in names:
            if Pool.objects.filter(name=name).exists():
                self.stdout.write(f"pool exists: {name}")
                continue
            try:
                create_pool(actor=actor, name=name, description=description)
            except ValidationError as exc:
                detail = "; ".join(
                    f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items()
                )
                raise CommandError(f"pool {name!r} not created: {detail}") from exc
            self.stdout.write(f"created pool {name}")
