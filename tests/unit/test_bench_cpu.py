"""What the benches count as the Postgres server's CPU, from a process table (bench/common.py)."""

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
