"""`python -m workers.agent`: run this host's node agent until SIGTERM or SIGINT.

Settings come from environment variables (see README.md); a bad value stops the agent
at once with a message naming the variable (exit status 2).
"""

from __future__ import annotations

import logging
import signal
import sys

from workers.agent.settings import AgentSettings, SettingsError


def main() -> int:
    # Until the Celery worker installs its own handlers, a SIGTERM or SIGINT is only
    # remembered: the agent then stops cleanly once started instead of dying halfway.
    early_signals: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: early_signals.append(received))
    try:
        settings = AgentSettings.from_env()
    except SettingsError as error:
        print(f"node agent: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe
    from workers.agent.service import Agent  # after logging is set up

    agent = Agent(settings)
    agent.early_signals = early_signals
    agent.start()
    try:
        agent.run_worker()
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
