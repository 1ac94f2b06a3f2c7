"""The test-only pause point: off unless named; pauses the first process only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from market_pipeline import pause_points


def test_a_pause_point_not_named_in_the_environment_is_a_no_op(monkeypatch, tmp_path):
    monkeypatch.setenv(pause_points.PAUSE_ENV, "other")
    monkeypatch.setenv(pause_points.PAUSE_DIR_ENV, str(tmp_path))

    pause_points.pause_point("scores")

    assert list(tmp_path.iterdir()) == []


def test_the_first_process_pauses_with_its_pid_written_and_the_next_goes_through(tmp_path):
    env = dict(
        os.environ,
        **{pause_points.PAUSE_ENV: "scores", pause_points.PAUSE_DIR_ENV: str(tmp_path)},
    )
    code = "from market_pipeline.pause_points import pause_point; pause_point('scores')"
    first = subprocess.Popen([sys.executable, "-c", code], env=env)
    marker = tmp_path / "scores.pid"
    try:
        deadline = time.monotonic() + 60
        while not (marker.is_file() and marker.read_text()) and time.monotonic() < deadline:
            assert first.poll() is None, "the first process did not pause"
            time.sleep(0.05)
        assert int(marker.read_text()) == first.pid
        assert first.poll() is None  # paused

        second = subprocess.run([sys.executable, "-c", code], env=env, timeout=60)
        assert second.returncode == 0  # went through
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
