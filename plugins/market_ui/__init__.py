"""The market UI plugin: health page, per-run and GX report tabs, read-only API, metrics.

Served by Airflow's api-server (``plugins/market_ui_plugin.py`` registers it; this package
is listed in ``plugins/.airflowignore`` so the plugin loader does not import its modules one
by one). Every route requires the UI's own authentication; nothing here writes. See
``docs/ui.md``.
"""
