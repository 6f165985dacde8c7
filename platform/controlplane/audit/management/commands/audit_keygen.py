from cryptography.hazmat.primitives import serialization
from django.core.management.base import BaseCommand

from controlplane.audit.checkpoints import generate_private_key_pem, load_private_key


class Command(BaseCommand):
    help = (
        "Print a new Ed25519 private key for AUDIT_SIGNING_KEY(_FILE) and its public key. "
        "Keep the private key out of the database and its backups."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--public-only", action="store_true", help="Public key of the configured key"
        )

    def handle(self, *args, public_only, **options):
        private_pem = None if public_only else generate_private_key_pem()
        key = load_private_key(private_pem)
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if private_pem:
            self.stdout.write(private_pem)
        self.stdout.write(public_pem.decode())
