"""Machine-readable output: `--json` (the method's result, as is) and `--csv`.

CSV is the standard library's `csv` dialect "excel" (comma, double quotes, CRLF): a header
row, then one row per item (a job, a period, a model, a tool, a block). Its columns are the
item's `--json` keys, in the order they first appear, flattened: a nested object becomes
dotted columns (`burn_rate.cost_per_hour`), a list of plain values one cell joined with `;`
(`models`), a list of objects one cell of JSON (a period's per-model breakdown); null is
an empty cell, true and false are `true` and `false`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from jobvault import jsonio

TYPE_CHECKING = False  # typing stays out of the read commands' start (docs/architecture.md)
if TYPE_CHECKING:
    from typing import Any


def print_json(value: Any) -> None:
    sys.stdout.write(jsonio.pretty(value) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def flatten(item: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """One CSV row of `item`: nested objects dotted, lists joined (see the module doc)."""
    row: dict[str, str] = {}
    for key, value in item.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if value:
                row.update(flatten(value, name + "."))
            else:
                row[name] = ""
        elif isinstance(value, list):
            if all(not isinstance(v, dict | list) for v in value):
                row[name] = ";".join(_cell(v) for v in value)
            else:
                row[name] = jsonio.dumps(value).decode()
        else:
            row[name] = _cell(value)
    return row


def print_csv(items: Iterable[dict[str, Any]]) -> None:
    """Write `items` as CSV on standard output: a header row, then one row per item."""
    import csv  # (only here: --json and the tables do not need it)

    rows = [flatten(item) for item in items]
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    # An object that is null in some rows (a block's burn_rate) is its dotted columns only.
    nested = {name.split(".", 1)[0] for name in columns if "." in name}
    for name in nested & set(columns):
        del columns[name]
    writer = csv.DictWriter(sys.stdout, fieldnames=list(columns), restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
