"""Register a node and print the credential its agent signs reports with (shown once).

    python manage.py register_node gpu-07 --pool h100 --address 10.0.0.7 [--label k=v ...]
    python manage.py register_node gpu-07 --secret-file /etc/sap/node.secret  # write it

Give the secret to the node's agent as ``AGENT_NODE_SECRET`` (or a file named by
``AGENT_NODE_SECRET_FILE``). Only an encrypted copy is stored; a lost secret is
replaced with ``rotate_node_credential``.
"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from controlplane.fleet.models import Pool
from controlplane.fleet.node_auth import register_node, write_secret_file
from controlplane.tenancy.actors import Actor


def print_secret(command: BaseCommand, node_name: str, secret: str, secret_file) -> None:
    if secret_file:
        write_secret_file(Path(secret_file), secret)
        command.stdout.write(f"the credential of node {node_name} is in {secret_file} (mode 0600)")
        return
    command.stdout.write(f"AGENT_NODE_SECRET={secret}")
    command.stderr.write("This secret is shown only now; give it to the node's agent.")


class Command(BaseCommand):
    help = "Register a node of the fleet and issue its agent's credential."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--pool", required=True)
        parser.add_argument("--address", required=True, help="Where the gateway reaches it")
        parser.add_argument(
            "--address-network",
            default="",
            help="CIDR within which the node's own signed reports may move its address "
            "(a Kubernetes node's pod network: agent pods get a new IP on restart)",
        )
        parser.add_argument("--label", action="append", default=[], help="key=value")
        parser.add_argument("--secret-file", help="Write the secret here instead of printing it")

    def handle(self, *args, **options):
        pool = Pool.objects.filter(name=options["pool"]).first()
        if pool is None:
            raise CommandError(f"no pool named {options['pool']!r}")
        labels = {}
        for item in options["label"]:
            key, sep, value = item.partition("=")
            if not sep:
                raise CommandError(f"--label {item!r} is not key=value")
            labels[key] = value
        try:
            node, secret = register_node(
                actor=Actor.system("register_node command"),
                name=options["name"],
                pool=pool,
                address=options["address"],
                address_network=options["address_network"],
                labels=labels,
            )
        except ValidationError as error:
            raise CommandError(
                "; ".join(f"{k}: {' '.join(v)}" for k, v in error.message_dict.items())
            ) from None
        print_secret(self, node.name, secret, options["secret_file"])
