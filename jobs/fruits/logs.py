"""How a run logs: one line per record on stderr, for the entry point and ``fruits.job.main`` alike."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    """INFO and above to stderr in :data:`FORMAT`; a no-op when logging is configured already (as
    ``logging.basicConfig``), so the entry can call it before the session starts and ``main`` again.

    Py4J's INFO lines ("Closing down clientserver connection") are left out: they say nothing to a user and
    came after the run's last line, the one that says how it ended.
    """
    logging.basicConfig(level=logging.INFO, format=FORMAT, stream=sys.stderr)
    logging.getLogger("py4j").setLevel(logging.WARNING)
