import datetime as dt

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import Organization, Team
from controlplane.tenancy.services import create_api_key


class Command(BaseCommand):
    help = "Create an API key and print its secret (shown only this once)."

    def add_arguments(self, parser):
        parser.add_argument("organization", help="Organization slug")
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--scopes", default="inference", help="Comma-separated: inference,manage"
        )
        parser.add_argument("--team", help="Team slug")
        parser.add_argument("--user", help="Username of the key's owner")
        parser.add_argument("--models", default="", help="Comma-separated model aliases")
        parser.add_argument("--expires-in-days", type=int)
        parser.add_argument("--quiet", action="store_true", help="Print only the key (for scripts)")

    def handle(self, *args, **o):
        organization = Organization.objects.filter(slug=o["organization"]).first()
        if organization is None:
            raise CommandError(f"no organization {o['organization']!r}")
        team = None
        if o["team"]:
            team = Team.objects.filter(organization=organization, slug=o["team"]).first()
            if team is None:
                raise CommandError(f"no team {o['team']!r} in {organization.slug}")
        user = None
        if o["user"]:
            user = get_user_model().objects.filter(username=o["user"]).first()
            if user is None:
                raise CommandError(f"no user {o['user']!r}")
        expires_at = None
        if o["expires_in_days"]:
            expires_at = timezone.now() + dt.timedelta(days=o["expires_in_days"])
        try:
            key, secret = create_api_key(
                actor=Actor.system("manage.py create_api_key"),
                organization=organization,
                name=o["name"],
                scopes=[s.strip() for s in o["scopes"].split(",") if s.strip()],
                team=team,
                user=user,
                allowed_models=[m.strip() for m in o["models"].split(",") if m.strip()],
                expires_at=expires_at,
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        if o["quiet"]:
            self.stdout.write(secret)
            return
        self.stdout.write(f"created key {key.name} ({key.pk}) in {organization.slug}")
        self.stdout.write("The key is shown only now; store it safely:")
        self.stdout.write(secret)
