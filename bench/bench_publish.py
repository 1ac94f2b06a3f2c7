"""Time cache.publish() for a wide universe against a plain pipelined SET of the same data.

    .venv/bin/python bench/bench_publish.py [--symbols 5000] [--repeat 5] [--url redis://...]

Both sides run in this process against the same Redis, interleaved, under a throwaway key
prefix that is deleted afterwards. Baselines:
  * ``set_only``: pipelined SET of payloads serialised beforehand (pure write cost);
  * ``dumps_set``: ``json.dumps`` each snapshot, then pipelined SET (what a naive
    publisher does end to end: the fair comparison for publish(), which serialises too).
``canonical_serialise`` times ``cache.checksum`` alone: the share of publish() spent on
sorted-key JSON and sha256, so publish's Redis work can be compared with ``set_only``.
Prints medians and ratios; writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

from market_pipeline import cache
from market_pipeline.indicators import INDICATOR_COLUMNS

#: A snapshot carries the pipeline's own indicator columns.
INDICATORS = INDICATOR_COLUMNS
RULES = (
    "trend_sma_cross",
    "rsi_reversal",
    "macd_cross",
    "bollinger_breakout",
    "volatility_squeeze",
)


def make_snapshots(n: int, trade_date: date, seed: int = 7) -> list[dict]:
    """n snapshots shaped like the scoring stage's output (12 indicators, 5 signals)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        close = rng.uniform(5, 900)
        indicators = {name: close * rng.uniform(0.8, 1.2) for name in INDICATORS}
        indicators["rsi_14"] = rng.uniform(5, 95)
        signals = [
            {
                "rule": rule,
                "direction": rng.choice(("long", "short", "flat")),
                "strength": round(rng.random(), 6),
                "ready": rng.random() > 0.05,
                "reasons": [
                    f"{rule}: close {close:.2f} vs sma_50 {indicators['sma_50']:.2f}",
                    f"rsi_14={indicators['rsi_14']:.1f}",
                ],
            }
            for rule in RULES
        ]
        score = rng.uniform(-1, 1)
        out.append(
            {
                "symbol": f"SYM{i:05d}",
                "trade_date": trade_date.isoformat(),
                "close": close,
                "indicators": indicators,
                "signals": signals,
                "score": score,
                "rank": 0,
                "percentile": 0.0,
                "components": {rule: rng.uniform(-1, 1) for rule in RULES},
            }
        )
    ranked = sorted(out, key=lambda s: (-s["score"], s["symbol"]))
    for rank, snap in enumerate(ranked, 1):
        snap["rank"], snap["percentile"] = rank, 1 - (rank - 1) / n
    return out


def baseline(client, prefix: str, payloads: list[tuple[str, bytes]]) -> None:
    pipe = client.pipeline(transaction=False)
    for symbol, payload in payloads:
        pipe.set(f"{prefix}:plain:{symbol}", payload)
    pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--url",
        default=os.environ.get("AIRFLOW_CONN_MARKET_CACHE", "redis://127.0.0.1:6379/1"),
    )
    args = parser.parse_args()

    client = cache.client_from_url(args.url)
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    snapshots = make_snapshots(args.symbols, date(2024, 11, 29))
    payload_bytes = sum(len(cache.serialise_snapshot(s)) for s in snapshots)
    times: dict[str, list[float]] = {
        "publish": [],
        "set_only": [],
        "dumps_set": [],
        "canonical_serialise": [],
    }
    try:
        for rep in range(args.repeat):
            day = date(2024, 1, 1) + timedelta(days=rep)  # a new day each time: a real publish
            for snap in snapshots:
                snap["trade_date"] = day.isoformat()
            pre = [(s["symbol"], json.dumps(s).encode()) for s in snapshots]

            t0 = time.perf_counter()
            baseline(client, prefix, pre)
            times["set_only"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            baseline(client, prefix, [(s["symbol"], json.dumps(s).encode()) for s in snapshots])
            times["dumps_set"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            cache.checksum(snapshots)  # the serialisation + hash share of publish()
            times["canonical_serialise"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            cache.publish(
                client, trade_date=day, run_id=f"bench-{rep}", snapshots=snapshots, prefix=prefix
            )
            times["publish"].append(time.perf_counter() - t0)
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])

    med = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "symbols": args.symbols,
        "repeat": args.repeat,
        "payload_mb": round(payload_bytes / 1e6, 2),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "all_s": {k: [round(v, 4) for v in vs] for k, vs in times.items()},
        "ratio_publish_vs_dumps_set": round(med["publish"] / med["dumps_set"], 2),
        "ratio_publish_vs_set_only": round(med["publish"] / med["set_only"], 2),
        # publish() minus its serialisation: its Redis work on the same bytes vs plain SET
        "ratio_publish_io_vs_set_only": round(
            (med["publish"] - med["canonical_serialise"]) / med["set_only"], 2
        ),
        "redis": client.info("server")["redis_version"],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    client.close()
    print(f"{args.symbols} symbols, {result['payload_mb']} MB of JSON, median of {args.repeat}:")
    for name, value in med.items():
        print(f"  {name:<20} {value * 1000:8.1f} ms")
    print(
        f"  publish / (json.dumps + SET) = {result['ratio_publish_vs_dumps_set']}x  (target <= 2)"
    )
    print(f"  publish / SET of pre-serialised payloads = {result['ratio_publish_vs_set_only']}x")
    print(
        "  (publish - canonical_serialise) / SET of pre-serialised payloads = "
        f"{result['ratio_publish_io_vs_set_only']}x"
    )
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"publish-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  written to {out}")


if __name__ == "__main__":
    main()
