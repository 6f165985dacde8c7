import os
import secrets

from django.core.management.base import BaseCommand

from controlplane.tenancy.actors import Actor
from controlplane.tenancy.services import ensure_platform_admin


class Command(BaseCommand):
    help = (
        "Create the first platform administrator if there is none. The password comes "
        "from PLATFORM_ADMIN_PASSWORD or is generated and printed once."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("PLATFORM_ADMIN_USER", "admin"))
        parser.add_argument("--email", default=os.environ.get("PLATFORM_ADMIN_EMAIL", ""))

    def handle(self, *args, username, email, **options):
        password = os.environ.get("PLATFORM_ADMIN_PASSWORD") or ""
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        user, created = ensure_platform_admin(
            actor=Actor.system("manage.py ensure_admin"),
            username=username,
            email=email,
            password=password,
        )
        if not created:
            self.stdout.write(f"platform administrator exists: {user.username}")
        elif generated:
            self.stdout.write(
                f"created platform administrator {user.username} with password {password} "
                "(shown once; change it in the console)"
            )
        else:
            self.stdout.write(f"created platform administrator {user.username}")
