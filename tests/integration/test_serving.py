"""What the tail serves, at the use-case level (real Postgres, Redis and GX, no Airflow).

- the ranking policy: a symbol whose last bars are identical (a gate warning) or whose
  indicators are still warming up is served unranked, with the reason, and never ranked
  above symbols with full, clean history;
- a session's served day keeps every symbol whose results for the session are valid in
  Postgres, even when the current attempt failed it (a clear of one symbol);
- the universe rejects an invalid entry on its own: one DLQ row each, the valid symbols run,
  the quorum counts the universe as configured, the run is red.
"""

from __future__ import annotations

import json
from datetime import date

import psycopg2
import pytest

from market_pipeline import cache, migrate, store
from market_pipeline.sources.file_drop import FileDropSource
from market_pipeline.sources.synthetic import SyntheticSource
from market_pipeline.stages import SYMBOL_TASKS, TAIL_TASKS
from market_pipeline.stages.publish_cache import publish_cache
from market_pipeline.stages.quorum_gate import QuorumError, quorum_gate
from market_pipeline.stages.run_health import RunHealthError, run_health
from market_pipeline.stages.score_universe import score_universe
from market_pipeline.stages.settings import Attempt, Settings
from market_pipeline.stages.universe import UniverseEntryError, universe
from market_pipeline.stages.verify_cache import verify_cache
from tests.support.chain import run_chain

D = date(2024, 11, 29)
ATTEMPT = Attempt(run_id="scheduled__2024-11-29", try_number=1)
GOOD = ("GOOA", "GOOB", "GOOC")
HISTORY = 260  # sessions: every indicator (SMA200 included) is warm at D


@pytest.fixture
def db(pg_schema, redis_client, tmp_path, monkeypatch):
    """A migrated schema and a Redis prefix; gate pages under ``tmp_path``."""
    dsn, schema = pg_schema
    monkeypatch.setenv("MARKET_REPORT_DIR", str(tmp_path / "reports"))
    monkeypatch.delenv("MARKET_REPORT_BASE_URL", raising=False)
    conn = psycopg2.connect(dsn)
    migrate.apply(conn, schema)
    settings = Settings(
        schema=schema,
        cache_prefix=redis_client.test_prefix,
        exchange="XNYS",
        history_sessions=HISTORY,
        quorum=0.5,
    )
    yield conn, redis_client, settings
    conn.close()


def _drop(folder, symbol: str, *, flat_tail: int = 0, bars: int = HISTORY) -> None:
    """Write ``symbol``'s file into the drop folder: its last ``bars`` synthetic sessions to
    D, the last ``flat_tail`` of them identical to the one before (a stale feed)."""
    frame = SyntheticSource().history(symbol, D).tail(bars).reset_index(drop=True)
    if flat_tail:
        cols = ["open", "high", "low", "close", "volume"]
        last = len(frame) - flat_tail - 1
        for col in cols:
            frame.loc[last + 1 :, col] = frame.at[last, col]
    frame.rename(columns={"trade_date": "date"}).to_csv(folder / f"{symbol}.csv", index=False)


@pytest.fixture
def drop(tmp_path):
    """A file-drop folder holding every ``GOOD`` symbol's file (a test adds its own)."""
    folder = tmp_path / "drop"
    folder.mkdir()
    for symbol in GOOD:
        _drop(folder, symbol)
    return folder


def _chain(conn, settings, symbols, source) -> list[str]:
    """The per-symbol chain for ``symbols`` as one chunk; the symbols that passed it."""
    store.ensure_symbols(conn, symbols, schema=settings.schema)
    return run_chain(conn, settings, symbols, D, source, ATTEMPT)


def _tail(conn, client, settings, chunks, states, attempt=ATTEMPT) -> dict:
    quorum = quorum_gate(conn, chunks, D, settings, task_states=states, attempt=attempt)
    scored = score_universe(conn, quorum["passed"], D, settings)
    published = publish_cache(conn, client, D, settings, attempt=attempt)
    verified = verify_cache(conn, client, D, settings)
    return {"quorum": quorum, "scored": scored, "published": published, "verified": verified}


def _served(client, settings) -> dict[str, dict]:
    """Every snapshot of the served version, by symbol."""
    manifest = cache.latest_manifest(client, prefix=settings.cache_prefix)
    keys = cache.version_keys(manifest.version, settings.cache_prefix)
    return {k.decode(): json.loads(v) for k, v in client.hgetall(keys.snapshots).items()}


def _all_passed(chunks) -> dict:
    return {(t, i): "success" for i in range(len(chunks)) for t in SYMBOL_TASKS}


