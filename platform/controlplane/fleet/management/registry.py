"""Register a model folder that lies on this machine in the catalog, with the sha256
of every file recorded (the commands that build or find packaged models use it)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import CommandError
from django.db import transaction

from controlplane.catalog.models import Model, ModelVersion
from controlplane.catalog.services import create_model, create_version
from controlplane.tenancy.actors import Actor
from workers import artifacts

COMMANDS = Actor.system("manage.py")


@transaction.atomic
def register_local_model(
    *, model_dir: Path, alias: str, version: str, model_fields: dict, version_fields: dict
) -> tuple[ModelVersion, bool]:
    """(version, created). An existing version with the same files is left as it is;
    one with other files is an error (name a new version)."""
    model_dir = Path(model_dir).resolve()
    try:
        manifest = artifacts.build_manifest(model_dir)
    except artifacts.ArtifactError as exc:
        raise CommandError(str(exc)) from None
    if not manifest:
        raise CommandError(f"{model_dir} holds no files")
    model = Model.objects.filter(alias=alias).first()
    if model is None:
        model = create_model(actor=COMMANDS, alias=alias, **model_fields)
    existing = ModelVersion.objects.filter(model=model, version=version).first()
    if existing is not None:
        if existing.file_manifest == manifest and existing.local_path == str(model_dir):
            return existing, False
        raise CommandError(
            f"{alias}@{version} is already registered with other files or another path; "
            "pass --model-version to register these as a new version"
        )
    created = create_version(
        actor=COMMANDS,
        model=model,
        version=version,
        source_type="local",
        local_path=str(model_dir),
        file_manifest=manifest,
        **version_fields,
    )
    return created, True
