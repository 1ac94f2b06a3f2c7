"""What a gate produces about its verdicts: the HTML page, the link to it, the stored record.

Pages go to ``<report_dir>/market_daily/<trade_date>/gx/<gate>_<label>.html`` (a rerun
replaces them; the per-run page of ``run_health`` sits at ``.../<trade_date>/index.html``).
A task carrying one symbol links that symbol's page; a chunk links one page with every
verdict of the chunk (``<gate>_FIRST..LAST.html``, a section per symbol), and only its failed
symbols get a page of their own too. The link itself is the caller's (Airflow's XCom, for the
gate tasks' "GX report" extra link): :class:`GateReports` calls ``link(url)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from market_pipeline.config import DAG_ID
from market_pipeline.stages.outcome import is_chunk

if TYPE_CHECKING:
    from market_pipeline.quality import GateResult
    from market_pipeline.stages.settings import Attempt
    from market_pipeline.store import ValidationRecord

log = logging.getLogger(__name__)


def report_dir() -> Path:
    """Where reports go: ``MARKET_REPORT_DIR``, else ``$AIRFLOW_HOME/reports``."""
    configured = os.environ.get("MARKET_REPORT_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser() / "reports"


def run_dir(session: date) -> Path:
    """The folder of one session's reports (the per-run page and its ``gx/`` pages)."""
    return report_dir() / DAG_ID / session.isoformat()


def report_url(path: Path) -> str:
    """The report's URL: under ``MARKET_REPORT_BASE_URL`` when set, else a file:// URI."""
    base = os.environ.get("MARKET_REPORT_BASE_URL")
    if base:
        return f"{base.rstrip('/')}/{path.relative_to(report_dir()).as_posix()}"
    return path.resolve().as_uri()


def write_gate_report(results: Sequence[GateResult], label: str) -> Path | None:
    """Write gate verdicts as one self-contained HTML page and log where it is.

    A page that cannot be written is logged, never raised: the verdicts stand.
    """
    from market_pipeline.report import render_html

    first = results[0]
    path = run_dir(first.trade_date) / "gx" / f"{first.gate}_{label}.html"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        title = f"{first.gate} gate: {label} on {first.trade_date.isoformat()}"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(render_html(results, title=title), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        log.exception("could not write the %s gate report to %s", first.gate, path)
        return None
    failed = sum(not r.success for r in results)
    verdict = ("FAIL" if failed else "pass") if len(results) == 1 else f"{failed} failed"
    log.info("GX report (%s gate, %s, %s): %s", first.gate, label, verdict, path)
    return path


@dataclass
class GateReports:
    """The pages of one gate run over ``symbols`` (the task's whole chunk), and its link.

    :param symbols: every symbol the task carries (its chunk), for the chunk page's label.
    :param link: called with the URL of the page the task links, once written.
    """

    symbols: Sequence[str]
    link: Callable[[str], None] | None = None

    def verdict(self, result: GateResult) -> Path | None:
        """One symbol's page; linked when the task carries that symbol alone. In a chunk, a
        passed verdict has no page of its own (its section of :meth:`chunk_page` is the one
        page rendered for it); a failed one has, for the operator who opens that symbol."""
        if result.success and is_chunk(self.symbols):
            return None
        path = write_gate_report([result], result.symbol)
        if path is not None and not is_chunk(self.symbols):
            self._link(path)
        return path

    def chunk_page(self, results: Sequence[GateResult]) -> Path | None:
        """With a chunk: one linked page with every verdict (``<gate>_FIRST..LAST.html``)."""
        from market_pipeline.chunks import chunk_label

        if not is_chunk(self.symbols) or not results:
            return None
        path = write_gate_report(list(results), chunk_label(self.symbols))
        if path is not None:
            self._link(path)
        return path

    def _link(self, path: Path) -> None:
        if self.link is not None:
            self.link(report_url(path))


def validation_record(result: GateResult, attempt: Attempt) -> ValidationRecord:
    """The verdict as ``validation_reports`` stores it, stamped with the attempt."""
    from market_pipeline import store

    return store.ValidationRecord.stamped(
        result, run_id=attempt.run_id, try_number=attempt.try_number
    )
