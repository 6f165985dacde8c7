from django.conf import settings
from django.db import migrations, models


def restricted_by_creator(apps, schema_editor):
    ApiKey = apps.get_model("tenancy", "ApiKey")
    ApiKey.objects.filter(restricted_by=None).update(restricted_by=models.F("created_by"))


class Migration(migrations.Migration):
    dependencies = [
        ("tenancy", "0002_team_membership_ordering"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="restricted_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AlterField(
            model_name="apikey",
            name="user",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=models.deletion.PROTECT,
                related_name="api_keys",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.RunPython(restricted_by_creator, migrations.RunPython.noop),
    ]
