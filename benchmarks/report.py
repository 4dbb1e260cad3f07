"""Turn the measured figures into the table printed and the section of docs/benchmarks.md."""

from __future__ import annotations

from typing import Any

from benchmarks import read_bench

BEGIN = "<!-- bench:begin (written by `make bench`; edit outside these markers) -->"
END = "<!-- bench:end -->"
MB = 1_000_000


def _f(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def import_rows(imp: dict[str, Any]) -> list[str]:
    raw = imp["raw_bytes"]
    ja, oa = imp["import_all"], imp["orjson_all"]
    jc, oc, cc = imp["import_claude"], imp["orjson_claude"], imp["ccusage"]
    rows = [
        "| what | wall s | MB/s | ratio |",
        "|---|---:|---:|---:|",
        f"| bare `orjson.loads`, whole corpus ({raw / MB:,.0f} MB, {oa['lines']:,} lines) | "
        f"{_f(oa['wall'])} | {_f(raw / MB / oa['wall'], 0)} | 1 |",
        f"| `jobvault import`, whole corpus | {_f(ja['wall'])} | "
        f"{_f(raw / MB / ja['wall'], 1)} | **{_f(ja['wall'] / oa['wall'], 1)} × orjson** |",
        f"| bare `orjson.loads`, Claude part ({imp['raw_claude_bytes'] / MB:,.0f} MB) | "
        f"{_f(oc['wall'])} | {_f(imp['raw_claude_bytes'] / MB / oc['wall'], 0)} | 1 |",
        f"| `jobvault import`, Claude part | {_f(jc['wall'])} | "
        f"{_f(imp['raw_claude_bytes'] / MB / jc['wall'], 1)} | "
        f"{_f(jc['wall'] / oc['wall'], 1)} × orjson |",
    ]
    if cc is not None:
        rows.append(
            f"| `ccusage claude daily --json --offline`, Claude part | {_f(cc['wall'])} | "
            f"{_f(imp['raw_claude_bytes'] / MB / cc['wall'], 1)} | "
            f"jobvault import ÷ ccusage = **{_f(jc['wall'] / cc['wall'], 1)}** |"
        )
    rep = imp["report"]
    label = "`sql` daily usage" if rep["method"] == "sql" else f"`{rep['method']}` {rep['params']}"
    rows.append(
        f"| report after import, socket round trip ({label}), median | "
        f"{_f(rep['socket_median'], 4)} | | "
        + (f"ccusage ÷ it = **{_f(cc['wall'] / rep['socket_median'], 0)} ×**" if cc else "")
        + " |"
    )
    rows.append(
        f"| report after import, `jobvault query` CLI process, median | "
        f"{_f(rep['cli_median'], 3)} | | "
        + (f"ccusage ÷ it = {_f(cc['wall'] / rep['cli_median'], 1)} ×" if cc else "")
        + " |"
    )
    return rows


def socket_rows(sockets: dict[int, dict[str, Any]]) -> list[str]:
    rows = [
        "| method | jobs | clients | p50 ms | p99 ms | requests |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for jobs, methods in sorted(sockets.items()):
        for name, figures in methods.items():
            if name.startswith("_"):
                continue
            if figures is None:
                rows.append(f"| `{name}` | {jobs:,} | — | absent in this version | | |")
                continue
            for clients, f in figures.items():
                if clients == "params":
                    continue
                errors = ", ".join(f"{n} {kind}" for kind, n in f.get("errors", {}).items())
                rows.append(
                    f"| `{name}` | {jobs:,} | {clients} | {_f(f['p50'])} | "
                    f"{_f(f['p99'])} | {f['n']:,}{f' ({errors})' if errors else ''} |"
                )
    return rows


def targets(res: dict[str, Any]) -> list[str]:
    imp = res["import"]
    ja, oa, jc, cc = imp["import_all"], imp["orjson_all"], imp["import_claude"], imp["ccusage"]
    lat, idle = res["latency"], res["idle"]
    peak = max(ja["rss_mb"], jc["rss_mb"], res["big"]["rss_mb"] if res.get("big") else 0)
    big_socket = res["sockets"][max(res["sockets"])]
    get99 = big_socket["jobs.get"][1]["p99"] if big_socket.get("jobs.get") else None
    usage = big_socket.get("stats.usage")
    stand_in = "" if usage else " (`sql` daily usage standing in: `stats.usage` is absent)"
    usage = usage or big_socket.get("sql (daily usage)")
    usage99 = usage[1]["p99"] if usage else None
    rep = imp["report"]
    rows = [
        "| target | measured | |",
        "|---|---|---|",
        f"| import ≤ 1.6 × bare orjson | {_f(ja['wall'] / oa['wall'], 1)} × | "
        f"{_mark(ja['wall'] / oa['wall'] <= 1.6)} |",
        "| import faster than ccusage's report | "
        + (
            f"{_f(jc['wall'] / cc['wall'], 1)} × ccusage's time | "
            f"{_mark(jc['wall'] < cc['wall'])} |"
            if cc
            else "ccusage not run | n/a |"
        ),
        "| report after import ≥ 100 × faster than ccusage | "
        + (
            f"{_f(cc['wall'] / rep['socket_median'], 0)} × ({rep['method']}) | "
            f"{_mark(cc['wall'] / rep['socket_median'] >= 100)} |"
            if cc
            else "n/a | n/a |"
        ),
        f"| peak RSS ≤ 100 MB on any input | {_f(peak, 0)} MB | {_mark(peak <= 100)} |",
        f"| append → visible p99 ≤ 250 ms | archive {_f(1000 * lat['archive_p99'], 0)} ms, "
        f"record {_f(1000 * lat['record_p99'], 0)} ms | {_mark(lat['archive_p99'] <= 0.25)} "
        f"(archive), {_mark(lat['record_p99'] <= 0.25)} (record) |",
        f"| idle CPU ≤ 0.5 % | {_f(idle['cpu_pct'], 2)} % | {_mark(idle['cpu_pct'] <= 0.5)} |",
        f"| `jobs.get` p99 ≤ 5 ms at {max(res['sockets']):,} jobs | {_f(get99)} ms | "
        f"{_mark(None if get99 is None else get99 <= 5)} |",
        f"| `stats.usage` p99 ≤ 50 ms at {max(res['sockets']):,} jobs | "
        + (
            f"{_f(usage99)} ms{stand_in} | {_mark(usage99 <= 50)} |"
            if usage99 is not None
            else "absent in this version | n/a |"
        ),
        *(read_bench.target_rows(res["read_side"]) if res.get("read_side") else []),
    ]
    if res.get("scale"):
        from benchmarks import scale_bench

        rows += scale_bench.targets(res["scale"])
    if res.get("dashboard"):
        from benchmarks import web_bench

        rows += web_bench.targets(res["dashboard"])
    return rows


def section(res: dict[str, Any]) -> str:
    """The generated part of docs/benchmarks.md."""
    m = res["machine"]
    imp = res["import"]
    ja, oa = imp["import_all"], imp["orjson_all"]
    lat, idle = res["latency"], res["idle"]
    lines = [
        BEGIN,
        "",
        f"Run of {res['date']} with `{res['command']}` ({res['elapsed']:.0f} s in all; "
        f"corpus seed {res['seed']}).",
        "",
        f"* machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory']}; {m['os']}",
        f"* Python {m['python']}, SQLite {m['sqlite']}, Node {m['node']}, "
        f"ccusage {res['ccusage_version'] or 'not installed (npm absent): skipped'}",
        f"* corpus: {imp['raw_bytes'] / MB:,.0f} MB in {imp['files']:,} files "
        f"({res['corpus']['claude_sessions']} Claude sessions with their subagents, "
        f"{res['corpus']['codex_rollouts']} Codex rollouts)",
        "",
        "### Targets",
        "",
        *targets(res),
        "",
        "### Import, against bare orjson and ccusage",
        "",
        *import_rows(imp),
        "",
        *(
            [
                f"Each wall time is the median of {imp['repeats']} interleaved runs (`jobvault "
                f"import` of the whole corpus: {', '.join(f'{w:.2f}' for w in ja['walls'])} s; "
                f"bare orjson: {', '.join(f'{w:.2f}' for w in oa['walls'])} s); peak RSS is the "
                "highest of the runs.",
                "",
            ]
            if imp.get("repeats", 1) > 1
            else []
        ),
        f"Peak RSS: {ja['rss_mb']:.0f} MB importing the corpus"
        + (
            f"; {res['big']['rss_mb']:.0f} MB importing one {res['big']['raw_bytes'] / MB:,.0f} MB "
            f"session file alone ({res['big']['raw_bytes'] / MB / res['big']['wall']:.1f} MB/s)"
            if res.get("big")
            else ""
        )
        + (f"; ccusage {imp['ccusage']['rss_mb']:.0f} MB" if imp["ccusage"] else "")
        + ".",
        f"Database size ÷ raw bytes archived: {ja['db_bytes'] / imp['raw_bytes']:.3f} "
        f"({ja['db_bytes'] / MB:,.1f} MB for {imp['raw_bytes'] / MB:,.0f} MB).",
        "",
        "### The running daemon",
        "",
        f"Append → visible over {lat['samples']} appends to a watched file "
        "(default `batch_interval` 0.05 s; a record is rewritten about every ten times its "
        "build time, 0.1 s for a session like this one):",
        "",
        "| visible in | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|",
        f"| the archive (`files.offset` via the `sql` method) | {1000 * lat['archive_p50']:.0f} | "
        f"{1000 * lat['archive_p99']:.0f} | {1000 * lat['archive_max']:.0f} |",
        f"| the job record (`jobs.get` message_count) | {1000 * lat['record_p50']:.0f} | "
        f"{1000 * lat['record_p99']:.0f} | {1000 * lat['record_max']:.0f} |",
        "",
        f"Idle CPU over {idle['seconds']:.0f} s, watching the whole corpus "
        f"({imp['files']:,} files) with nothing appended: {idle['cpu_pct']:.2f} % of one core "
        f"(RSS {idle['rss_mb']:.0f} MB).",
        "",
        *(
            [
                "### Ordinary histories (the issue's realistic corpus)",
                "",
                *scale_rows(res["scale"]),
                "",
            ]
            if res.get("scale")
            else []
        ),
        "### Socket latency",
        "",
        "Jobs synthesized with the store's writer "
        + ", ".join(f"({n:,} in {s:.0f} s)" for n, s in res["synth_seconds"].items())
        + ", served by a real daemon; each client is its own process on one connection.",
        "",
        *socket_rows(res["sockets"]),
        "",
        *(
            ["### The dashboard and the statusline", "", *dashboard_rows(res["dashboard"]), ""]
            if res.get("dashboard")
            else []
        ),
        *(
            [
                "### The read side: reports beside ccusage, and `status`",
                "",
                *read_bench.rows(res["read_side"]),
                "",
            ]
            if res.get("read_side")
            else []
        ),
        END,
    ]
    return "\n".join(lines)


def scale_rows(figures: dict[str, Any]) -> list[str]:
    from benchmarks import scale_bench

    return scale_bench.rows(figures)


def dashboard_rows(figures: dict[str, Any]) -> list[str]:
    from benchmarks import web_bench

    return web_bench.rows(figures)


def write_doc(path: Any, res: dict[str, Any]) -> None:
    """Replace the generated section of `path` (or create the document around it)."""
    generated = section(res)
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + generated + tail
    else:
        text = text.rstrip() + "\n\n" + generated + "\n"
    path.write_text(text)
