import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from controlplane.quotas.rollup import rebuild


def _moment(value: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"not an ISO 8601 date or date-time: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


class Command(BaseCommand):
    help = (
        "Recompute the usage rollups (hourly, then daily) from the usage ledger: all of "
        "it, or the whole UTC hours in [--since, --until) and the days they touch. Safe "
        "to run while the ledger consumer runs."
    )

    def add_arguments(self, parser):
        parser.add_argument("--since", type=_moment, help="ISO date-time (UTC if no offset)")
        parser.add_argument("--until", type=_moment, help="ISO date-time (UTC if no offset)")

    def handle(self, *args, since, until, **options):
        if since and until and since >= until:
            raise CommandError("--since must be before --until")
        read = rebuild(since=since, until=until)
        self.stdout.write(f"rebuilt the usage rollups from {read} ledger rows")
