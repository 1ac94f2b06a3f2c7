"""FileDropSource: one CSV or Parquet file per symbol in a vendor drop folder."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from market_pipeline import calendar
from market_pipeline.errors import PermanentSourceError, TransientSourceError
from market_pipeline.sources.base import BAR_COLUMNS
from market_pipeline.sources.file_drop import FileDropSource

REAL_EOD = Path(__file__).resolve().parents[1] / "data" / "real-eod"

CSV = """date,open,high,low,close,volume
2024-11-25,10.0,11.0,9.5,10.5,1000
2024-11-26,10.5,11.5,10.0,11.0,2000
2024-11-27,11.0,12.0,10.5,11.5,3000
2024-11-29,11.5,12.5,11.0,12.0,4000
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "date": pd.to_datetime(["2024-11-25", "2024-11-26", "2024-11-27", "2024-11-29"]),
            "open": [10.0, 10.5, 11.0, 11.5],
            "high": [11.0, 11.5, 12.0, 12.5],
            "low": [9.5, 10.0, 10.5, 11.0],
            "close": [10.5, 11.0, 11.5, 12.0],
            "volume": [1000, 2000, 3000, 4000],
        }
    )


def test_a_csv_file_is_read_as_canonical_bars(tmp_path):
    _write(tmp_path, "AAPL.csv", CSV)

    bars = FileDropSource(tmp_path).fetch("AAPL", date(2024, 11, 25), date(2024, 11, 29))

    assert list(bars.columns) == list(BAR_COLUMNS)
    assert bars["trade_date"].tolist() == [
        date(2024, 11, 25),
        date(2024, 11, 26),
        date(2024, 11, 27),
        date(2024, 11, 29),
    ]
    assert bars["close"].dtype == "float64"
    assert bars["volume"].dtype == "int64"
    assert bars["volume"].tolist() == [1000, 2000, 3000, 4000]


def test_a_parquet_file_gives_the_same_bars_as_the_csv(tmp_path):
    csv_folder, parquet_folder = tmp_path / "csv", tmp_path / "parquet"
    csv_folder.mkdir()
    parquet_folder.mkdir()
    _write(csv_folder, "MSFT.csv", CSV)
    _frame().to_parquet(parquet_folder / "MSFT.parquet", index=False)
    span = (date(2024, 11, 1), date(2024, 11, 30))

    from_parquet = FileDropSource(parquet_folder).fetch("MSFT", *span)

    pd.testing.assert_frame_equal(from_parquet, FileDropSource(csv_folder).fetch("MSFT", *span))


def test_extra_columns_are_ignored(tmp_path):
    text = "symbol,date,adj_close,open,high,low,close,volume,note\n"
    text += "IBM,2024-11-25,9.9,10.0,11.0,9.5,10.5,1000,x\n"
    _write(tmp_path, "IBM.csv", text)

    bars = FileDropSource(tmp_path).fetch("IBM", date(2024, 11, 25), date(2024, 11, 25))

    assert list(bars.columns) == list(BAR_COLUMNS)
    assert bars.iloc[0]["close"] == 10.5


def test_a_missing_file_means_not_delivered_and_returns_an_empty_frame(tmp_path):
    source = FileDropSource(tmp_path)

    bars = source.fetch("NVDA", date(2024, 11, 25), date(2024, 11, 29))

    assert bars.empty
    assert list(bars.columns) == list(BAR_COLUMNS)
    assert source.last_request["status"] == "missing"


def test_only_rows_within_the_requested_range_are_returned(tmp_path):
    _write(tmp_path, "AAPL.csv", CSV)

    bars = FileDropSource(tmp_path).fetch("AAPL", date(2024, 11, 26), date(2024, 11, 27))

    assert bars["trade_date"].tolist() == [date(2024, 11, 26), date(2024, 11, 27)]


