"""The Redis serving copy against a real Redis: atomic switch, failure, rerun, TTL, verify."""

from __future__ import annotations

import math
import shutil
import subprocess
import threading
import time
import uuid
from datetime import date

import pytest
import redis

from market_pipeline import cache
from market_pipeline.errors import ConfigurationError, MarketPipelineError
from tests.support.servers import PrivateRedis, free_port

DAY1 = date(2024, 11, 27)
DAY2 = date(2024, 11, 29)
DAY_OLD = date(2024, 10, 31)


def make_snapshots(trade_date: date, n: int, *, base: float = 0.0) -> list[dict]:
    """Snapshots shaped like the scoring stage's; scores lie in [base, base + 1)."""
    out = []
    for i in range(n):
        score = base + (i * 7919 % n) / n
        out.append(
            {
                "symbol": f"S{i:05d}",
                "trade_date": trade_date,
                "close": 100.0 + i / 8,
                "indicators": {"rsi_14": 30.0 + i % 40, "sma_20": 99.5 + i / 9, "atr_14": None},
                "signals": [
                    {
                        "rule": "rsi_oversold",
                        "direction": "long",
                        "strength": 0.25,
                        "ready": True,
                        "reasons": [f"rsi_14={30.0 + i % 40} < 35"],
                    }
                ],
                "score": score,
                "rank": i + 1,
                "percentile": 1 - i / n,
                "components": {"momentum": score / 2, "mean_reversion": score / 2},
            }
        )
    return out


def key_state(client: redis.Redis, prefix: str) -> dict:
    """Every key under ``prefix`` (relative name) -> its type, exact bytes and whether it expires.

    Not DUMP: a large hash's DUMP follows its internal bucket order, which an overwrite
    with identical fields and values can change.
    """
    state = {}
    for key in sorted(client.scan_iter(match=f"{prefix}:*", count=1000)):
        kind = client.type(key).decode()
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = sorted(client.hgetall(key).items())
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            raise AssertionError(f"unexpected {kind} key {key!r}")
        state[key.decode()[len(prefix) :]] = (kind, value, client.ttl(key) > 0)
    return state


def publish(client, trade_date, run_id, snapshots, **kw):
    return cache.publish(
        client,
        trade_date=trade_date,
        run_id=run_id,
        snapshots=snapshots,
        prefix=client.test_prefix,
        **kw,
    )


class Killed(Exception):
    """Raised by the test hook to kill a publish midway."""


def kill_at(stage: str, after: int = 0):
    def hook(current: str, written: int) -> None:
        if current == stage and written >= after:
            raise Killed(f"killed at {stage} after {written}")

    return hook


# --- readers -----------------------------------------------------------------------------


def test_readers_return_the_published_day(redis_client):
    snapshots = make_snapshots(DAY1, 30)
    manifest = publish(redis_client, DAY1, "run-1", snapshots)

    top = cache.latest_scores(redis_client, 3, prefix=redis_client.test_prefix)
    snapshot = cache.symbol_snapshot(redis_client, "S00007", prefix=redis_client.test_prefix)
    served = cache.latest_manifest(redis_client, prefix=redis_client.test_prefix)

    expected_top = sorted(((s["symbol"], s["score"]) for s in snapshots), key=lambda p: -p[1])[:3]
    assert top == expected_top
    assert snapshot["score"] == snapshots[7]["score"]
    assert snapshot["trade_date"] == DAY1.isoformat()
    assert snapshot["indicators"]["atr_14"] is None
    assert served == manifest


def test_latest_scores_breaks_ties_by_symbol_across_the_cut(redis_client):
    scores = {"ZZZ": 5.0, "AAA": 5.0, "MMM": 5.0, "TOP": 9.0, "LOW": 1.0}
    snapshots = [{"symbol": s, "score": v, "rank": 0} for s, v in scores.items()]
    publish(redis_client, DAY1, "run-1", snapshots)

    top = cache.latest_scores(redis_client, 3, prefix=redis_client.test_prefix)

    assert top == [("TOP", 9.0), ("AAA", 5.0), ("MMM", 5.0)]


def test_readers_find_nothing_before_the_first_publish(redis_client):
    prefix = redis_client.test_prefix

    assert cache.latest_scores(redis_client, 5, prefix=prefix) == []
    assert cache.symbol_snapshot(redis_client, "AAPL", prefix=prefix) is None
    assert cache.latest_manifest(redis_client, prefix=prefix) is None


