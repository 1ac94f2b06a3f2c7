"""make_source: the market_source variable's name to a bar source."""

from __future__ import annotations

import pytest

from market_pipeline.errors import ConfigurationError
from market_pipeline.sources.file_drop import FileDropSource
from market_pipeline.sources.registry import make_source, vendor_settings_from_connection
from market_pipeline.sources.vendor import DEFAULT_BASE_URL, PolygonAggregatesSource


def test_file_drop_is_built_on_the_given_folder(tmp_path):
    source = make_source("file_drop", path=str(tmp_path))

    assert isinstance(source, FileDropSource)
    assert source.path == tmp_path


def test_file_drop_without_a_folder_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="market_source_path"):
        make_source("file_drop")


def test_polygon_takes_base_url_key_and_client_options():
    source = make_source("polygon", base_url="http://127.0.0.1:9/", api_key="k", timeout=2.5)

    assert isinstance(source, PolygonAggregatesSource)
    assert source.base_url == "http://127.0.0.1:9"
    assert source.timeout == 2.5


def test_polygon_defaults_to_the_public_api_host():
    assert make_source("polygon", api_key="k").base_url == DEFAULT_BASE_URL


def test_polygon_without_an_api_key_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="market_source connection"):
        make_source("polygon", base_url="http://127.0.0.1:9")


def test_synthetic_is_imported_only_when_chosen():
    source = make_source("synthetic")

    assert source.name == "synthetic"


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigurationError, match="synthetic, file_drop, polygon"):
        make_source("bloomberg")


def test_connection_fields_become_base_url_and_key():
    settings = vendor_settings_from_connection(
        host="api.polygon.io", password="k", schema="https", port=8443
    )

    assert settings == {"base_url": "https://api.polygon.io:8443", "api_key": "k"}


def test_a_host_with_a_scheme_is_used_as_is_and_the_key_may_live_in_extra():
    settings = vendor_settings_from_connection(
        host="http://127.0.0.1:8765/", extra='{"api_key": "k2", "timeout": 3}'
    )

    assert settings == {"base_url": "http://127.0.0.1:8765", "api_key": "k2", "timeout": 3.0}


def test_a_base_url_without_a_scheme_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="http:// or https://"):
        make_source("polygon", base_url="api.polygon.io", api_key="k")