def test_a_byte_order_mark_and_upper_case_header_are_tolerated(tmp_path):
    (tmp_path / "AAPL.csv").write_text("\ufeff" + CSV.replace("date,open", "Date, Open"))

    bars = FileDropSource(tmp_path).fetch("AAPL", date(2024, 11, 25), date(2024, 11, 25))

    assert len(bars) == 1


def test_a_header_only_file_returns_an_empty_frame(tmp_path):
    _write(tmp_path, "AAPL.csv", "date,open,high,low,close,volume\n")

    bars = FileDropSource(tmp_path).fetch("AAPL", date(2024, 11, 25), date(2024, 11, 29))

    assert bars.empty


def test_a_header_missing_a_column_names_the_file_the_expected_header_and_what_was_found(
    tmp_path,
):
    _write(tmp_path, "AAPL.csv", "Date,Open,High,Low,Close\n2024-11-25,1,2,0.5,1.5\n")

    with pytest.raises(PermanentSourceError) as raised:
        FileDropSource(tmp_path).fetch("AAPL", date(2024, 11, 25), date(2024, 11, 29))

    message = str(raised.value)
    assert "AAPL.csv" in message
    assert "date,open,high,low,close,volume" in message
    assert "found date,open,high,low,close" in message
    assert "missing volume" in message
    assert raised.value.symbol == "AAPL"
    assert raised.value.session == date(2024, 11, 29)


def test_an_unparsable_date_is_a_permanent_error_naming_the_value(tmp_path):
    _write(tmp_path, "AAPL.csv", CSV.replace("2024-11-26", "26/11/2024"))

    with pytest.raises(PermanentSourceError, match="found '26/11/2024' at data row 2"):
        FileDropSource(tmp_path).fetch("AAPL", date(2024, 11, 25), date(2024, 11, 29))


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("2024-11-26T15:30:00", "a time of day"),
        ("2024-11-26 09:30", "a time of day"),
        ("2024-11-26T00:00:00+00:00", "a UTC offset or time zone"),
        ("2024-11-26T15:30:00-05:00", "a UTC offset or time zone"),
        ("2024-11-26T00:00:00Z", "a UTC offset or time zone"),
        ("2024-02-30", "not a calendar date"),
        ("20241126", "not an ISO date"),
    ],
)
def test_a_date_outside_the_rule_is_a_source_error_naming_file_row_and_value(tmp_path, value, why):
    _write(tmp_path, "AAPL.csv", CSV.replace("2024-11-26", value))

    with pytest.raises(PermanentSourceError) as raised:
        FileDropSource(tmp_path).fetch("AAPL", date(2024, 11, 25), date(2024, 11, 29))

    message = str(raised.value)
    assert f"{tmp_path / 'AAPL.csv'}:" in message
    assert f"found {value!r} at data row 2 ({why}" in message
    assert "YYYY-MM-DD" in message
    assert raised.value.cause == "malformed date"


@pytest.mark.parametrize("midnight", ["2024-11-26T00:00:00", "2024-11-26 00:00:00", "2024-11-26"])
def test_a_plain_date_or_its_midnight_is_that_session(tmp_path, midnight):
    _write(tmp_path, "AAPL.csv", CSV.replace("2024-11-26", midnight))

    bars = FileDropSource(tmp_path).fetch("AAPL", date(2024, 11, 26), date(2024, 11, 26))

    assert bars["trade_date"].tolist() == [date(2024, 11, 26)]


def test_a_parquet_timestamp_with_a_time_of_day_is_a_source_error(tmp_path):
    frame = _frame()
    frame.loc[1, "date"] = pd.Timestamp("2024-11-26 15:30")
    frame.to_parquet(tmp_path / "AAPL.parquet", index=False)

    with pytest.raises(PermanentSourceError, match=r"at data row 2 \(a time of day\)"):
        FileDropSource(tmp_path).fetch("AAPL", date(2024, 11, 25), date(2024, 11, 29))


