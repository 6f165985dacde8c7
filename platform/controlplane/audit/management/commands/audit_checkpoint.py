from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from controlplane.audit.checkpoints import checkpoint_to_json, create_checkpoint


class Command(BaseCommand):
    help = (
        "Sign the audit chain's current head with AUDIT_SIGNING_KEY, store the checkpoint "
        "and print it as JSON (keep a copy outside the database)."
    )

    def handle(self, *args, **options):
        try:
            checkpoint = create_checkpoint()
        except (ImproperlyConfigured, ValueError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(checkpoint_to_json(checkpoint))
