"""Registers the market UI plugin: a FastAPI app in the api-server and its views in the UI.

- **Market health** in the navigation (``/market/``);
- **Market report**, a tab of every DAG run (the per-run report, rendered from Postgres);
- **GX report**, a tab of every task instance (a gate's stored verdicts, from Postgres).

Every .py file in the plugins folder is imported by every Airflow process (scheduler,
dag-processor, each task), so this module imports nothing heavy: the FastAPI app is built
the first time ``fastapi_apps`` is read, which only the api-server (and ``airflow plugins``)
does. The routes, their authentication and the metrics: ``docs/ui.md``.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class MarketUiPlugin(AirflowPlugin):
    """The market_daily health page, report tabs, read-only API and metrics."""

    name = "market_ui"
    # hrefs are relative to the UI's base URL (no leading slash), so a proxy prefix works.
    external_views = [  # noqa: RUF012 - AirflowPlugin declares a list
        {
            "name": "Market health",
            "href": "market/",
            "destination": "nav",
            "url_route": "market-health",
            "nav_top_level": True,
        },
        {
            "name": "Market report",
            "href": "market/report/run?dag_id={DAG_ID}&run_id={RUN_ID}",
            "destination": "dag_run",
            "url_route": "market-report",
        },
        {
            "name": "GX report",
            "href": (
                "market/report/gx?dag_id={DAG_ID}&run_id={RUN_ID}&task_id={TASK_ID}"
                "&map_index={MAP_INDEX}"
            ),
            "destination": "task_instance",
            "url_route": "gx-report",
        },
    ]

    _apps: list | None = None

    @property
    def fastapi_apps(self) -> list[dict]:  # type: ignore[override]
        """The app to mount, built on first read (the api-server reads it at startup)."""
        if MarketUiPlugin._apps is None:
            from market_ui.app import URL_PREFIX as prefix
            from market_ui.app import create_app

            MarketUiPlugin._apps = [{"app": create_app(), "url_prefix": prefix, "name": "market"}]
        return MarketUiPlugin._apps