def test_a_parquet_timestamp_with_a_time_zone_is_a_source_error(tmp_path):
    frame = _frame()
    frame["date"] = frame["date"].dt.tz_localize("America/New_York")
    frame.to_parquet(tmp_path / "AAPL.parquet", index=False)

    with pytest.raises(PermanentSourceError, match="in time zone America/New_York"):
        FileDropSource(tmp_path).fetch("AAPL", date(2024, 11, 25), date(2024, 11, 29))


def test_an_empty_file_is_transient_still_being_written(tmp_path):
    (tmp_path / "AAPL.csv").write_bytes(b"")

    with pytest.raises(TransientSourceError, match=r"AAPL\.csv: the file is empty"):
        FileDropSource(tmp_path).fetch("AAPL", date(2024, 11, 25), date(2024, 11, 29))


def test_an_os_error_while_reading_is_transient_naming_the_file(tmp_path):
    # /proc/self/mem is a regular file whose read at offset 0 fails with EIO: a real OSError.
    (tmp_path / "AAPL.csv").symlink_to("/proc/self/mem")

    with pytest.raises(TransientSourceError) as raised:
        FileDropSource(tmp_path).fetch("AAPL", date(2024, 11, 25), date(2024, 11, 29))

    assert "AAPL.csv: could not be read now: OSError" in str(raised.value)
    assert raised.value.kind == "transient"


@pytest.mark.parametrize(
    ("text", "until", "why"),
    [
        (CSV.replace("12.0,4000", "n/a,4000"), 29, "expected a number in column close"),
        (CSV.replace(",2000\n", ",2000.5\n"), 29, "whole-number volume"),
        (CSV + "2024-11-27,11.0,12.0,10.5,11.6,3100\n", 25, "duplicates for 2024-11-27"),
    ],
    ids=["unparsable-number", "fractional-volume", "duplicate-dates"],
)
def test_a_csv_the_rules_refuse_is_a_permanent_error_saying_why(tmp_path, text, until, why):
    _write(tmp_path, "AAPL.csv", text)

    with pytest.raises(PermanentSourceError, match=why):
        FileDropSource(tmp_path).fetch("AAPL", date(2024, 11, 25), date(2024, 11, until))


def test_a_corrupt_parquet_file_is_a_permanent_error_naming_the_file(tmp_path):
    (tmp_path / "AAPL.parquet").write_bytes(b"PAR1 this is not parquet")

    with pytest.raises(PermanentSourceError, match=r"AAPL\.parquet: cannot be read as PARQUET"):
        FileDropSource(tmp_path).fetch("AAPL", date(2024, 11, 25), date(2024, 11, 29))


def test_both_a_csv_and_a_parquet_for_one_symbol_is_an_ambiguous_delivery(tmp_path):
    _write(tmp_path, "AAPL.csv", CSV)
    _frame().to_parquet(tmp_path / "AAPL.parquet", index=False)

    with pytest.raises(PermanentSourceError, match=r"found both AAPL\.csv and AAPL\.parquet"):
        FileDropSource(tmp_path).fetch("AAPL", date(2024, 11, 25), date(2024, 11, 29))


def test_a_missing_drop_folder_is_a_permanent_error_not_an_empty_delivery(tmp_path):
    with pytest.raises(PermanentSourceError, match="expected a drop folder"):
        FileDropSource(tmp_path / "nowhere").fetch("AAPL", date(2024, 11, 25), date(2024, 11, 29))


def test_a_symbol_that_is_not_a_ticker_never_becomes_a_path(tmp_path):
    with pytest.raises(PermanentSourceError, match="expected a ticker"):
        FileDropSource(tmp_path).fetch("../etc/passwd", date(2024, 11, 25), date(2024, 11, 29))


def test_the_real_aapl_sample_has_one_bar_per_xnys_session():
    start, end = date(2000, 9, 25), date(2000, 10, 5)

    bars = FileDropSource(REAL_EOD).fetch("AAPL", start, end)

    assert bars["trade_date"].tolist() == calendar.sessions_between(start, end, "XNYS")
    assert len(bars) == 9
