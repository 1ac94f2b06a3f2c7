"""market_pipeline.quality.rules: a rule declared once is a whole rule; what failures say."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import date

import numpy as np
import pandas as pd
import pytest

from market_pipeline import calendar, quality
from market_pipeline.quality.rules import Param, Rule, Suite, between

D = date(2024, 11, 27)

pytestmark = pytest.mark.usefixtures("gx_context")


def clean_bars(sessions: int = 30, end: date = D) -> pd.DataFrame:
    dates = calendar.previous_sessions(end, sessions)
    close = np.linspace(100.0, 104.0, len(dates))
    return pd.DataFrame(
        {
            "trade_date": dates,
            "open": close,
            "high": close + 1,
            "low": close - 1,
            "close": close,
            "volume": np.arange(len(dates), dtype=np.int64) * 1000 + 1_000_000,
        }
    )


# ------------------------------------------------------------------------- one declaration

#: A rule that exists only in this test: volume in thousands at most a per-call cap.
VOLUME_CAP = Rule(
    "volume_under_cap",
    quality.CRITICAL,
    (between("volume_k", max_value=Param("volume_cap_k", lambda run: 1_500.0)),),
    {"volume_k": lambda stack: stack.volume / 1000},
    message=lambda rows, run: f"{rows[0]['session']}: {rows[0]['volume_k']:g}k > 1500k",
)


def test_a_rule_declared_once_is_built_validated_split_and_explained():
    suite = dataclasses.replace(
        quality.BARS, name="raw_bars_capped", rules=(*quality.BARS.rules, VOLUME_CAP)
    )
    engine = quality.Engine([suite])
    big = clean_bars()
    big.loc[7, "volume"] = 2_000_000
    frames = {"OK": clean_bars(), "BIG": big}
    run = quality.Run(D, "XNYS", frames, max_move=quality.DEFAULT_MAX_MOVE)

    results = quality.run_suite(suite, frames, run, engine=engine)

    gx_rules = [e.meta["rule"] for e in engine.suites["raw_bars_capped"].expectations]
    assert gx_rules[-1] == "volume_under_cap"
    assert results["OK"].success and results["OK"].critical_failures == ()
    assert results["BIG"].critical_failures == ("volume_under_cap",)
    day = big.loc[7, "trade_date"].isoformat()
    assert f"volume_under_cap ({day}: 2000k > 1500k)" in results["BIG"].failure_message()
    rows = [r for r in results["BIG"].result["expectations"] if r["rule"] == "volume_under_cap"]
    assert rows == [
        {
            "rule": "volume_under_cap",
            "severity": "critical",
            "acknowledged": False,
            "success": False,
            "expectation": "expect_column_values_to_be_between",
            "column": "volume_k",
            "observed": f"1 unexpected rows: {day}: 2000",
        }
    ]
    # The built-in suite is untouched: the default engine does not know the rule.
    default = quality.validate_bars(big, symbol="BIG", trade_date=D)
    assert default.success and "volume_under_cap" not in default.result["details"]


def test_a_declared_rule_can_be_acknowledged_by_its_name():
    suite = dataclasses.replace(
        quality.BARS, name="raw_bars_capped_ack", rules=(*quality.BARS.rules, VOLUME_CAP)
    )
    big = clean_bars()
    big.loc[7, "volume"] = 2_000_000
    run = quality.Run(D, "XNYS", {"BIG": big})
    acks = {"BIG": quality.results.check_acks(["volume_under_cap"], suite.severities)}

    result = quality.run_suite(
        suite, {"BIG": big}, run, acknowledged=acks, engine=quality.Engine([suite])
    )["BIG"]

    assert result.success and result.acknowledged == ("volume_under_cap",)


def test_a_rule_name_declared_twice_in_a_suite_is_refused():
    with pytest.raises(ValueError, match=r"declared twice .*\['not_null'\]"):
        Suite("x", "bars", (*quality.BARS.rules, quality.BARS.rules[1]), required=())


def test_a_rule_with_an_unknown_severity_is_refused():
    with pytest.raises(ValueError, match="expected severity critical or warning, found 'fatal'"):
        Rule("r", "fatal", (between("x", max_value=1),))


def test_the_public_severity_maps_follow_the_declarations_in_report_order():
    assert list(quality.BAR_RULES) == [r.name for r in quality.BARS.rules]
    assert quality.BAR_RULES["stale_repeats"] == quality.WARNING
    assert list(quality.INDICATOR_RULES) == [r.name for r in quality.INDICATORS.rules]


def _declared(suite: Suite) -> list:
    """The suite's expectations as plain data: what GX is asked to check."""

    def plain(value: object) -> object:
        return {"$PARAMETER": value.name} if isinstance(value, Param) else value

    return [
        [rule.name, rule.severity, e.type, {k: plain(v) for k, v in sorted(e.kwargs.items())}]
        for rule in suite.rules
        for e in rule.expect
    ]


