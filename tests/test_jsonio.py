"""jobvault.jsonio: the standard library's codec and orjson's give the same values and the
same `--json` text, and the read path switches to orjson for large documents."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import orjson
import pytest

from jobvault import jsonio

# Shapes the CLI prints: nested objects and lists, empty ones, UTF-8, escapes, big integers,
# floats with and without fractions, booleans and nulls.
DOCUMENTS: list[Any] = [
    {},
    [],
    {"rows": [], "totals": {}, "since": None},
    [
        {
            "id": "a1",
            "cost_usd": 27.079191,
            "models": ["claude-sonnet-4-5"],
            "ok": True,
            "prompt": 'café ☕ "quoted" \\ back\nslash\ttab \u2028',
            "tokens": 2**63 - 1,
            "ratio": 0.5,
            "zero": 0.0,
            "neg": -3,
            "nested": {"a": [1, [2, []], {}]},
        }
    ],
    {
        "group_by": "day",
        "rows": [
            {
                "period": f"2026-11-{d:02d}",
                "cost_usd": d * 1.25,
                "models": [{"model": "m", "cost_usd": 0.1}],
            }
            for d in range(1, 29)
        ],
    },
]


@pytest.mark.parametrize("value", DOCUMENTS)
def test_the_standard_codec_prints_what_orjson_prints(value: Any) -> None:
    assert "orjson" in sys.modules  # (this test imported it): force the standard library's path
    text = json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False)
    assert text == orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    compact = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    assert compact.encode() == orjson.dumps(value)
    assert jsonio.loads(text) == jsonio.loads(compact.encode()) == value


def _fresh(code: str) -> None:
    """Run `code` in a new interpreter (one that has not imported orjson yet)."""
    code = "import sys\nfrom jobvault import jsonio\n" + code
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_without_orjson_loaded_small_documents_use_json_and_large_ones_orjson() -> None:
    _fresh(
        "small = jsonio.pretty({'rows': [{'a': 1}] * 10})\n"
        "assert jsonio.loads(jsonio.dumps({'x': [1, 'é']})) == {'x': [1, 'é']}\n"
        "assert 'orjson' not in sys.modules, 'small documents loaded orjson'\n"
        "big = b'[' + b','.join([b'{\"k\": \"' + b'v' * 100 + b'\"}'] * 10000) + b']'\n"
        "assert len(jsonio.loads(big)) == 10000\n"
        "assert 'orjson' in sys.modules, 'a large document did not use orjson'\n"
    )
    _fresh(
        "many = jsonio.pretty([{'i': i} for i in range(jsonio.MANY + 1)])\n"
        "assert many.startswith('[\\n  {\\n    \"i\": 0'), many[:20]\n"
        "assert 'orjson' in sys.modules, 'a long list was not printed by orjson'\n"
    )


def test_what_json_cannot_spell_falls_back_to_orjson() -> None:
    # NaN is not JSON: orjson writes null, and so does jsonio (never the invalid `NaN`).
    _fresh(
        "assert jsonio.pretty({'x': float('nan')}) == '{\\n  \"x\": null\\n}'\n"
        "assert jsonio.dumps([float('inf')]) == b'[null]'\n"
        "assert jsonio.pretty({'x': 1}) == '{\\n  \"x\": 1\\n}'\n"
    )


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}', "{", "", "[1,]"])
def test_what_orjson_refuses_the_standard_path_refuses(text: str) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)
    with pytest.raises(ValueError):
        json.loads(text, parse_constant=jsonio._no_constant)  # what jsonio.loads runs
