"""The run's Settings: each Variable read once, on first use, and a bad value named."""

from __future__ import annotations

import pytest

from market_pipeline.stages.settings import Settings


def test_settings_read_each_variable_once_on_first_use_and_name_a_bad_value():
    reads: list[str] = []
    values = {"market_quorum": "0.9", "market_max_move": "lots"}

    def read(name: str) -> str:
        reads.append(name)
        return values[name]

    settings = Settings(read=read)
    assert settings.quorum == settings.quorum == 0.9
    assert reads == ["market_quorum"]
    with pytest.raises(ValueError, match="Variable market_max_move must be a number, found 'lots'"):
        _ = settings.max_move
    # 0 sessions of history means the default history.
    assert Settings(read={"market_history_sessions": "0"}.__getitem__).history_sessions == 600


def test_settings_given_by_name_override_the_documented_defaults():
    settings = Settings(exchange="XLON", schema="s1")

    assert (settings.exchange, settings.quorum, settings.schema) == ("XLON", 0.95, "s1")
    with pytest.raises(TypeError, match="unknown settings \\['exchanges'\\]"):
        Settings(exchanges="XNYS")
