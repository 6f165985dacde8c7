"""Print this machine's inventory, as the node agent reports it, as JSON.

    python -m workers.agent.nvml_probe            # or: python workers/agent/nvml_probe.py

Exit status 0 in all cases where an inventory could be built (a CPU-only machine prints
its CPU pseudo-device); `--require-gpu` exits 1 when NVML found no GPU, so the probe can
check a GPU host's driver and nvidia-ml-py install.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `workers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from workers.agent.inventory import discover_inventory, load_nvml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--require-gpu", action="store_true", help="exit 1 without GPUs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    nvml = load_nvml()
    inventory = discover_inventory(nvml)
    output = {
        "nvml_module": getattr(nvml, "__file__", None) if nvml else None,
        **_nvml_status(nvml),
        "inventory": inventory,
    }
    print(json.dumps(output, indent=2))
    if args.require_gpu and inventory["kind"] != "gpu":
        print("no GPU found through NVML", file=sys.stderr)
        return 1
    return 0


def _nvml_status(nvml) -> dict[str, str | None]:
    """The driver version, or why NVML could not start."""
    if nvml is None:
        return {"driver_version": None, "nvml_error": "pynvml (nvidia-ml-py) is not installed"}
    try:
        nvml.nvmlInit()
    except Exception as error:
        return {"driver_version": None, "nvml_error": f"{type(error).__name__}: {error}"}
    try:
        version = nvml.nvmlSystemGetDriverVersion()
        version = version.decode() if isinstance(version, bytes) else str(version)
        return {"driver_version": version, "nvml_error": None}
    except Exception as error:
        return {"driver_version": None, "nvml_error": f"{type(error).__name__}: {error}"}
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


if __name__ == "__main__":
    sys.exit(main())
