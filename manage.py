#!/usr/bin/env python
"""Django's command-line utility for the control plane."""

import os
import sys
from pathlib import Path

# The control plane's source root; it is not a package (see docs/architecture.md).
sys.path.insert(0, str(Path(__file__).resolve().parent / "platform"))


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
