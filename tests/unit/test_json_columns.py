"""What the jsonb columns receive (verdicts, signal reasons, score components)."""

from __future__ import annotations

import json
from datetime import date

import numpy as np

from market_pipeline.store.rows import result_json


def test_strict_json_is_written_as_it_is_with_keys_sorted_on_request():
    value = {"b": [1, 2.5, "x"], "a": {"d": None, "c": True}}
    assert result_json(value) == json.dumps(value)
    assert result_json(value, sort_keys=True) == '{"a": {"c": true, "d": null}, "b": [1, 2.5, "x"]}'


def test_values_json_cannot_hold_become_null_text_or_python_numbers():
    value = {
        "nan": float("nan"),
        "inf": np.float64("inf"),
        "day": date(2024, 12, 2),
        "count": np.int64(3),
        "flag": np.bool_(True),
        "ratio": np.float64(0.25),
    }
    for sort_keys in (False, True):
        assert json.loads(result_json(value, sort_keys=sort_keys)) == {
            "nan": None,
            "inf": None,
            "day": "2024-12-02",
            "count": 3,
            "flag": True,
            "ratio": 0.25,
        }
    assert list(json.loads(result_json(value, sort_keys=True))) == sorted(value)
