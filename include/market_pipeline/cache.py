"""The Redis serving copy: versioned day snapshots behind one atomically switched pointer.

Postgres is the truth; Redis is what readers use. :func:`publish` writes a day under keys
no reader can reach yet, then flips the ``latest`` pointer in one Lua script, so a reader
sees either the previous complete day or the new complete day, never a mix. Key layout,
atomicity argument, TTL policy and the reader contract: ``docs/cache.md``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from market_pipeline.config import CACHE_CONN_ID, CACHE_PREFIX
from market_pipeline.errors import ConfigurationError, MarketPipelineError

KEY_PREFIX = CACHE_PREFIX
DEFAULT_TTL_SECONDS = 7 * 86400
DEFAULT_BATCH_SIZE = 500

_CREDENTIAL_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.AuthenticationError,
    redis.exceptions.AuthorizationError,
    redis.exceptions.AuthenticationWrongNumberOfArgsError,
    redis.exceptions.NoPermissionError,
)

# Errors a retry can fix: the server is down, restarting, loading, failing over or slow.
_TRANSIENT_REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica promoted mid-failover
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.MasterDownError,
    TimeoutError,
)


class CacheUnavailableError(MarketPipelineError):
    """Redis could not be reached or answered too slowly; retrying later can succeed."""

    kind = "transient"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class CacheVerificationError(MarketPipelineError):
    """The served cache is missing, incomplete or disagrees with Postgres."""

    kind = "cache"


class CachePublishError(MarketPipelineError):
    """The snapshots handed to :func:`publish` cannot be published (a caller's defect)."""

    kind = "code"


@dataclass(frozen=True)
class Manifest:
    """What one published version holds; stored as JSON beside the version's data.

    ``pointer_moved`` is not stored: it says whether, after the publish, the ``latest``
    pointer names this version (False for a backfill older than the served day).
    """

    trade_date: date
    run_id: str
    version: str
    symbol_count: int
    checksum: str
    pointer_moved: bool = False
    #: How many of the snapshots are ranked (in the scores sorted set); None: all of them
    #: (a manifest stored before unranked snapshots existed).
    ranked_count: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (for XCom and logs)."""
        out = asdict(self)
        out["trade_date"] = self.trade_date.isoformat()
        return out

    def stored_bytes(self) -> bytes:
        """The canonical JSON stored under the manifest key (no wall-clock fields)."""
        stored = self.to_dict()
        del stored["pointer_moved"]
        return _dumps(stored)

    @classmethod
    def from_stored(cls, raw: bytes | str, *, pointer_moved: bool) -> Manifest:
        """Parse the stored manifest JSON."""
        data = json.loads(raw)
        return cls(
            trade_date=date.fromisoformat(data["trade_date"]),
            run_id=data["run_id"],
            version=data["version"],
            symbol_count=int(data["symbol_count"]),
            checksum=data["checksum"],
            pointer_moved=pointer_moved,
            ranked_count=int(data.get("ranked_count", data["symbol_count"])),
        )


class VersionKeys(NamedTuple):
    """The keys of one published version."""

    manifest: str
    scores: str
    snapshots: str


def pointer_key(prefix: str = CACHE_PREFIX) -> str:
    """The one key readers start from: it holds the served version id."""
    return f"{prefix}:latest"


def day_key(trade_date: date, prefix: str = CACHE_PREFIX) -> str:
    """The key naming the version last published for ``trade_date`` (served or not)."""
    return f"{prefix}:day:{trade_date.isoformat()}"


def version_keys(version: str, prefix: str = CACHE_PREFIX) -> VersionKeys:
    """The data keys of ``version``."""
    base = f"{prefix}:v:{version}"
    return VersionKeys(f"{base}:manifest", f"{base}:scores", f"{base}:snapshots")


def version_id(trade_date: date, run_id: str, checksum: str) -> str:
    """Deterministic version id: same day, run and content give the same keys.

    The trade date leads (ISO, so ids compare in date order); the content checksum is part
    of it so a rerun that publishes different data never rewrites keys readers may be on.
    """
    run_tag = hashlib.sha256(run_id.encode()).hexdigest()[:10]
    return f"{trade_date.isoformat()}.{run_tag}.{checksum[:16]}"


# --- canonical serialisation -------------------------------------------------------------


def _default(value: Any) -> Any:
    # Types json cannot encode natively but that arrive from pandas/numpy/psycopg2.
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__} in a cache snapshot")


def _dumps(value: Any) -> bytes:
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_default,
    ).encode()


def _finite(value: Any) -> Any:
    """Replace NaN/±inf (anywhere in a nested value) by None, as JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return _finite(value.item())
    if isinstance(value, Decimal):
        return _finite(float(value))
    return value


def serialise_snapshot(snapshot: Mapping[str, Any]) -> bytes:
    """Canonical JSON of one snapshot: sorted keys, compact, floats in Python's shortest
    round-trip repr (bit-exact with Postgres ``double precision``), NaN/inf as null."""
    try:
        return _dumps(snapshot)
    except ValueError:  # a NaN or inf somewhere: the rare slow path
        return _dumps(_finite(snapshot))


def _canonical_items(
    snapshots: Iterable[Mapping[str, Any]],
) -> list[tuple[str, bytes, float | None]]:
    """(symbol, canonical bytes, score) sorted by symbol; rejects duplicates and gaps.

    A snapshot whose ``rank`` is null is served unranked: its score may be null too, and it
    is kept out of the scores sorted set (the ranking)."""
    items: list[tuple[str, bytes, float | None]] = []
    for snap in snapshots:
        symbol = snap.get("symbol")
        if not isinstance(symbol, str) or not symbol:
            raise CachePublishError(
                f"expected a non-empty 'symbol' in every snapshot, found {symbol!r}"
            )
        score = snap.get("score")
        ranked = "rank" not in snap or snap["rank"] is not None
        if not ranked:
            items.append((symbol, serialise_snapshot(snap), None))
            continue
        if score is None or (isinstance(score, float) and not math.isfinite(score)):
            raise CachePublishError(
                f"expected a finite score for a ranked snapshot, found {score!r}", symbol=symbol
            )
        items.append((symbol, serialise_snapshot(snap), float(score)))
    items.sort(key=lambda item: item[0])
    for (a, _, _), (b, _, _) in itertools.pairwise(items):
        if a == b:
            raise CachePublishError("expected one snapshot per symbol, found two", symbol=a)
    return items


def _checksum_of(serialised: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for i, payload in enumerate(serialised):
        if i:
            digest.update(b"\n")
        digest.update(payload)
    return digest.hexdigest()


def checksum(snapshots: Iterable[Mapping[str, Any]]) -> str:
    """sha256 over the canonical JSON of the snapshots sorted by symbol, joined by newlines.

    The verify task computes it from Postgres; it equals what :func:`publish` stored when
    both sides build the same snapshots.
    """
    return _checksum_of(payload for _, payload, _ in _canonical_items(snapshots))


# --- clients --------------------------------------------------------------------------------


#: Client bounds of every Redis connection, in seconds (README "Configuration reference";
#: docs/operations.md). Each can be set in the ``market_cache`` connection's extra.
REDIS_TIMEOUTS: dict[str, float] = {
    # Give up on a server that does not accept the connection.
    "socket_connect_timeout": 5,
    # Give up on a reply: a frozen server (SIGSTOP, a stalled disk) fails the call after this
    # long, once; a timeout is never retried inside the try (Airflow's retry policy is).
    "socket_timeout": 10,
    # PING a pooled connection idle this long before reusing it.
    "health_check_interval": 30,
}
#: Reconnects inside one call after a dropped connection or a refused connect.
REDIS_RECONNECTS = 3


def _retry(retries: int) -> Retry:
    # Rides out a blip (a dropped socket, a failover) inside one task try; anything longer
    # surfaces as CacheUnavailableError and Airflow's retry policy takes over. Only
    # connection errors are retried: redis-py nests this retry (each command's reconnect
    # runs its own), so retrying timeouts too made a frozen server cost
    # (retries + 1)² × socket_timeout per call (2 min 40 s) instead of socket_timeout.
    return Retry(
        ExponentialWithJitterBackoff(base=0.1, cap=2.0),
        retries,
        supported_errors=(redis.exceptions.ConnectionError,),
    )


def _bounded(kw: dict[str, Any]) -> dict[str, Any]:
    for key, seconds in REDIS_TIMEOUTS.items():
        kw.setdefault(key, seconds)
    kw.setdefault("socket_keepalive", True)
    kw.setdefault("retry_on_timeout", False)
    return kw


def client_from_url(url: str, *, retries: int = REDIS_RECONNECTS, **kw: Any) -> redis.Redis:
    """A client for ``redis://`` or ``rediss://`` (TLS) URLs, e.g. an Airflow connection URI,
    with the bounds of :data:`REDIS_TIMEOUTS`."""
    return redis.Redis.from_url(url, retry=_retry(retries), **_bounded(kw))


def client_from_params(
    host: str,
    port: int,
    db: int = 0,
    password: str | None = None,
    ssl: bool = False,
    ssl_ca_certs: str | None = None,
    username: str | None = None,
    *,
    retries: int = REDIS_RECONNECTS,
    **kw: Any,
) -> redis.Redis:
    """A client from the parts of an Airflow connection (credentials come only from there),
    with the bounds of :data:`REDIS_TIMEOUTS`."""
    if ssl:
        kw.setdefault("ssl_ca_certs", ssl_ca_certs)
    return redis.Redis(
        host=host,
        port=port,
        db=db,
        username=username,
        password=password,
        ssl=ssl,
        retry=_retry(retries),
        **_bounded(kw),
    )


@contextmanager
def _transient(action: str, trade_date: date | None = None) -> Iterator[None]:
    try:
        yield
    except _CREDENTIAL_ERRORS as exc:  # subclasses of ConnectionError, but no retry fixes them
        raise ConfigurationError(
            f"Redis refused the {CACHE_CONN_ID} credentials during {action}: "
            f"expected a login, got {type(exc).__name__}: {exc}",
            session=trade_date,
            cause=repr(exc),
        ) from exc
    except _TRANSIENT_REDIS_ERRORS as exc:
        raise CacheUnavailableError(
            f"Redis unavailable during {action}: expected a reply, got {type(exc).__name__}: {exc}",
            session=trade_date,
            cause=repr(exc),
        ) from exc


# --- publish ----------------------------------------------------------------------------------

# Switches the pointer; the only write readers depend on. Runs atomically on the server.
# Every key it touches is declared in KEYS (Redis Cluster requires that of a script):
#   1 pointer, 2 the new version's day key, 3-5 its manifest, scores, snapshots;
#   when another version is served: 6-8 that version's manifest, scores, snapshots, 9 its day key.
# ARGV: new version, ttl, expected symbol count, the served version the caller read ('' none),
# expected ranked count (members of the scores sorted set).
# The caller derived keys 6-9 from the pointer it read; if the pointer moved since, the script
# changes nothing and answers {-1, served} so the caller retries with the new keys.
# Refuses to serve a version whose data is incomplete. Never moves the pointer to an older
# trade date (version ids start with the ISO date).
_FLIP_LUA = """
local new, ttl, n, seen = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local ranked = tonumber(ARGV[5])
local cur = redis.call('GET', KEYS[1])
if (cur or '') ~= seen then return {-1, cur or false} end
if redis.call('EXISTS', KEYS[3]) == 0 then
  return redis.error_reply('INCOMPLETE manifest of ' .. new .. ' missing')
end
local zcard, hlen = redis.call('ZCARD', KEYS[4]), redis.call('HLEN', KEYS[5])
if zcard ~= ranked or hlen ~= n then
  return redis.error_reply('INCOMPLETE ' .. new .. ': expected ' .. n .. ' snapshots and '
    .. ranked .. ' scores, found ' .. hlen .. ' snapshots and ' .. zcard .. ' scores')
end
local newday = string.sub(new, 1, 10)
if cur and newday < string.sub(cur, 1, 10) then
  for i = 3, 5 do redis.call('EXPIRE', KEYS[i], ttl) end
  redis.call('SET', KEYS[2], new, 'EX', ttl)
  return {0, cur}
end
if cur and cur ~= new then
  for i = 6, 8 do redis.call('EXPIRE', KEYS[i], ttl) end
  if KEYS[9] ~= KEYS[2] then redis.call('EXPIRE', KEYS[9], ttl) end
end
redis.call('SET', KEYS[1], new)
redis.call('SET', KEYS[2], new)
for i = 3, 5 do redis.call('PERSIST', KEYS[i]) end
return {1, cur or false}
"""
#: How often a flip is retried when another publish moves the pointer between the read of
#: the served version and the flip (``max_active_runs=1`` makes even one retry rare).
_FLIP_ATTEMPTS = 5


def publish(
    client: redis.Redis,
    *,
    trade_date: date,
    run_id: str,
    snapshots: list[dict],
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    prefix: str = CACHE_PREFIX,
    batch_size: int = DEFAULT_BATCH_SIZE,
    _on_progress: Callable[[str, int], None] | None = None,
) -> Manifest:
    """Publish one day's snapshots and switch readers to them atomically.

    Writes the version's snapshots (hash), scores (sorted set) and manifest, in that order,
    through pipelines, then flips the ``latest`` pointer with one Lua script. Publishing an
    older trade date than the served one stores it but leaves the pointer where it is
    (``pointer_moved=False``). A rerun with the same inputs writes byte-identical keys.

    ``_on_progress(stage, symbols_written)`` is a test-only hook called after each write
    batch reaches Redis (stages ``snapshots``, ``scores``, ``manifest``); raising from it
    simulates a publish killed midway.

    Raises :class:`CacheUnavailableError` when Redis cannot be reached (retry later) and
    :class:`CachePublishError` for snapshots that cannot be published.
    """
    if ttl_seconds < 60:
        raise CachePublishError(f"expected ttl_seconds >= 60, found {ttl_seconds}")
    if not snapshots:
        raise CachePublishError(
            "expected at least one snapshot; refusing to replace the served day with nothing",
            session=trade_date,
        )
    for snap in snapshots:
        found = snap.get("trade_date")
        if found is not None and str(found)[:10] != trade_date.isoformat():
            raise CachePublishError(
                f"expected snapshot trade_date {trade_date.isoformat()}, found {found}",
                symbol=snap.get("symbol"),
                session=trade_date,
            )
    items = _canonical_items(snapshots)
    digest = _checksum_of(payload for _, payload, _ in items)
    version = version_id(trade_date, run_id, digest)
    keys = version_keys(version, prefix)
    ranked = sum(1 for _, _, score in items if score is not None)
    manifest = Manifest(trade_date, run_id, version, len(items), digest, ranked_count=ranked)

    with _transient(f"publish of {version}", trade_date):
        served = client.get(pointer_key(prefix))
        # Versions are content-addressed and only served once complete: a rerun of the
        # served version has nothing to write, and writing would put a TTL on served keys.
        if served is None or served.decode() != version:
            _write_version(client, keys, manifest, items, ttl_seconds, batch_size, _on_progress)
        flip = client.register_script(_FLIP_LUA)
        seen = None if served is None else served.decode()
        for _attempt in range(_FLIP_ATTEMPTS):
            flip_keys = [pointer_key(prefix), day_key(trade_date, prefix), *keys]
            if seen is not None and seen != version:
                flip_keys += [*version_keys(seen, prefix), f"{prefix}:day:{seen[:10]}"]
            try:
                moved, previous = flip(
                    keys=flip_keys,
                    args=[version, ttl_seconds, len(items), seen or "", ranked],
                )
            except redis.exceptions.ResponseError as exc:
                if "INCOMPLETE" not in str(exc):
                    raise
                raise CacheVerificationError(
                    f"refused to switch the pointer: {exc}", session=trade_date
                ) from exc
            if moved != -1:
                break
            seen = None if previous is None else previous.decode()
        else:
            raise CacheUnavailableError(
                f"expected the pointer to hold still for the flip of {version}, found it moved "
                f"{_FLIP_ATTEMPTS} times (another publish running?)",
                session=trade_date,
            )
    return Manifest(
        trade_date,
        run_id,
        version,
        len(items),
        digest,
        pointer_moved=bool(moved),
        ranked_count=ranked,
    )


def _write_version(
    client: redis.Redis,
    keys: VersionKeys,
    manifest: Manifest,
    items: list[tuple[str, bytes, float | None]],
    ttl_seconds: int,
    batch_size: int,
    on_progress: Callable[[str, int], None] | None,
) -> None:
    # Unreachable until the flip, so no transaction is needed. Every key carries the TTL
    # from its first write: an abandoned partial version cleans itself up; the flip
    # PERSISTs the version it serves.
    written = 0
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        pipe = client.pipeline(transaction=False)
        pipe.hset(keys.snapshots, mapping={symbol: payload for symbol, payload, _ in batch})
        pipe.expire(keys.snapshots, ttl_seconds)
        pipe.execute()
        written += len(batch)
        if on_progress:
            on_progress("snapshots", written)
    pipe = client.pipeline(transaction=False)
    ranked = [(symbol, score) for symbol, _, score in items if score is not None]
    for start in range(0, len(ranked), batch_size * 4):
        pipe.zadd(keys.scores, dict(ranked[start : start + batch_size * 4]))
    pipe.expire(keys.scores, ttl_seconds)
    pipe.execute()
    if on_progress:
        on_progress("scores", written)
    client.set(keys.manifest, manifest.stored_bytes(), ex=ttl_seconds)
    if on_progress:
        on_progress("manifest", written)


# --- verify -------------------------------------------------------------------------------


def verify(
    client: redis.Redis,
    *,
    expected_count: int,
    expected_checksum: str,
    trade_date: date,
    prefix: str = CACHE_PREFIX,
    expected_ranked: int | None = None,
) -> Manifest:
    """Read the day back and check it against what Postgres says it should be.

    Resolves through the ``latest`` pointer when it names ``trade_date``; when the pointer
    holds a later day (a backfill, which never moves it) through that day's key. Recomputes
    the checksum from the stored snapshots, so a manifest that lies is caught too. Raises
    :class:`CacheVerificationError` naming every expected/found mismatch.
    ``expected_ranked``: how many snapshots are ranked (in the scores sorted set); default
    all of them.
    """
    if expected_ranked is None:
        expected_ranked = expected_count
    day = trade_date.isoformat()
    with _transient(f"verify of {day}", trade_date):
        pointer = client.get(pointer_key(prefix))
        if pointer is None:
            raise CacheVerificationError(
                f"expected pointer {pointer_key(prefix)} to name a version, found none",
                session=trade_date,
            )
        version = pointer.decode()
        served = version[:10] == day
        if not served:
            if version[:10] < day:
                raise CacheVerificationError(
                    f"expected pointer on trade date {day} or later, found version {version}",
                    session=trade_date,
                )
            by_day = client.get(day_key(trade_date, prefix))
            if by_day is None:
                raise CacheVerificationError(
                    f"expected a published version for {day} (pointer is on {version}), found none",
                    session=trade_date,
                )
            version = by_day.decode()
        keys = version_keys(version, prefix)
        pipe = client.pipeline(transaction=False)
        pipe.get(keys.manifest)
        pipe.hgetall(keys.snapshots)
        pipe.zrange(keys.scores, 0, -1, withscores=True)
        raw_manifest, stored, scores = pipe.execute()

    if raw_manifest is None:
        raise CacheVerificationError(
            f"expected manifest {keys.manifest}, found none", session=trade_date
        )
    manifest = Manifest.from_stored(raw_manifest, pointer_moved=served)
    ordered = sorted(stored.items())
    found_checksum = _checksum_of(payload for _, payload in ordered)
    problems = [
        f"{what}: expected {want}, found {got}"
        for what, want, got in (
            ("manifest trade_date", day, manifest.trade_date.isoformat()),
            ("manifest symbol_count", expected_count, manifest.symbol_count),
            ("stored snapshots", expected_count, len(stored)),
            ("manifest ranked_count", expected_ranked, manifest.ranked_count),
            ("stored scores", expected_ranked, len(scores)),
            ("manifest checksum", expected_checksum, manifest.checksum),
            ("checksum of stored snapshots", expected_checksum, found_checksum),
        )
        if want != got
    ]
    zset_symbols = {member for member, _ in scores}
    if not zset_symbols <= set(stored):
        diff = sorted(s.decode() for s in zset_symbols - set(stored))[:5]
        problems.append(f"scores name symbols without a snapshot, e.g. {diff}")
    if problems:
        raise CacheVerificationError(
            f"cache version {version} disagrees with Postgres: " + "; ".join(problems),
            session=trade_date,
        )
    return manifest


# --- readers: the contract a read-only API uses ---------------------------------------------

# Each reader reads the version the pointer names in one server-side step, so a single call
# never mixes two versions. The caller reads the pointer first and declares the version's key
# in KEYS (as Redis Cluster requires of a script: 1 pointer, 2 the key read); the script checks
# the pointer still names that version, else answers {false, served} and the caller retries.
_LATEST_SCORES_LUA = """
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] then return {false, v} end
local n = tonumber(ARGV[2])
local top = redis.call('ZREVRANGE', KEYS[2], 0, n - 1, 'WITHSCORES')
local ties = {}
if #top == 2 * n then
  local last = top[#top]
  ties = redis.call('ZRANGEBYSCORE', KEYS[2], last, last)
end
return {v, top, ties}
"""

_GET_FROM_LATEST_LUA = """
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] then return {false, v} end
if ARGV[2] == '' then return {v, redis.call('GET', KEYS[2])} end
return {v, redis.call('HGET', KEYS[2], ARGV[2])}
"""

#: How often a reader retries when the pointer moves between its read and the script.
_READ_ATTEMPTS = 5


def _read_latest(client: redis.Redis, script: str, suffix: str, args: list, prefix: str):
    """Run a reader script on the served version's ``suffix`` key: its reply, or None when
    nothing is served."""
    runner = client.register_script(script)
    served = client.get(pointer_key(prefix))
    for _attempt in range(_READ_ATTEMPTS):
        if served is None:
            return None
        version = served.decode()
        found = runner(
            keys=[pointer_key(prefix), f"{prefix}:v:{version}{suffix}"], args=[version, *args]
        )
        if found[0] is not None:
            return found
        served = found[1] if len(found) > 1 else None
    raise CacheUnavailableError(
        f"expected the pointer to hold still for a read, found it moved {_READ_ATTEMPTS} times"
    )


def latest_scores(
    client: redis.Redis, n: int = 10, prefix: str = CACHE_PREFIX
) -> list[tuple[str, float]]:
    """The ``n`` best (symbol, score) of the served day, highest first, ties by symbol."""
    if n <= 0:
        return []
    with _transient("read of latest scores"):
        found = _read_latest(client, _LATEST_SCORES_LUA, ":scores", [n], prefix)
    if not found:
        return []
    _version, top, ties = found
    pairs = {top[i].decode(): float(top[i + 1]) for i in range(0, len(top), 2)}
    if ties:
        boundary = float(top[-1])
        pairs.update({member.decode(): boundary for member in ties})
    return sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def _get_from_latest(
    client: redis.Redis, suffix: str, field: str, prefix: str
) -> tuple[str, bytes | None] | None:
    with _transient("read of the served version"):
        found = _read_latest(client, _GET_FROM_LATEST_LUA, suffix, [field], prefix)
    if not found:
        return None
    version, raw = found
    return version.decode(), raw


def symbol_snapshot(
    client: redis.Redis, symbol: str, prefix: str = CACHE_PREFIX
) -> dict[str, Any] | None:
    """The served day's snapshot of ``symbol``, or None when it has none (or nothing is served)."""
    if not symbol:
        return None
    found = _get_from_latest(client, ":snapshots", symbol, prefix)
    if found is None or found[1] is None:
        return None
    return json.loads(found[1])


def latest_manifest(client: redis.Redis, prefix: str = CACHE_PREFIX) -> Manifest | None:
    """The manifest of the served version, or None when nothing has been published."""
    found = _get_from_latest(client, ":manifest", "", prefix)
    if found is None or found[1] is None:
        return None
    return Manifest.from_stored(found[1], pointer_moved=True)


# --- repair: what a lost or partial serving copy looks like -------------------------------


def served_problem(client: redis.Redis, prefix: str = CACHE_PREFIX) -> str | None:
    """Why the serving copy cannot be read (None when it can): the pointer is missing (Redis
    restarted without its data, or was flushed), or the version it names is incomplete (its
    manifest, scores or snapshots are gone or disagree with the manifest's symbol count).

    The cure is a rebuild from Postgres (``market_pipeline.stages.rebuild_cache``).
    """
    with _transient("check of the served version"):
        pointer = client.get(pointer_key(prefix))
        if pointer is None:
            return f"pointer {pointer_key(prefix)} names no version"
        version = pointer.decode()
        keys = version_keys(version, prefix)
        pipe = client.pipeline(transaction=False)
        pipe.get(keys.manifest)
        pipe.zcard(keys.scores)
        pipe.hlen(keys.snapshots)
        raw_manifest, zcard, hlen = pipe.execute()
    if raw_manifest is None:
        return f"served version {version} has no manifest"
    manifest = Manifest.from_stored(raw_manifest, pointer_moved=True)
    count, ranked = manifest.symbol_count, manifest.ranked_count
    if zcard != ranked or hlen != count:
        return (
            f"served version {version} is incomplete: expected {count} symbols ({ranked} "
            f"ranked), found {zcard} scores and {hlen} snapshots"
        )
    return None
