"""What the agent must remember across its own restarts, in `<state dir>/state.json`.

- `generation_applied`: so a stale desired state that was queued while the agent was
  down cannot undo a newer one it had already applied;
- per replica: pid, the process's kernel start time, port, spec_hash, and a reference to
  its API key (a SHA-256, never the key itself) to recognise the process again.

The file is written atomically (a temporary file renamed over it), mode 0600.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

STATE_FILE_NAME = "state.json"
STATE_FILE_VERSION = 1


@dataclass(frozen=True)
class PersistedReplica:
    id: str
    pid: int
    start_time: int
    port: int
    spec_hash: str
    api_key_sha256: str
    log_path: str


@dataclass
class PersistedState:
    generation_applied: int
    replicas: dict[str, PersistedReplica]


def api_key_reference(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class StateFile:
    def __init__(self, state_dir: Path):
        self.path = state_dir / STATE_FILE_NAME

    def load(self) -> PersistedState:
        """The saved state; an empty one when there is none or it cannot be read."""
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") != STATE_FILE_VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            replicas = {
                replica_id: PersistedReplica(**entry)
                for replica_id, entry in data.get("replicas", {}).items()
            }
            return PersistedState(int(data.get("generation_applied", -1)), replicas)
        except FileNotFoundError:
            return PersistedState(-1, {})
        except (OSError, ValueError, TypeError) as error:
            log.warning("ignoring unreadable state file %s: %s", self.path, error)
            return PersistedState(-1, {})

    def save(self, state: PersistedState) -> None:
        data = {
            "version": STATE_FILE_VERSION,
            "generation_applied": state.generation_applied,
            "replicas": {rid: asdict(entry) for rid, entry in sorted(state.replicas.items())},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".state-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