def test_a_stale_or_young_symbol_is_served_unranked_with_the_reason(db, drop):
    conn, client, settings = db
    _drop(drop, "FLAT", flat_tail=5)
    _drop(drop, "YOUNG", bars=1)
    symbols = [*GOOD, "FLAT", "YOUNG"]

    passed = _chain(conn, settings, symbols, FileDropSource(drop))
    assert passed == sorted(symbols)  # both pass their gates: a warning is not a failure
    chunks = [sorted(symbols)]
    out = _tail(conn, client, settings, chunks, _all_passed(chunks))

    served = _served(client, settings)
    assert sorted(served) == sorted(symbols)
    assert out["published"]["symbol_count"] == 5 and out["published"]["ranked_count"] == 3
    assert sorted(served[s]["rank"] for s in GOOD) == [1, 2, 3]
    top = cache.latest_scores(client, 10, prefix=settings.cache_prefix)
    assert sorted(s for s, _ in top) == sorted(GOOD)  # the ranking holds only the ranked

    flat = served["FLAT"]
    assert (flat["rank"], flat["score"], flat["percentile"]) == (None, None, None)
    assert flat["unranked_reasons"] == ["warned: stale_repeats"]
    assert [(w["gate"], w["rule"]) for w in flat["warnings"]] == [("bars", "stale_repeats")]
    assert flat["readiness"] == {"ready": True, "not_ready": {}}

    young = served["YOUNG"]
    assert young["rank"] is None and young["score"] is None
    assert young["readiness"]["ready"] is False
    assert "sma_200" in young["readiness"]["not_ready"]
    (reason,) = young["unranked_reasons"]
    assert reason.startswith("not_ready: sma_200 (warm-up needs 200 sessions, YOUNG has 1)")

    for symbol in GOOD:
        assert served[symbol]["unranked_reasons"] == []
        assert served[symbol]["warnings"] == []
        assert served[symbol]["readiness"] == {"ready": True, "not_ready": {}}
    # Postgres ranks the same three, 1..3, and nothing else.
    ranked = store.scores_on(conn, D, schema=settings.schema)
    assert sorted(ranked["symbol"]) == sorted(GOOD)
    assert out["scored"]["unranked"] == {
        "FLAT": flat["unranked_reasons"],
        "YOUNG": young["unranked_reasons"],
    }


def test_a_symbol_failing_in_a_later_attempt_stays_served_with_its_valid_results(db, drop):
    conn, client, settings = db
    symbols = [*GOOD, "GOOD"]
    _drop(drop, "GOOD")
    chunks = [[s] for s in sorted(symbols)]
    assert _chain(conn, settings, symbols, FileDropSource(drop)) == sorted(symbols)
    green = _tail(conn, client, settings, chunks, _all_passed(chunks))
    before = _served(client, settings)
    assert len(before) == 4

    # A clear of GOOB's chain whose ingest fails this attempt: the tail reruns without it.
    retry = Attempt(run_id=ATTEMPT.run_id, try_number=2)
    index = sorted(symbols).index("GOOB")
    states = _all_passed(chunks)
    states.update({(t, index): "upstream_failed" for t in SYMBOL_TASKS})
    states[("ingest_bars", index)] = "failed"
    again = _tail(conn, client, settings, chunks, states, attempt=retry)

    assert "GOOB" in again["quorum"]["failed"] and "GOOB" not in again["quorum"]["passed"]
    assert again["published"]["symbol_count"] == again["verified"]["verified"] == 4
    assert _served(client, settings) == before  # nothing lost, nothing changed
    # The same content under the same run: the very version already served.
    assert again["published"]["version"] == green["published"]["version"]


def test_a_symbol_whose_raw_gate_now_fails_is_no_longer_served(db, drop):
    conn, client, settings = db
    chunks = [sorted(GOOD)]
    _chain(conn, settings, list(GOOD), FileDropSource(drop))
    _tail(conn, client, settings, chunks, _all_passed(chunks))

    # GOOC's latest verdict for D is a failure (a corrected delivery the gate rejected).
    with conn, conn.cursor() as cur:
        cur.execute(
            f"UPDATE {settings.schema}.validation_reports SET success = false "
            "WHERE gate = 'bars' AND symbol = 'GOOC' AND trade_date = %s",
            (D,),
        )
    _tail(conn, client, settings, chunks, _all_passed(chunks))

    assert sorted(_served(client, settings)) == ["GOOA", "GOOB"]


# --- the universe ------------------------------------------------------------------------


def _rejections(conn, settings) -> list[dict]:
    rows = store.dlq_open(conn, run_id=ATTEMPT.run_id, schema=settings.schema)
    rows = rows[rows["task_id"] == "universe"]
    return rows[["symbol", "stage", "kind", "map_index", "error_class", "error_message"]].to_dict(
        "records"
    )


