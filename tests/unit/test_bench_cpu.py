"""What the benches count from a process table and from task logs (bench/common.py): the
Postgres server's CPU, a task body's CPU and memory, the largest task process."""

from __future__ import annotations

import pytest

from tests.support.bench_scripts import load


@pytest.fixture
def common():
    return load("common", "bench_common_cpu")


def _table():
    # {pid: (ppid, comm, own cpu s, reaped children's cpu s)}
    return {
        1: (0, "init", 5.0, 100.0),
        10: (1, "postgres", 2.0, 7.0),  # a server: its own, and backends that exited
        11: (10, "postgres", 1.5, 0.0),  # a live backend
        12: (11, "postgres", 0.25, 0.0),  # anything below a backend counts too
        20: (1, "postmaster", 0.5, 0.0),  # a second server on the box
        30: (1, "python", 9.0, 3.0),  # not Postgres
        31: (30, "postgres", 4.0, 0.0),  # a server started by a test process: its own root
    }


def test_every_server_on_the_box_is_counted_with_its_backends_live_and_exited(common):
    assert common.postgres_cpu(_table()) == pytest.approx(2.0 + 7.0 + 1.5 + 0.25 + 0.5 + 4.0)


def test_no_visible_server_is_not_measured_rather_than_zero(common):
    table = {pid: row for pid, row in _table().items() if "postgres" not in row[1]}
    table = {pid: row for pid, row in table.items() if row[1] != "postmaster"}

    assert common.postgres_cpu(table) is None


def test_the_live_box_reads_as_a_number_or_as_not_measured(common):
    found = common.postgres_cpu()

    assert found is None or found >= 0


def test_a_task_log_gives_the_body_cpu_and_the_memory_its_process_added(common, tmp_path):
    import json

    events = [
        ("2024-12-02T10:00:00.000Z", "::group::Pre Execute"),
        ("2024-12-02T10:00:00.100Z", "Filling up the DagBag from /dags/market_daily.py"),
        ("2024-12-02T10:00:00.200Z", "Worker startup parse complete"),
        ("2024-12-02T10:00:00.300Z", "::endgroup::"),
        ("2024-12-02T10:00:01.300Z", "cpu: 0.250 s CPU in 1.000 s wall (validate_bars)"),
        (
            "2024-12-02T10:00:01.301Z",
            "memory: 42.5 MiB over the parent at the peak (10.0 MiB private, "
            "500.0 MiB peak resident) (validate_bars)",
        ),
        ("2024-12-02T10:00:01.400Z", "::group::Post Execute"),
        ("2024-12-02T10:00:01.600Z", "::endgroup::"),
    ]
    log = tmp_path / "attempt=1.log"
    log.write_text("\n".join(json.dumps({"timestamp": t, "event": e}) for t, e in events))

    phases = common._log_phases(log)

    assert phases["body_cpu"] == 0.25 and phases["body_wall"] == 1.0
    assert phases["added_mib"] == 42.5
    assert phases["execute"] == pytest.approx(1.1)


def test_the_largest_chunk_task_is_checked_against_the_target(common):
    lines: list[str] = []
    runs = [
        {
            "dag_id": "market_daily",
            "peak_memory_mib": {"tasks": 900.0, "scheduler": 480.0, "api_server": 300.0},
            "log_phases": {
                "per_symbol.validate_bars": {"added_mib": 40.0, "added_mib_max": 61.0},
                "per_symbol.compute_indicators": {"added_mib": 90.0, "added_mib_max": 151.0},
                "run_health": {"parse": 0.1},
                "verify_cache": {"added_mib": 170.0, "added_mib_max": 170.0},
            },
        },
        {"dag_id": "market_daily_empty", "peak_memory_mib": {}, "log_phases": {}},
    ]

    largest = common.memory_table(runs, log=lines.append)

    assert largest == {
        "chunk": {"stage": "compute_indicators", "mib": 151.0},
        "tail": {"stage": "verify_cache", "mib": 170.0},
    }
    # The target is a chunk task's: the tail's (whole universe, one at a time) is reported.
    assert lines[-2:] == [
        "largest tail task over its parent: 170.0 MiB (verify_cache; the whole universe, "
        "one task at a time)",
        "largest chunk task over its parent: 151.0 MiB (compute_indicators; "
        "target <= 150 MiB: NOT met)",
    ]
    assert common.memory_table(runs[1:], log=lines.append) is None
