"""The static report: the dashboard's pages written to a folder, for sharing or archiving.

`jobvault report --html DIR` renders the same templates as the live dashboard (`pages.Urls`
with `live=False` makes every link a relative file name): `index.html` (the overview),
`jobs.html` (every job of the report, filterable and sortable in the page) and
`jobs/<id>.html` (each job's record and its whole replay), with the stylesheet, our script and
plotly.js (copied from the installed `plotly` package) in `assets/`. Nothing refers to a
server or to the network, so the folder opens from `file://` anywhere. Read-only: it runs on a
read-only connection, beside the daemon or without it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobvault.errors import UsageError
from jobvault.serve import methods
from jobvault.serve.web import pages, views
from jobvault.store import queries

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Written:
    directory: Path
    jobs: int
    pages: int
    bytes: int
    transcripts: int


def _write(path: Path, text: str) -> int:
    data = text.encode()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)


def _assets(target: Path) -> int:
    from jobvault.serve.web.app import STATIC, plotly_js

    target.mkdir(parents=True, exist_ok=True)
    size = 0
    for name in ("app.css", "app.js", "theme.js", "favicon.svg"):
        shutil.copyfile(STATIC / name, target / name)
        size += (target / name).stat().st_size
    plotly = plotly_js()
    if plotly is not None:
        shutil.copyfile(plotly, target / "plotly.min.js")
        size += (target / "plotly.min.js").stat().st_size
    return size


def all_jobs(conn: sqlite3.Connection, query: views.JobsQuery) -> list[dict[str, Any]]:
    """Every job the report covers: `jobs.list` with the filters, page after page."""
    params = query.method_params()
    jobs: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = methods.jobs_list(conn, {**params, "limit": methods.MAX_PAGE, "cursor": cursor})
        jobs.extend(page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            return jobs


def write(
    conn: sqlite3.Connection,
    directory: Path,
    overview: views.OverviewQuery,
    jobs: views.JobsQuery,
    *,
    version: str,
    transcripts: bool = False,
    progress: Progress | None = None,
) -> Written:
    """Write the report; `progress` is told of each job page written."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "jobs").mkdir(exist_ok=True)
    size = _assets(directory / "assets")
    stamp = datetime.now(UTC).astimezone(pages.When(overview.timezone).zone)
    common = {
        "version": version,
        "timezone": overview.timezone,
        "live": False,
        "when": pages.When(overview.timezone),
        "generated_at": stamp.strftime("%Y-%m-%d %H:%M"),
    }
    top = pages.Urls(live=False, root="", transcripts=transcripts)
    inner = pages.Urls(live=False, root="../", transcripts=transcripts)
    data = views.overview(conn, overview)
    size += _write(
        directory / "index.html",
        pages.render(
            "overview.html", **common, urls=top, page="overview", o=data, uses_charts=True
        ),
    )
    rows = all_jobs(conn, jobs)
    listing: views.JobsPage = {
        "query": jobs,
        "mode": "list",
        "rows": [{"job": job, "snippet": None} for job in rows],
        "next_query": None,
        "prev_query": None,
        "fts_query": None,
    }
    size += _write(
        directory / "jobs.html",
        pages.render(
            "jobs.html",
            **common,
            urls=top,
            page="jobs",
            q=jobs,
            orders=views.ORDER_LABELS,
            page_data=listing,
            error=None,
        ),
    )
    written = 2
    copied = 0
    for job in rows:
        page = views.job_page(conn, job["id"], limit=0)
        name = pages.slug(job["id"])
        size += _write(
            directory / "jobs" / f"{name}.html",
            pages.render("job.html", **common, urls=inner, page="job", p=page),
        )
        written += 1
        if transcripts and page["has_main_file"]:
            _, files = queries.job_files(conn, job["id"])
            main = next(f for f in files if f.role == "main")
            with (directory / "jobs" / f"{name}.jsonl").open("wb") as fh:
                for chunk in queries.archived_bytes(conn, main.id):
                    fh.write(chunk)
                    size += len(chunk)
            copied += 1
        if progress is not None:
            progress(1)
    return Written(directory, len(rows), written, size, copied)


def check_target(directory: Path, force: bool) -> None:
    """Refuse to write into a folder that holds something other than an earlier report."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise UsageError(f"{directory} exists and is not a directory")
    entries = {p.name for p in directory.iterdir()}
    if entries and "index.html" not in entries and not force:
        raise UsageError(
            f"{directory} is not empty and holds no earlier report: choose another folder "
            "or pass --force"
        )