def test_an_invalid_universe_entry_is_rejected_alone_and_turns_the_run_red(db):
    conn, _, base = db
    settings = Settings(
        schema=base.schema,
        universe="AAA, BRK B,,TOOLONGTICKER123,brk.b,BBB",
        quorum=0.3,
    )

    chunks = universe(conn, D, settings, attempt=ATTEMPT)

    assert chunks == [["AAA"], ["BBB"]]
    rows = _rejections(conn, settings)
    assert sorted(r["symbol"] for r in rows) == ["(empty)", "BRK B", "TOOLONGTICKER123", "brk.b"]
    assert {(r["stage"], r["kind"], r["map_index"]) for r in rows} == {("universe", "source", -1)}
    brk = next(r for r in rows if r["symbol"] == "BRK B")
    assert brk["error_class"] == "UniverseEntryError"
    assert "market_universe Variable, entry 2 of 6" in brk["error_message"]
    assert "expected an upper-case ticker matching" in brk["error_message"]
    assert "found 'BRK B'" in brk["error_message"]
    # The universe task's own success (its callback) leaves the rejections open.
    store.dlq_resolve(
        conn,
        dag_id=ATTEMPT.dag_id,
        run_id=ATTEMPT.run_id,
        task_id="universe",
        map_index=-1,
        try_number=1,
        trade_date=D,
        symbol=None,
        schema=settings.schema,
    )
    assert len(_rejections(conn, settings)) == 4

    # The quorum counts the universe as configured: 2 of 6 passed.
    quorum = quorum_gate(
        conn, chunks, D, settings, task_states=_all_passed(chunks), attempt=ATTEMPT
    )
    assert quorum["passed"] == ["AAA", "BBB"]
    assert sorted(quorum["rejected"]) == sorted(r["symbol"] for r in rows)
    with pytest.raises(QuorumError, match="expected at least 95% of 6 symbols"):
        strict = Settings(schema=settings.schema, quorum=0.95)
        quorum_gate(conn, chunks, D, strict, task_states=_all_passed(chunks), attempt=ATTEMPT)
    with pytest.raises(RunHealthError, match=r"4 universe entries rejected: .*'BRK B'"):
        run_health(
            conn,
            chunks,
            D,
            settings,
            task_states=_all_passed(chunks),
            tail_states=dict.fromkeys(TAIL_TASKS, "success"),
            attempt=ATTEMPT,
        )

    # Fixed: the universe is rerun (a clear) and resolves the rows of the entries now gone.
    fixed = Settings(schema=settings.schema, universe="AAA,BBB,BRK.B")
    assert universe(conn, D, fixed, attempt=ATTEMPT) == [["AAA"], ["BBB"], ["BRK.B"]]
    assert _rejections(conn, settings) == []


def test_a_universe_file_entry_names_its_file_and_line(db, tmp_path):
    conn, _, base = db
    path = tmp_path / "universe.txt"
    path.write_text("# tickers\nAAA\n\nbad ticker  # typo\nBBB\n")
    settings = Settings(schema=base.schema, universe=str(path))

    assert universe(conn, D, settings, attempt=ATTEMPT) == [["AAA"], ["BBB"]]

    (row,) = _rejections(conn, settings)
    assert row["symbol"] == "bad ticker"
    assert f"market_universe file {path}, line 4" in row["error_message"]


def test_a_universe_without_a_valid_entry_fails_as_a_source_error_and_the_tail_copes(db):
    conn, _, base = db
    settings = Settings(schema=base.schema, universe="aaa,BB$")

    with pytest.raises(UniverseEntryError, match="expected at least one valid symbol") as exc:
        universe(conn, D, settings, attempt=ATTEMPT)
    assert exc.value.kind == "source"
    assert len(_rejections(conn, settings)) == 2
    assert store.active_symbols(conn, schema=settings.schema) == []

    # The universe task failed: its XCom is None, its callback wrote its own row (no symbol).
    # The all_done tasks fail cleanly.
    store.dlq_record(
        conn,
        store.DlqEntry(
            dag_id=ATTEMPT.dag_id,
            run_id=ATTEMPT.run_id,
            logical_date=None,
            trade_date=D,
            task_id="universe",
            map_index=-1,
            symbol=None,
            stage="universe",
            try_number=1,
            kind="source",
            error_class="UniverseEntryError",
            error_message="expected at least one valid symbol",
        ),
        schema=settings.schema,
    )
    with pytest.raises(QuorumError, match="universe task did not complete"):
        quorum_gate(conn, None, D, settings, task_states={}, attempt=ATTEMPT)
    with pytest.raises(RunHealthError, match=r"did not complete.*2 universe entries rejected"):
        run_health(
            conn,
            None,
            D,
            settings,
            task_states={},
            tail_states=dict.fromkeys(TAIL_TASKS, "upstream_failed"),
            attempt=ATTEMPT,
        )
