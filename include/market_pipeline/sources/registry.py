"""Choose a bar source by name (the ``market_source`` variable)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from market_pipeline.errors import ConfigurationError
from market_pipeline.sources.base import BarSource

#: Source names ``make_source`` accepts ("massive" is Polygon's new name, same API).
SOURCE_NAMES = ("synthetic", "file_drop", "polygon", "massive")


def make_source(
    name: str,
    *,
    path: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    **options,
) -> BarSource:
    """Build the source called ``name``.

    ``synthetic`` takes ``options`` as :class:`SyntheticSource` keyword arguments;
    ``file_drop`` needs ``path`` (the drop folder); ``polygon`` needs ``api_key`` and takes
    ``base_url`` (default ``https://api.polygon.io``) plus client ``options`` such as
    ``timeout``.
    """
    key = (name or "").strip().lower()
    if key == "synthetic":
        # Imported here: the synthetic module is only needed when it is the chosen source.
        from market_pipeline.sources.synthetic import SyntheticSource

        return SyntheticSource(**options)
    if key == "file_drop":
        if not path:
            raise ConfigurationError(
                "expected a drop folder for source file_drop (variable market_source_path), "
                "found none"
            )
        from market_pipeline.sources.file_drop import FileDropSource

        return FileDropSource(path, **options)
    if key in ("polygon", "massive"):
        if not api_key:
            raise ConfigurationError(
                f"expected an API key for source {key} (password of the market_source "
                "connection), found none"
            )
        from market_pipeline.sources.vendor import DEFAULT_BASE_URL, PolygonAggregatesSource

        return PolygonAggregatesSource(base_url or DEFAULT_BASE_URL, api_key, **options)
    raise ConfigurationError(f"expected a source name in {', '.join(SOURCE_NAMES)}, found {name!r}")


def delivery_location(name: str, symbol: str, *, path: str | None = None) -> str:
    """Where source ``name`` delivers ``symbol``'s bars, in words a person can act on.

    For messages about a bar that did not arrive (``not_delivered``): the file the drop
    folder should hold, or the vendor endpoint — never a credential.
    """
    key = (name or "").strip().lower()
    if key == "file_drop":
        folder = path or "<market_source_path is not set>"
        return f"source file_drop, file {folder.rstrip('/')}/{symbol}.csv (or {symbol}.parquet)"
    if key in ("polygon", "massive"):
        return (
            f"source {key}, GET /v2/aggs/ticker/{symbol}/range/1/day/… (connection market_source)"
        )
    if key == "synthetic":
        return f"source synthetic (symbol {symbol})"
    return f"source {name!r} (symbol {symbol})"


def vendor_settings_from_connection(
    *,
    host: str | None,
    password: str | None = None,
    schema: str | None = None,
    port: int | None = None,
    extra: dict | str | None = None,
) -> dict[str, Any]:
    """``base_url``, ``api_key`` (and ``timeout``) for :func:`make_source` from a connection.

    Takes the fields of the ``market_source`` Airflow connection (the caller reads the
    connection; this module stays free of Airflow). ``host`` may carry the scheme
    (``https://api.polygon.io``); otherwise ``schema`` (default ``https``) and ``port`` complete
    it. The key is the password, or ``extra["api_key"]`` when the password is empty.
    """
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except ValueError as exc:
            raise ConfigurationError(
                f"expected the market_source connection extra to be JSON, found invalid JSON "
                f"({exc.msg})"
            ) from None
    extra = dict(extra or {})
    settings: dict[str, Any] = {"api_key": password or extra.get("api_key") or None}
    if host:
        host = host.strip().rstrip("/")
        if "://" not in host:
            host = f"{schema or 'https'}://{host}"
        if port and urlsplit(host).port is None:
            host = f"{host}:{int(port)}"
        settings["base_url"] = host
    if extra.get("timeout") is not None:
        settings["timeout"] = float(extra["timeout"])
    return settings
