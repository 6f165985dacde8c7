import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from controlplane.env import env_str
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.services import ensure_platform_admin


class Command(BaseCommand):
    help = (
        "Create the first platform administrator if there is none. The password comes "
        "from PLATFORM_ADMIN_PASSWORD (or the file named by PLATFORM_ADMIN_PASSWORD_FILE); "
        "without one it is generated and printed once, unless --require-password is given."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default=env_str("PLATFORM_ADMIN_USER") or "admin")
        parser.add_argument("--email", default=env_str("PLATFORM_ADMIN_EMAIL") or "")
        parser.add_argument(
            "--require-password",
            action="store_true",
            help="Fail instead of generating a password (a printed one would end up in "
            "logs, such as a Kubernetes Job's)",
        )

    def handle(self, *args, username, email, require_password, **options):
        password = env_str("PLATFORM_ADMIN_PASSWORD") or ""
        generated = not password
        if generated:
            if (
                require_password
                and not get_user_model().objects.filter(is_superuser=True, is_active=True).exists()
            ):
                raise CommandError(
                    "PLATFORM_ADMIN_PASSWORD (or PLATFORM_ADMIN_PASSWORD_FILE) is not set and "
                    "--require-password forbids generating one"
                )
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