#: What each suite checked at each SUITE_VERSION (sha256 of ``_declared``).
DECLARED = {
    "1.1.0": {
        "raw_bars": "4c81137bdad2dd1f0d80513ce0a502852566511d3131413b741da595c8a8b764",
        "indicators": "e9a2dba46cf5cc2b45be0a916fd6428bfc700c5c1fc311c2a69ee07d3dc1271d",
    }
}


@pytest.mark.parametrize("suite", quality.rules.SUITES, ids=lambda s: s.name)
def test_the_suite_version_changes_whenever_the_expectations_change(suite):
    declared = json.dumps(_declared(suite), sort_keys=True, default=list)
    digest = hashlib.sha256(declared.encode()).hexdigest()

    recorded = DECLARED.get(suite.version, {}).get(suite.name)

    assert digest == recorded, (
        f"the {suite.name} expectations differ from those recorded for SUITE_VERSION "
        f"{suite.version}: bump SUITE_VERSION and record {digest}"
    )


# ------------------------------------------------------------------------- messages


def _message(bars: pd.DataFrame) -> str:
    return quality.validate_bars(bars, symbol="T", trade_date=D).failure_message()


def test_a_session_gap_names_the_missing_session_not_the_bar_after_it():
    bars = clean_bars()
    missing, after = bars.loc[15, "trade_date"], bars.loc[16, "trade_date"]

    message = _message(bars.drop(index=15))

    assert f"no_missing_sessions (missing session {missing.isoformat()})" in message
    assert after.isoformat() not in message


def test_every_gap_of_a_window_names_its_missing_sessions():
    bars = clean_bars()
    gone = [bars.loc[i, "trade_date"].isoformat() for i in (5, 15, 16)]

    message = _message(bars.drop(index=[5, 15, 16]))

    assert f"no_missing_sessions (missing sessions {', '.join(gone)} in 2 gaps)" in message


def test_a_long_gap_gives_its_length_and_its_ends():
    bars = clean_bars()
    gone = [d.isoformat() for d in bars.loc[3:22, "trade_date"]]

    message = _message(bars.drop(index=range(3, 23)))

    assert f"(missing 20 sessions: {', '.join(gone[:3])} … {gone[-1]})" in message


def test_a_date_that_is_no_session_is_named_with_the_exchange_and_no_stray_braces():
    bars = clean_bars()
    bars = pd.concat([bars, bars.iloc[[-1]].assign(trade_date=date(2024, 11, 28))])

    result = quality.validate_bars(bars, symbol="T", trade_date=D)

    assert "dates_are_sessions (2024-11-28 is not a session of XNYS)" in result.failure_message()
    observed = {r["rule"]: r["observed"] for r in result.result["expectations"]}
    assert observed["dates_are_sessions"] == "1 unexpected rows: 2024-11-28"
    assert all("{}" not in r["observed"] for r in result.result["expectations"])


def test_a_duplicated_session_says_how_many_rows_it_has():
    bars = clean_bars()
    day = bars.loc[12, "trade_date"].isoformat()

    message = _message(pd.concat([bars, bars.iloc[[12, 12]]], ignore_index=True))

    assert f"unique_dates ({day} has 3 rows)" in message
