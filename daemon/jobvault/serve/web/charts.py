"""The overview's charts as plotly.js figures (traces and layout), built from the figures.

Only data and the shape of each chart are decided here; `static/app.js` draws them with
plotly.js (served from the installed `plotly` package) and applies the light or dark theme.
Each chart also has a table of the same numbers on the page, for keyboards and screen readers.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import accumulate
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobvault.serve.web.views import Overview

# Distinguishable in light and dark themes (Okabe-Ito, colour-blind safe), then more.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#7F7F7F",
    "#9467BD",
    "#8C564B",
)
KINDS = (
    ("input_tokens", "input"),
    ("output_tokens", "output"),
    ("cache_creation_tokens", "cache write"),
    ("cache_read_tokens", "cache read"),
)
TOKEN_KINDS = tuple(key for key, _ in KINDS)
FAIL = "#D55E00"
OK = "#009E73"
MAX_SERIES = 8  # models in the stacked cost chart; the rest is "other"


def cache_hit_rate(row: Mapping[str, Any]) -> float | None:
    """Cached input over all input (fresh, cache writes and cache reads), None without any."""
    total = row["input_tokens"] + row["cache_creation_tokens"] + row["cache_read_tokens"]
    return round(row["cache_read_tokens"] / total, 4) if total else None


def _chart(ident: str, title: str, data: list[dict[str, Any]], **layout: Any) -> dict[str, Any]:
    return {"id": ident, "title": title, "data": data, "layout": layout}


def _dates(rows: list[dict[str, Any]]) -> list[str]:
    return [r["period"] for r in rows]


def cost_per_day(overview: Overview) -> dict[str, Any]:
    rows = overview["daily"]
    totals: dict[str, float] = {}
    for row in rows:
        for m in row["models"]:
            totals[m["model"]] = totals.get(m["model"], 0.0) + m["cost_usd"]
    ranked = sorted(totals, key=lambda m: (-totals[m], m))
    shown, rest = ranked[:MAX_SERIES], set(ranked[MAX_SERIES:])
    data: list[dict[str, Any]] = []
    for index, model in enumerate([*shown, *(["other"] if rest else [])]):
        values = []
        for row in rows:
            per = {m["model"]: m["cost_usd"] for m in row["models"]}
            values.append(
                round(sum(v for k, v in per.items() if k in rest), 6)
                if model == "other"
                else per.get(model, 0.0)
            )
        data.append(
            {
                "type": "bar",
                "name": model,
                "x": _dates(rows),
                "y": values,
                "marker": {"color": PALETTE[index % len(PALETTE)]},
                "hovertemplate": "%{x}<br>" + model + ": $%{y:.2f}<extra></extra>",
            }
        )
    data.append(
        {
            "type": "scatter",
            "mode": "lines",
            "name": "cumulative",
            "yaxis": "y2",
            "x": _dates(rows),
            "y": [round(v, 6) for v in accumulate(r["cost_usd"] for r in rows)],
            "line": {"width": 2, "dash": "dot"},
            "hovertemplate": "%{x}<br>cumulative: $%{y:.2f}<extra></extra>",
        }
    )
    return _chart(
        "cost-per-day",
        "Cost per day, by model",
        data,
        barmode="stack",
        yaxis={"title": {"text": "USD"}, "tickprefix": "$"},
        yaxis2={
            "overlaying": "y",
            "side": "right",
            "tickprefix": "$",
            "showgrid": False,
            "rangemode": "tozero",
        },
    )


def tokens_per_day(overview: Overview) -> dict[str, Any]:
    rows = overview["daily"]
    data: list[dict[str, Any]] = [
        {
            "type": "bar",
            "name": label,
            "x": _dates(rows),
            "y": [r[key] for r in rows],
            "marker": {"color": PALETTE[i]},
            "hovertemplate": "%{x}<br>" + label + ": %{y:,}<extra></extra>",
        }
        for i, (key, label) in enumerate(KINDS)
    ]
    rates = [cache_hit_rate(r) for r in rows]
    data.append(
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "cache-hit rate",
            "yaxis": "y2",
            "x": _dates(rows),
            "y": [None if v is None else round(100 * v, 2) for v in rates],
            "line": {"width": 2},
            "marker": {"size": 4},
            "hovertemplate": "%{x}<br>cache hits: %{y:.1f}%<extra></extra>",
        }
    )
    return _chart(
        "tokens-per-day",
        "Tokens per day, by kind, and the cache-hit rate",
        data,
        barmode="stack",
        yaxis={"title": {"text": "tokens"}},
        yaxis2={
            "overlaying": "y",
            "side": "right",
            "range": [0, 100],
            "ticksuffix": "%",
            "showgrid": False,
        },
    )


def sessions_per_day(overview: Overview) -> dict[str, Any]:
    rows = overview["sessions"]
    data = [
        {
            "type": "bar",
            "name": "sessions",
            "x": _dates(rows),
            "y": [r["sessions"] for r in rows],
            "marker": {"color": PALETTE[0]},
            "hovertemplate": "%{x}<br>%{y} sessions<extra></extra>",
        }
    ]
    top = max((r["sessions"] for r in rows), default=0)
    axis = {"rangemode": "tozero", "dtick": 1} if top <= 8 else {"rangemode": "tozero"}
    return _chart("sessions-per-day", "Sessions per day", data, showlegend=False, yaxis=axis)


def _horizontal(
    ident: str, title: str, names: list[str], values: list[float], color: str, money: bool = True
) -> dict[str, Any]:
    names, values = names[::-1], values[::-1]  # plotly draws the first category at the bottom
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "y": names,
            "x": values,
            "marker": {"color": color},
            "name": title,
            "hovertemplate": "%{y}: " + ("$%{x:.2f}" if money else "%{x:,}") + "<extra></extra>",
        }
    ]
    layout: dict[str, Any] = {
        "showlegend": False,
        "yaxis": {"automargin": True},
        "height": max(220, 28 * len(names) + 80),
    }
    if money:
        layout["xaxis"] = {"tickprefix": "$"}
    return _chart(ident, title, data, **layout)


def cost_by_project(overview: Overview) -> dict[str, Any]:
    rows = overview["by_project"][:15]
    return _horizontal(
        "cost-by-project",
        "Cost by project",
        [r["project"] or "(none)" for r in rows],
        [r["cost_usd"] for r in rows],
        PALETTE[4],
    )


def cost_by_model(overview: Overview) -> dict[str, Any]:
    rows = overview["by_model"][:15]
    names = [r["model"] + (" (no price)" if r.get("unpriced") else "") for r in rows]
    return _horizontal(
        "cost-by-model", "Cost by model", names, [r["cost_usd"] for r in rows], PALETTE[1]
    )


def tools(overview: Overview) -> dict[str, Any]:
    rows = overview["tools"][:20][::-1]
    # The failure rate goes in the label: plotly cannot place text on a zero-length bar.
    names = [f"{r['tool']} · {100 * r['failure_rate']:.1f}% failed" for r in rows]
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "name": "succeeded",
            "y": names,
            "x": [r["calls"] - r["failures"] for r in rows],
            "marker": {"color": OK},
            "hovertemplate": "%{y}: %{x:,} succeeded<extra></extra>",
        },
        {
            "type": "bar",
            "orientation": "h",
            "name": "failed",
            "y": names,
            "x": [r["failures"] for r in rows],
            "marker": {"color": FAIL},
            "hovertemplate": "%{y}: %{x:,} failed<extra></extra>",
        },
    ]
    return _chart(
        "tools",
        "Tool calls and failure rate, per tool",
        data,
        barmode="stack",
        yaxis={"automargin": True},
        height=max(240, 26 * len(rows) + 90),
    )


def failures_over_time(overview: Overview) -> dict[str, Any]:
    rows = overview["failures"]
    data = [
        {
            "type": "bar",
            "name": "failed calls",
            "x": _dates(rows),
            "y": [r["failures"] for r in rows],
            "marker": {"color": FAIL},
            "hovertemplate": "%{x}<br>%{y:,} failed<extra></extra>",
        },
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "failure rate",
            "yaxis": "y2",
            "x": _dates(rows),
            "y": [round(100 * r["failure_rate"], 2) for r in rows],
            "marker": {"size": 4},
            "hovertemplate": "%{x}<br>failure rate %{y:.1f}%<extra></extra>",
        },
    ]
    return _chart(
        "failures-over-time",
        "Tool failures over time",
        data,
        yaxis2={
            "overlaying": "y",
            "side": "right",
            "ticksuffix": "%",
            "showgrid": False,
            "rangemode": "tozero",
        },
    )


def blocks(overview: Overview) -> dict[str, Any]:
    rows = overview["blocks"][::-1]
    data: list[dict[str, Any]] = [
        {
            "type": "bar",
            "name": "cost",
            "x": [b["start"] for b in rows],
            "y": [b["cost_usd"] for b in rows],
            "marker": {"color": [PALETTE[1] if b["is_active"] else PALETTE[0] for b in rows]},
            "hovertemplate": "block from %{x}<br>$%{y:.2f}<extra></extra>",
        }
    ]
    active = overview["active_block"]
    if active and active.get("projection"):
        data.append(
            {
                "type": "bar",
                "name": "projected",
                "x": [active["start"]],
                "y": [max(0.0, active["projection"]["total_cost"] - active["cost_usd"])],
                "marker": {"color": PALETTE[1], "opacity": 0.35},
                "hovertemplate": "projected to the block's end: +$%{y:.2f}<extra></extra>",
            }
        )
    return _chart(
        "blocks",
        "5-hour billing blocks (the active one in orange, with its projection)",
        data,
        barmode="stack",
        showlegend=False,
        yaxis={"tickprefix": "$"},
    )


def rate_limits(overview: Overview) -> dict[str, Any]:
    series: dict[str, tuple[list[str], list[float]]] = {}
    for s in overview["rate_limits"]["samples"]:
        label = f"{s['source']} {s['window'].replace('_', '-')}"
        if s["window_minutes"]:
            label += f" ({s['window_minutes'] // 60} h)" if s["window_minutes"] >= 60 else ""
        xs, ys = series.setdefault(label, ([], []))
        xs.append(s["at"])
        ys.append(s["used_percent"])
    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "line": {"shape": "hv", "width": 2},
            "name": label,
            "x": xs,
            "y": ys,
            "marker": {"color": PALETTE[i % len(PALETTE)]},
            "hovertemplate": "%{x}<br>" + label + ": %{y:.0f}% used<extra></extra>",
        }
        for i, (label, (xs, ys)) in enumerate(sorted(series.items()))
    ]
    return _chart(
        "rate-limits",
        "Rate-limit windows, percent used",
        data,
        yaxis={"ticksuffix": "%", "rangemode": "tozero"},
    )


def overview_charts(overview: Overview) -> list[dict[str, Any]]:
    """Every chart of the overview, in page order."""
    return [
        cost_per_day(overview),
        tokens_per_day(overview),
        sessions_per_day(overview),
        cost_by_project(overview),
        cost_by_model(overview),
        tools(overview),
        failures_over_time(overview),
        blocks(overview),
        rate_limits(overview),
    ]
