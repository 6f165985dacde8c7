"""Issue a new credential for a node's agent; the previous one stops working at once.

python manage.py rotate_node_credential gpu-07 [--secret-file PATH]
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from controlplane.fleet.management.commands.register_node import print_secret
from controlplane.fleet.models import Node
from controlplane.fleet.node_auth import rotate_node_credential
from controlplane.tenancy.actors import Actor


class Command(BaseCommand):
    help = "Rotate the credential a node's agent signs its reports with."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--secret-file", help="Write the secret here instead of printing it")

    def handle(self, *args, **options):
        node = Node.objects.filter(name=options["name"]).first()
        if node is None:
            raise CommandError(f"no node named {options['name']!r}")
        secret = rotate_node_credential(actor=Actor.system("rotate_node_credential"), node=node)
        print_secret(self, node.name, secret, options["secret_file"])
