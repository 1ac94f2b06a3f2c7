"""Test-only pause points inside writes: a fault test kills a task exactly there.

A no-op unless ``MARKET_TEST_PAUSE_AT`` names the phase. Then the first process that reaches
it writes its pid to ``<MARKET_TEST_PAUSE_DIR>/<phase>.pid`` (created exclusively: later
processes, e.g. the retry of the killed try, go through) and waits there, with its
transaction open, for the test to SIGKILL it. Never set in production.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_ENV = "MARKET_TEST_PAUSE_AT"
PAUSE_DIR_ENV = "MARKET_TEST_PAUSE_DIR"
#: How long a paused process waits before it gives up (the test kills it long before).
PAUSE_LIMIT_SECONDS = 600.0


def pause_point(phase: str) -> None:
    """Pause the first process that reaches ``phase`` when the environment names it."""
    if os.environ.get(PAUSE_ENV) != phase:
        return
    directory = Path(os.environ.get(PAUSE_DIR_ENV) or ".")
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(directory / f"{phase}.pid", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return  # paused once already: this is the retry, it goes through
    with os.fdopen(fd, "w") as out:
        out.write(str(os.getpid()))
    deadline = time.monotonic() + PAUSE_LIMIT_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.2)  # waiting to be killed, not synchronising anything
    raise SystemExit(f"pause point {phase}: not killed within {PAUSE_LIMIT_SECONDS:.0f} s")
