from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from controlplane.tenancy.actors import Actor
from controlplane.tenancy.services import create_organization


class Command(BaseCommand):
    help = "Create an organization (optionally with its first owner)."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", help="Display name (default: the slug)")
        parser.add_argument("--owner", help="Username of an existing user to make owner")

    def handle(self, *args, slug, name, owner, **options):
        owner_user = None
        if owner:
            owner_user = get_user_model().objects.filter(username=owner).first()
            if owner_user is None:
                raise CommandError(f"no user named {owner!r}")
        try:
            organization = create_organization(
                actor=Actor.system("manage.py create_organization"),
                slug=slug,
                name=name or slug,
                owner=owner_user,
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"created organization {organization.slug} ({organization.pk})")
