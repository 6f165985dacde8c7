"""What this node has to offer: GPUs through NVML, or one CPU pseudo-device.

NVML comes from the `pynvml` module of the nvidia-ml-py package, which only wraps
`libnvidia-ml.so` (shipped with the NVIDIA driver). When the module or the library is
missing, or NVML sees no device, the node is CPU-only and reports ONE pseudo-device
named "cpu" sized from host memory, so the control plane's scheduler handles both kinds
of node with the same code.

`discover_inventory(nvml=...)` takes the NVML module as an argument so the tests can
pass a fake one.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from workers.protocol import GpuInfo, Inventory

log = logging.getLogger(__name__)

MIB = 1024 * 1024
CPU_DEVICE_NAME = "cpu"
CPU_DEVICE_UUID = "cpu-0"


def load_nvml() -> ModuleType | None:
    """The `pynvml` module, or None when nvidia-ml-py is not installed."""
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def discover_inventory(
    nvml: Any | None = None, *, meminfo_path: Path = Path("/proc/meminfo")
) -> Inventory:
    """The node's inventory; `nvml` defaults to the installed `pynvml` module."""
    nvml = load_nvml() if nvml is None else nvml
    cpu_count = _cpu_count()
    memory_total_mib, memory_available_mib = host_memory_mib(meminfo_path)
    gpus = discover_gpus(nvml) if nvml is not None else []
    if gpus:
        return {
            "kind": "gpu",
            "gpus": gpus,
            "cpu_count": cpu_count,
            "memory_total_mib": memory_total_mib,
        }
    return {
        "kind": "cpu",
        "gpus": [
            {
                "index": 0,
                "uuid": CPU_DEVICE_UUID,
                "name": CPU_DEVICE_NAME,
                "memory_total_mib": memory_total_mib,
                "memory_free_mib": memory_available_mib,
            }
        ],
        "cpu_count": cpu_count,
        "memory_total_mib": memory_total_mib,
    }


def discover_gpus(nvml: Any) -> list[GpuInfo]:
    """Every GPU NVML sees, in NVML index order; [] when NVML cannot start.

    NVML orders devices by PCI bus id; the agent starts replicas with
    `CUDA_DEVICE_ORDER=PCI_BUS_ID` so CUDA's indices are these indices.
    """
    error_type = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
    except error_type as error:
        log.debug("NVML is not available (%s); reporting a CPU-only node", error)
        return []
    except OSError as error:  # a broken driver install can surface as OSError
        log.debug("NVML could not load (%s); reporting a CPU-only node", error)
        return []
    try:
        gpus: list[GpuInfo] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "index": index,
                    "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
                    "name": _text(nvml.nvmlDeviceGetName(handle)),
                    "memory_total_mib": int(memory.total) // MIB,
                    "memory_free_mib": int(memory.free) // MIB,
                }
            )
        return gpus
    except error_type as error:
        log.warning("NVML failed while listing devices (%s); reporting a CPU-only node", error)
        return []
    finally:
        try:
            nvml.nvmlShutdown()
        except error_type as error:
            log.debug("nvmlShutdown failed: %s", error)


def host_memory_mib(meminfo_path: Path = Path("/proc/meminfo")) -> tuple[int, int]:
    """(total, available) host memory in MiB, from /proc/meminfo.

    Falls back to sysconf when /proc is not there (total and free pages).
    """
    try:
        fields = parse_meminfo(meminfo_path.read_text())
        total_kib = fields["MemTotal"]
        available_kib = fields.get("MemAvailable", fields.get("MemFree", 0))
        return total_kib // 1024, available_kib // 1024
    except (OSError, KeyError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        available = os.sysconf("SC_AVPHYS_PAGES") * page
        return total // MIB, available // MIB


def parse_meminfo(text: str) -> dict[str, int]:
    """`/proc/meminfo` as {field: kibibytes}."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip()] = int(parts[0])
    return fields


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
