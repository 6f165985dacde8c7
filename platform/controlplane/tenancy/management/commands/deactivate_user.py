from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from controlplane.tenancy.actors import Actor
from controlplane.tenancy.services import deactivate_user


class Command(BaseCommand):
    help = (
        "Deactivate a user: they can no longer sign in, and every key that acts for them "
        "(and every service key they created) is revoked at once, gateways included."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, username, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        try:
            revoked = deactivate_user(actor=Actor.system("manage.py deactivate_user"), user=user)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"deactivated {username}; revoked {len(revoked)} key(s)")
