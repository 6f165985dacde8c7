"""The one way to build a filesystem path from user input (model aliases, version
names, manifest entries, replica sources): join it under its root, resolve it (symlinks
and ``..`` included), and refuse it unless it is still inside the root.

No Django here: the control plane (model cache paths, fetch targets), the artifact
fetcher and the node agent use it alike.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePath

#: What a path component taken from a name may look like (a model alias, a version).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class UnsafePath(ValueError):
    """A path built from user input that would leave its root."""


def check_name(value: object, what: str = "name") -> str:
    """``value`` if it is usable as one path component (letters, digits, ``.``, ``_``,
    ``-``; starts with a letter or digit; at most 64 characters; never ``..``)."""
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        raise UnsafePath(
            f"{what} {value!r} must be 1-64 letters, digits, '.', '_' or '-', start with a "
            "letter or digit, and not contain '..'"
        )
    return value


def path_within(root: str | os.PathLike[str], *parts: str | PurePath) -> Path:
    """``root / parts``, resolved, proven to stay inside ``root`` (resolved too).
    Raises ``UnsafePath`` if it does not (absolute parts, ``..``, a symlink out)."""
    base = Path(root).resolve()
    for part in parts:
        if "\x00" in str(part):
            raise UnsafePath(f"{str(part)!r} contains a NUL byte")
    candidate = base.joinpath(*parts).resolve()
    if not candidate.is_relative_to(base):
        joined = "/".join(str(p) for p in parts)
        raise UnsafePath(f"{joined!r} leads outside {base}")
    return candidate
