"""Every failure message ends with the one next action (issue 19, item 2)."""

from __future__ import annotations

from datetime import date

from market_airflow import notify

from market_pipeline import recovery
from market_pipeline.errors import (
    NEXT,
    DataQualityError,
    NotDeliveredError,
    next_action,
    with_next_action,
)
from market_pipeline.store.dlq import clipped

D = date(2024, 11, 29)
GATE = "per_symbol.validate_bars"


def test_a_bad_delivery_says_fix_it_and_clear_the_failed_instance():
    action = next_action("data_quality", task_id=GATE, symbol="IBM", session=D)

    assert action == f"fix the delivery and clear {GATE}[IBM] with downstream"


def test_a_chunk_is_cleared_by_its_label_and_a_true_event_gets_the_exact_ack_command():
    action = next_action(
        "data_quality",
        task_id=GATE,
        label="AAPL..IBM",
        symbol="IBM",
        session=D,
        event_sessions={"max_close_move": ["2024-11-27"]},
    )

    assert action == (
        "if it is a true market event, run `market-recovery ack IBM 2024-11-27 --rule "
        'max_close_move --reason "<the event>"` and clear per_symbol.validate_bars[AAPL..IBM] '
        "with downstream; otherwise fix the delivery and clear "
        "per_symbol.validate_bars[AAPL..IBM] with downstream"
    )


def test_the_ack_command_parses_with_the_cli_that_runs_it():
    action = next_action(
        "data_quality",
        task_id=GATE,
        symbol="IBM",
        session=D,
        event_sessions={"max_close_move": [D.isoformat()]},
    )
    command = action.split("`")[1]

    args = recovery.build_parser().parse_args(
        command.removeprefix("market-recovery ").replace('"<the event>"', "spike").split()
    )

    assert (args.command, args.symbol, args.session, args.rule) == (
        "ack",
        "IBM",
        D,
        "max_close_move",
    )


def test_an_error_with_an_action_ends_with_it_after_where_it_happened():
    exc = DataQualityError("raw bar gate failed", symbol="IBM", session=D, action="do X")

    assert str(exc) == "raw bar gate failed [symbol=IBM, session=2024-11-29] — next: do X"
    assert with_next_action(str(exc), "do Y") == str(exc)  # one action, never two
    assert str(NotDeliveredError("late", symbol="IBM")) == "late [symbol=IBM]"


def test_other_kinds_name_the_instance_to_clear():
    for kind, start in (
        ("not_delivered", "fix the delivery and clear"),
        ("source", "fix the delivery and clear"),
        ("transient", "clear"),
        ("code", "fix the cause (code or configuration) and clear"),
        ("killed", "clear"),
    ):
        action = next_action(kind, task_id="per_symbol.wait_for_bars", symbol="KO")
        assert action.startswith(f"{start} per_symbol.wait_for_bars[KO] with downstream"), kind
    assert next_action("code", task_id="quorum_gate").endswith("clear quorum_gate with downstream")


def test_a_long_message_is_cut_before_its_action_never_through_it():
    message = with_next_action("x" * 5000, "fix the delivery and clear t[IBM] with downstream")

    cut = clipped(message, 2000)

    assert len(cut) == 2000
    assert cut.endswith(f"{NEXT}fix the delivery and clear t[IBM] with downstream")


def test_the_alert_ends_with_the_failed_instances_action_or_where_to_read_each():
    one = [{"error_message": with_next_action("gate failed", "fix and clear t[IBM]")}]
    two = [*one, {"error_message": with_next_action("source failed", "fix and clear t[KO]")}]

    assert notify.alert_action(one, "r1") == "fix and clear t[IBM]"
    assert "`market-recovery list --run-id r1`" in notify.alert_action(two, "r1")
    assert notify.alert_action([], "r1", unreadable=True).startswith(
        "bring the market database back"
    )