def test_a_symbol_missing_from_the_served_day_reads_as_none(redis_client):
    publish(redis_client, DAY1, "run-1", make_snapshots(DAY1, 5))

    found = cache.symbol_snapshot(redis_client, "NOPE", prefix=redis_client.test_prefix)

    assert found is None


# --- atomicity ------------------------------------------------------------------------------


def test_a_reader_polling_during_a_publish_only_sees_complete_days(redis_client, redis_url):
    n, prefix = 2000, redis_client.test_prefix
    publish(redis_client, DAY1, "run-1", make_snapshots(DAY1, n, base=0.0))
    day_of_band = {0: DAY1.isoformat(), 10: DAY2.isoformat()}
    stop, finished = threading.Event(), threading.Condition()
    seen, problems, reads = set(), [], [0]  # reads: complete reads so far

    def read_once(client: redis.Redis) -> None:
        manifest = cache.latest_manifest(client, prefix=prefix)
        keys = cache.version_keys(manifest.version, prefix)
        zcard, hlen = client.zcard(keys.scores), client.hlen(keys.snapshots)
        top = cache.latest_scores(client, 5, prefix=prefix)
        snap = cache.symbol_snapshot(client, "S01999", prefix=prefix)
        bands = {math.floor(score) for _, score in top}
        if not (manifest.symbol_count == zcard == hlen == n):
            problems.append(f"{manifest.version}: manifest/zset/hash {zcard}/{hlen}")
        if len(top) != 5 or len(bands) != 1 or bands - set(day_of_band):
            problems.append(f"top-5 mixes days or is short: {top}")
        if snap["trade_date"] != day_of_band[math.floor(snap["score"])]:
            problems.append(f"snapshot inconsistent: {snap}")
        seen.add(manifest.trade_date)

    def reader() -> None:
        client = redis.Redis.from_url(redis_url)
        while not stop.is_set():
            try:
                read_once(client)
            except Exception as exc:  # a missing manifest or snapshot is a failed read too
                problems.append(repr(exc))
            with finished:
                reads[0] += 1
                finished.notify_all()
        client.close()

    def one_whole_read() -> None:
        """Block until the reader has done one read begun after this call: a handshake."""
        with finished:
            target = reads[0] + 2  # the read under way may have begun before this call
            assert finished.wait_for(lambda: reads[0] >= target or stop.is_set(), timeout=30)

    thread = threading.Thread(target=reader)
    thread.start()
    batches = []
    try:
        publish(
            redis_client,
            DAY2,
            "run-2",
            make_snapshots(DAY2, n, base=10.0),
            batch_size=50,
            # After every batch written, the reader reads the served day once, whole.
            _on_progress=lambda stage, written: (batches.append(stage), one_whole_read()),
        )
        one_whole_read()  # and once after the flip
    finally:
        stop.set()
        thread.join(10)

    assert problems == []
    assert seen == {DAY1, DAY2}
    # A whole read after each of the n / batch_size snapshot batches, the scores, the manifest.
    assert batches == ["snapshots"] * (n // 50) + ["scores", "manifest"]


@pytest.mark.parametrize(("stage", "after"), [("snapshots", 500), ("scores", 0), ("manifest", 0)])
def test_a_publish_killed_midway_leaves_the_served_day_intact(redis_client, stage, after):
    prefix = redis_client.test_prefix
    old = make_snapshots(DAY1, 1000)
    served = publish(redis_client, DAY1, "run-1", old)
    before = cache.latest_scores(redis_client, 1000, prefix=prefix)

    with pytest.raises(Killed):
        publish(
            redis_client,
            DAY2,
            "run-2",
            make_snapshots(DAY2, 1000, base=10.0),
            batch_size=250,
            _on_progress=kill_at(stage, after),
        )

    assert cache.latest_manifest(redis_client, prefix=prefix) == served
    assert cache.latest_scores(redis_client, 1000, prefix=prefix) == before
    assert (
        cache.verify(
            redis_client,
            expected_count=1000,
            expected_checksum=cache.checksum(old),
            trade_date=DAY1,
            prefix=prefix,
        )
        == served
    )


def test_the_pointer_refuses_a_version_whose_data_is_incomplete(redis_client):
    prefix = redis_client.test_prefix
    served = publish(redis_client, DAY1, "run-1", make_snapshots(DAY1, 10))
    snapshots = make_snapshots(DAY2, 10)
    version = cache.version_id(DAY2, "run-2", cache.checksum(snapshots))

    def lose_a_snapshot(stage: str, written: int) -> None:  # as an eviction would
        if stage == "manifest":
            redis_client.hdel(cache.version_keys(version, prefix).snapshots, "S00003")

    with pytest.raises(
        cache.CacheVerificationError, match="expected 10 snapshots and 10 scores, found 9 snapshots"
    ):
        publish(redis_client, DAY2, "run-2", snapshots, _on_progress=lose_a_snapshot)

    assert cache.latest_manifest(redis_client, prefix=prefix) == served


# --- idempotency ------------------------------------------------------------------------------


def test_rerunning_the_served_publish_twice_leaves_byte_identical_keys(redis_client):
    prefix = redis_client.test_prefix
    publish(redis_client, DAY1, "run-1", make_snapshots(DAY1, 300))
    first = publish(redis_client, DAY2, "run-2", make_snapshots(DAY2, 300))
    before = key_state(redis_client, prefix)

    reruns = [publish(redis_client, DAY2, "run-2", make_snapshots(DAY2, 300)) for _ in range(2)]

    assert key_state(redis_client, prefix) == before
    assert reruns == [first, first]


def test_rerunning_a_backfill_publish_rewrites_byte_identical_keys(redis_client):
    prefix = redis_client.test_prefix
    publish(redis_client, DAY2, "run-2", make_snapshots(DAY2, 300))
    first = publish(redis_client, DAY_OLD, "backfill", make_snapshots(DAY_OLD, 300))
    before = key_state(redis_client, prefix)

    reruns = [publish(redis_client, DAY_OLD, "backfill", make_snapshots(DAY_OLD, 300))]
    reruns.append(publish(redis_client, DAY_OLD, "backfill", make_snapshots(DAY_OLD, 300)))

    assert key_state(redis_client, prefix) == before
    assert reruns == [first, first]


def test_a_rerun_after_a_killed_publish_leaves_the_keys_of_a_clean_publish(redis_url):
    clean, retried = (redis.Redis.from_url(redis_url) for _ in range(2))
    clean.test_prefix, retried.test_prefix = (f"test:{tag}{time.time_ns()}" for tag in "cr")
    try:
        for client in (clean, retried):
            publish(client, DAY1, "run-1", make_snapshots(DAY1, 400))
        with pytest.raises(Killed):
            publish(
                retried,
                DAY2,
                "run-2",
                make_snapshots(DAY2, 400),
                batch_size=100,
                _on_progress=kill_at("snapshots", 200),
            )

        publish(retried, DAY2, "run-2", make_snapshots(DAY2, 400))
        publish(clean, DAY2, "run-2", make_snapshots(DAY2, 400))

        assert key_state(retried, retried.test_prefix) == key_state(clean, clean.test_prefix)
    finally:
        for client in (clean, retried):
            keys = list(client.scan_iter(match=f"{client.test_prefix}:*"))
            if keys:
                client.delete(*keys)
            client.close()


def test_republishing_a_day_with_different_data_switches_to_a_new_version(redis_client):
    prefix = redis_client.test_prefix
    first = publish(redis_client, DAY1, "run-1", make_snapshots(DAY1, 10))
    repaired_snapshots = make_snapshots(DAY1, 11)  # an operator fixed one symbol and cleared

    repaired = publish(redis_client, DAY1, "run-1", repaired_snapshots)

    assert repaired.version != first.version
    assert cache.latest_manifest(redis_client, prefix=prefix) == repaired
    assert redis_client.ttl(cache.version_keys(first.version, prefix).snapshots) > 0


# --- TTL and backfills ----------------------------------------------------------------------------


def test_replaced_versions_expire_and_the_served_one_never_does(redis_client):
    prefix, ttl = redis_client.test_prefix, 3600
    old = publish(redis_client, DAY1, "run-1", make_snapshots(DAY1, 10), ttl_seconds=ttl)
    new = publish(redis_client, DAY2, "run-2", make_snapshots(DAY2, 10), ttl_seconds=ttl)

    old_ttls = [redis_client.ttl(k) for k in cache.version_keys(old.version, prefix)]
    new_ttls = [redis_client.ttl(k) for k in cache.version_keys(new.version, prefix)]
    pointer_ttl = redis_client.ttl(cache.pointer_key(prefix))

    assert all(0 < t <= ttl for t in old_ttls)
    assert new_ttls == [-1, -1, -1]
    assert pointer_ttl == -1


def test_an_abandoned_partial_version_expires_on_its_own(redis_client):
    prefix = redis_client.test_prefix
    snapshots = make_snapshots(DAY1, 100)
    with pytest.raises(Killed):
        publish(
            redis_client,
            DAY1,
            "run-1",
            snapshots,
            batch_size=25,
            ttl_seconds=600,
            _on_progress=kill_at("snapshots", 50),
        )

    version = cache.version_id(DAY1, "run-1", cache.checksum(snapshots))
    ttl = redis_client.ttl(cache.version_keys(version, prefix).snapshots)

    assert 0 < ttl <= 600


def test_publishing_an_older_day_does_not_move_the_pointer(redis_client):
    prefix = redis_client.test_prefix
    today = publish(redis_client, DAY2, "run-2", make_snapshots(DAY2, 10))

    backfill = publish(redis_client, DAY_OLD, "backfill", make_snapshots(DAY_OLD, 10))

    assert backfill.pointer_moved is False
    assert today.pointer_moved is True
    assert cache.latest_manifest(redis_client, prefix=prefix) == today
    assert redis_client.ttl(cache.version_keys(backfill.version, prefix).manifest) > 0


# --- verify ------------------------------------------------------------------------------------


def verify(client, trade_date, count, digest):
    return cache.verify(
        client,
        expected_count=count,
        expected_checksum=digest,
        trade_date=trade_date,
        prefix=client.test_prefix,
    )


def test_verify_accepts_the_day_as_postgres_has_it(redis_client):
    snapshots = make_snapshots(DAY1, 50)
    published = publish(redis_client, DAY1, "run-1", snapshots)

    # Postgres hands rows back in its own order; the checksum must not care.
    verified = verify(redis_client, DAY1, 50, cache.checksum(list(reversed(snapshots))))

    assert verified == published


def test_unranked_snapshots_are_served_but_kept_out_of_the_ranking(redis_client):
    prefix = redis_client.test_prefix
    snapshots = make_snapshots(DAY1, 5)
    for snap in snapshots[3:]:  # S00003, S00004: warned / not ready
        snap.update(score=None, rank=None, percentile=None, components=None)
        snap["unranked_reasons"] = ["warned: stale_repeats"]

    published = publish(redis_client, DAY1, "run-1", snapshots)

    assert (published.symbol_count, published.ranked_count) == (5, 3)
    top = cache.latest_scores(redis_client, 10, prefix=prefix)
    assert sorted(s for s, _ in top) == ["S00000", "S00001", "S00002"]
    served = cache.symbol_snapshot(redis_client, "S00004", prefix=prefix)
    assert served["rank"] is None and served["unranked_reasons"] == ["warned: stale_repeats"]
    verified = cache.verify(
        redis_client,
        expected_count=5,
        expected_ranked=3,
        expected_checksum=cache.checksum(snapshots),
        trade_date=DAY1,
        prefix=prefix,
    )
    assert verified == published
    with pytest.raises(cache.CacheVerificationError, match="stored scores: expected 5, found 3"):
        verify(redis_client, DAY1, 5, cache.checksum(snapshots))


def test_a_ranked_snapshot_without_a_score_is_refused(redis_client):
    snapshots = make_snapshots(DAY1, 2)
    snapshots[0]["score"] = None

    with pytest.raises(cache.CachePublishError, match="finite score for a ranked snapshot"):
        publish(redis_client, DAY1, "run-1", snapshots)


def test_verify_fails_on_a_symbol_count_mismatch(redis_client):
    snapshots = make_snapshots(DAY1, 50)
    publish(redis_client, DAY1, "run-1", snapshots)

    with pytest.raises(cache.CacheVerificationError, match="symbol_count: expected 51, found 50"):
        verify(redis_client, DAY1, 51, cache.checksum(snapshots))


def test_verify_fails_on_a_checksum_mismatch(redis_client):
    snapshots = make_snapshots(DAY1, 50)
    publish(redis_client, DAY1, "run-1", snapshots)
    snapshots[3]["score"] += 0.001  # Postgres holds a different score than Redis serves

    with pytest.raises(cache.CacheVerificationError, match="manifest checksum: expected"):
        verify(redis_client, DAY1, 50, cache.checksum(snapshots))


def test_verify_catches_a_snapshot_changed_behind_the_manifest(redis_client):
    snapshots = make_snapshots(DAY1, 50)
    published = publish(redis_client, DAY1, "run-1", snapshots)
    key = cache.version_keys(published.version, redis_client.test_prefix).snapshots
    redis_client.hset(key, "S00003", b'{"symbol":"S00003"}')

    with pytest.raises(cache.CacheVerificationError, match="checksum of stored snapshots"):
        verify(redis_client, DAY1, 50, cache.checksum(snapshots))


def test_verify_fails_when_the_pointer_is_on_an_older_day(redis_client):
    snapshots = make_snapshots(DAY1, 5)
    publish(redis_client, DAY1, "run-1", snapshots)

    with pytest.raises(cache.CacheVerificationError, match="expected pointer on trade date"):
        verify(redis_client, DAY2, 5, cache.checksum(snapshots))


def test_verify_fails_when_nothing_is_published(redis_client):
    with pytest.raises(cache.CacheVerificationError, match="found none") as info:
        verify(redis_client, DAY1, 5, "0" * 64)

    assert isinstance(info.value, MarketPipelineError)
    assert info.value.kind == "cache"


def test_verify_checks_a_backfilled_day_through_its_day_key(redis_client):
    publish(redis_client, DAY2, "run-2", make_snapshots(DAY2, 10))
    snapshots = make_snapshots(DAY_OLD, 7)
    backfill = publish(redis_client, DAY_OLD, "backfill", snapshots)

    verified = verify(redis_client, DAY_OLD, 7, cache.checksum(snapshots))

    assert verified.version == backfill.version
    assert verified.pointer_moved is False


# --- input checks ---------------------------------------------------------------------------------


def test_publish_rejects_two_snapshots_of_one_symbol(redis_client):
    snapshots = make_snapshots(DAY1, 3) + make_snapshots(DAY1, 1)

    with pytest.raises(cache.CachePublishError, match="one snapshot per symbol"):
        publish(redis_client, DAY1, "run-1", snapshots)


def test_publish_refuses_to_replace_the_served_day_with_nothing(redis_client):
    with pytest.raises(cache.CachePublishError, match="at least one snapshot"):
        publish(redis_client, DAY1, "run-1", [])


def test_checksum_maps_nan_to_null_like_the_stored_json(redis_client):
    with_nan = [{"symbol": "A", "score": 1.0, "rank": 1, "indicators": {"x": float("nan")}}]
    with_none = [{"symbol": "A", "score": 1.0, "rank": 1, "indicators": {"x": None}}]

    assert cache.checksum(with_nan) == cache.checksum(with_none)


# --- Redis down, password and TLS (a throwaway real server) -------------------------------------


@pytest.fixture
def throwaway_redis(tmp_path):
    server = PrivateRedis(tmp_path, "--requirepass", "s3cret")
    server.start()
    yield server
    server.stop()


def test_publish_fails_transiently_while_redis_is_down_and_completes_after(throwaway_redis):
    client = cache.client_from_params(
        "127.0.0.1", throwaway_redis.port, password="s3cret", retries=1, socket_timeout=2
    )
    publish_kw = {"prefix": "market:v1", "run_id": "run-2"}
    cache.publish(client, trade_date=DAY1, snapshots=make_snapshots(DAY1, 50), **publish_kw)
    throwaway_redis.stop()

    with pytest.raises(cache.CacheUnavailableError) as down:
        cache.publish(client, trade_date=DAY2, snapshots=make_snapshots(DAY2, 50), **publish_kw)
    throwaway_redis.start()
    after = cache.publish(client, trade_date=DAY2, snapshots=make_snapshots(DAY2, 50), **publish_kw)

    assert down.value.kind == "transient"
    assert "Redis unavailable during publish" in str(down.value)
    assert cache.latest_manifest(client) == after
    client.close()


def test_readers_raise_a_transient_error_while_redis_is_down(throwaway_redis):
    client = cache.client_from_params(
        "127.0.0.1", throwaway_redis.port, password="s3cret", retries=0
    )
    throwaway_redis.stop()

    with pytest.raises(cache.CacheUnavailableError):
        cache.latest_scores(client, 5)


def test_a_client_without_the_password_is_refused(throwaway_redis):
    client = cache.client_from_params("127.0.0.1", throwaway_redis.port, retries=0)

    with pytest.raises(ConfigurationError, match="refused the market_cache credentials") as info:
        cache.latest_manifest(client)

    assert info.value.kind != "transient"


@pytest.fixture
def tls_redis(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = PrivateRedis(
        tmp_path,
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(cert),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "s3cret",
    )
    server.port = port
    try:
        server.start()
    except RuntimeError:
        pytest.skip("this redis-server does not serve TLS (built without it?)")
    yield server, cert
    server.stop()


def test_publish_works_over_tls_with_a_password(tls_redis):
    server, ca_cert = tls_redis
    client = cache.client_from_params(
        "127.0.0.1", server.port, password="s3cret", ssl=True, ssl_ca_certs=str(ca_cert)
    )

    published = cache.publish(
        client, trade_date=DAY1, run_id="run-1", snapshots=make_snapshots(DAY1, 5)
    )

    assert cache.latest_manifest(client) == published
    client.close()


# --- Redis Cluster safety --------------------------------------------------------------------


def _script_key_accesses(redis_url: str, action) -> list[tuple[list[str], list[str]]]:
    """Run ``action`` under MONITOR; for each script call, (the keys it declared, the keys its
    commands touched). Redis reports the commands a script runs as from client type ``lua``."""
    marker = f"end-of-monitor-{uuid.uuid4().hex}"
    watcher = redis.Redis.from_url(redis_url)
    calls: list[tuple[list[str], list[str]]] = []
    with watcher.monitor() as monitor:  # MONITOR is on once this returns
        sender = action()
        sender.echo(marker)  # served after everything action sent: the end of our traffic
        for event in monitor.listen():
            words = event["command"].split()
            if marker in words:
                break
            if words and words[0].upper() in ("EVALSHA", "EVAL"):
                calls.append((words[3 : 3 + int(words[2])], []))
            elif event.get("client_type") == "lua" and calls and len(words) > 1:
                calls[-1][1].append(words[1])  # every command our scripts use takes one key
    watcher.close()
    return calls


def test_the_pointer_flip_declares_every_key_it_touches(redis_client, redis_url):
    served = publish(redis_client, DAY1, "run-1", make_snapshots(DAY1, 5))

    def republish():
        publish(redis_client, DAY2, "run-2", make_snapshots(DAY2, 5))
        return redis_client

    calls = _script_key_accesses(redis_url, republish)

    prefix = redis_client.test_prefix
    flips = [
        (declared, touched)
        for declared, touched in calls
        if touched and any(key.startswith(prefix) for key in declared)
    ]
    assert flips, calls
    for declared, touched in flips:
        assert set(touched) <= set(declared), set(touched) - set(declared)
    touched = {key for _, keys in flips for key in keys}
    old = cache.version_keys(served.version, prefix)
    assert {old.manifest, old.scores, old.snapshots} <= touched  # the replaced day expires


def test_the_readers_declare_every_key_they_touch(redis_client, redis_url):
    prefix = redis_client.test_prefix
    served = publish(redis_client, DAY1, "run-1", make_snapshots(DAY1, 5))

    def read():
        assert cache.latest_manifest(redis_client, prefix=prefix).version == served.version
        assert len(cache.latest_scores(redis_client, 3, prefix=prefix)) == 3
        assert cache.symbol_snapshot(redis_client, "S00001", prefix=prefix)["symbol"] == "S00001"
        return redis_client

    calls = _script_key_accesses(redis_url, read)

    reads = [
        (declared, touched)
        for declared, touched in calls
        if touched and any(key.startswith(prefix) for key in declared)
    ]
    assert len(reads) == 3, calls
    for declared, touched in reads:
        assert set(touched) <= set(declared), set(touched) - set(declared)
