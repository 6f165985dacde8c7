from django.core.management.base import BaseCommand

from controlplane.quotas.ledger import LedgerConsumer
from controlplane.redis import get_redis


class Command(BaseCommand):
    help = "Write gateway usage events from the Redis stream into the usage ledger."

    def add_arguments(self, parser):
        parser.add_argument("--name", help="Consumer name (default: host-pid)")
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument("--once", action="store_true", help="Drain what is there, then exit")

    def handle(self, *args, name, batch_size, once, **options):
        consumer = LedgerConsumer(get_redis(), name=name, batch_size=batch_size)
        if once:
            total = 0
            while (result := consumer.run_once(block=False)).read:
                total += result.read
            self.stdout.write(f"recorded {total} usage events")
            return
        consumer.run_forever()
