import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from controlplane.audit.chain import verify_chain
from controlplane.audit.checkpoints import check_checkpoint, load_private_key, stored_checkpoints


class Command(BaseCommand):
    help = (
        "Walk the audit chain and name the first bad sequence number; check it against the "
        "signed checkpoints (every stored one, the latest included, and any given with "
        "--checkpoint). The public key is that of AUDIT_SIGNING_KEY unless --public-key."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--checkpoint",
            action="append",
            default=[],
            help="A checkpoint JSON file kept outside the database (repeatable)",
        )
        parser.add_argument(
            "--public-key",
            help="Ed25519 public key (PEM); default: that of AUDIT_SIGNING_KEY if set",
        )

    def handle(self, *args, checkpoint, public_key, **options):
        result = verify_chain()
        if not result.ok:
            raise CommandError(
                f"audit chain broken at sequence {result.first_bad_seq}: {result.reason}"
            )
        key = self._public_key(public_key)
        files = [json.loads(Path(path).read_text()) for path in checkpoint]
        if files and key is None:
            raise CommandError("--checkpoint needs --public-key or AUDIT_SIGNING_KEY")
        checkpoints = [*stored_checkpoints(), *files] if key is not None else []
        for data in checkpoints:
            problem = check_checkpoint(data, key)
            if problem is not None:
                raise CommandError(
                    f"audit chain broken at sequence {problem.seq}: {problem.reason}"
                )
        if key is None:
            note = "; checkpoints not checked (no public key)"
        elif not checkpoints:
            note = "; no signed checkpoint yet (the audit.checkpoint task writes them)"
        else:
            latest = max(int(c["seq"]) for c in checkpoints)
            note = (
                f"; {len(checkpoints)} signed checkpoint(s) hold, the latest at sequence {latest}"
            )
        self.stdout.write(
            f"audit chain OK: {result.checked} events, head {result.head_seq} "
            f"{result.head_hash[:16]}{note}"
        )

    def _public_key(self, path):
        if path:
            return serialization.load_pem_public_key(Path(path).read_bytes())
        if settings.AUDIT_SIGNING_KEY:
            return load_private_key().public_key()
        return None
