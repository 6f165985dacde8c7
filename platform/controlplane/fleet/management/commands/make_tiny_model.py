"""Build the tiny random-weight chat model and register it in the catalog.

    python manage.py make_tiny_model [--out DIR] [--alias tiny-chat] [--model-version v1]

The model is built by the engine virtualenv's Python (it needs torch), then every
file's sha256 is recorded in the catalog entry (a local source).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from controlplane.fleet.management.registry import register_local_model
from workers.engine import paths, tinymodel


class Command(BaseCommand):
    help = "Build the tiny random-weight chat model and register it in the catalog."

    def add_arguments(self, parser):
        parser.add_argument("--out", type=Path, help="Model folder (default: DATA_DIR/models/)")
        parser.add_argument("--alias", default="tiny-chat")
        parser.add_argument("--model-version", dest="model_version", default="v1")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--engine-python", type=Path, help="Default: the engine venv's")

    def handle(self, *args, **options):
        out = (options["out"] or Path(settings.DATA_DIR) / "models" / options["alias"]).resolve()
        engine_python = options["engine_python"] or paths.engine_python_path()
        if not Path(engine_python).exists():
            raise CommandError(
                f"{engine_python} does not exist; install the engine (deploy/install-engine.sh)"
            )
        if not (out / "config.json").is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            result = subprocess.run(
                [
                    str(engine_python),
                    "-m",
                    "workers.engine.tinymodel",
                    str(out),
                    "--seed",
                    str(options["seed"]),
                ],
                cwd=paths.REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if result.returncode != 0 or not (out / "config.json").is_file():
                raise CommandError(
                    f"building the model failed ({result.returncode}): {result.stderr[-2000:]}"
                )
        hidden, layers, vocab = (
            tinymodel.HIDDEN_SIZE,
            tinymodel.NUM_HIDDEN_LAYERS,
            tinymodel.TARGET_VOCAB_SIZE,
        )
        parameters = 2 * vocab * hidden + layers * (
            4 * hidden * hidden + 3 * hidden * tinymodel.INTERMEDIATE_SIZE
        )
        version, created = register_local_model(
            model_dir=out,
            alias=options["alias"],
            version=options["model_version"],
            model_fields={
                "task": "chat",
                "display_name": "Tiny random-weight chat model (tests and demos)",
                "publisher": "local",
                "license_id": "apache-2.0",
                "commercial_use": True,
                "openness": "open-source",
            },
            version_fields={
                "context_length": tinymodel.MAX_POSITION_EMBEDDINGS,
                "parameter_count": parameters,
                "dtype": "bfloat16",
            },
        )
        verb = "registered" if created else "already registered"
        self.stdout.write(
            f"{version.model.alias}@{version.version} {verb}: {out} "
            f"({len(version.file_manifest)} files with sha256)"
        )
