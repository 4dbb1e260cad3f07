"""The adapters against hostile values: every field of real lines replaced by any JSON value.

A line's values are the agent's (or an attacker's): a field of the wrong type, out of range or
nested where a string was expected must never raise out of `feed` or `build` (that would
quarantine the whole session): at worst the value is ignored or counted as a bad value.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobvault.sources import ADAPTERS, LineContext

FIXTURES = Path(__file__).parent / "fixtures"
SESSIONS: dict[str, list[tuple[Path, list[dict[str, Any]]]]] = {
    "claude": [
        (p, [json.loads(line) for line in p.read_text().splitlines() if line.strip()])
        for p in sorted((FIXTURES / "claude" / "projects").rglob("*.jsonl"))
    ],
    "codex": [
        (p, [json.loads(line) for line in p.read_text().splitlines() if line.strip()])
        for p in sorted((FIXTURES / "codex" / "home").rglob("*.jsonl"))
    ],
}


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value).union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()


# Every field name the fixtures use anywhere: added where it is missing, with a hostile value.
KEYS = sorted(set().union(*(_keys(line) for files in SESSIONS.values() for _, lines in files
                            for line in lines)))  # fmt: skip

ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # (what orjson.loads gives)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "assistant", "user", "tool_use", "tool_result", "text", "2025-10"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8),
                                                                       children, max_size=3),
    max_leaves=8,
)  # fmt: skip


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a parsed line (dict keys and list indexes), the line itself excluded."""
    out: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
        value, list) else ()  # fmt: skip
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _replace(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of `obj` with `value` at `path` (the last key may be new to its object)."""
    if not path:
        return value
    copy: Any = dict(obj) if isinstance(obj, dict) else list(obj)
    copy[path[0]] = _replace(copy[path[0]], path[1:], value) if len(path) > 1 else value
    return copy


@st.composite
def _hostile_session(draw: st.DrawFn) -> tuple[str, list[tuple[Path, list[dict[str, Any]]]]]:
    source = draw(st.sampled_from(sorted(SESSIONS)))
    path, lines = draw(st.sampled_from(SESSIONS[source]))
    lines = list(lines)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(lines) - 1))
        places = _paths(lines[i])
        if draw(st.booleans()) and places:  # a value replaced
            place = draw(st.sampled_from(places))
            lines[i] = _replace(lines[i], place, draw(ANY_JSON))
        else:  # a field added (to the line or to one of its objects)
            objects = [()] + [p for p in places if isinstance(_get(lines[i], p), dict)]
            where = draw(st.sampled_from(objects))
            key = draw(st.sampled_from(KEYS))
            lines[i] = _replace(lines[i], (*where, key), draw(ANY_JSON)) if where else {
                **lines[i], key: draw(ANY_JSON)}  # fmt: skip
    return source, [(path, lines)]


@settings(
    max_examples=int(os.environ.get("JOBVAULT_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=_hostile_session())
def test_no_value_in_a_line_makes_an_adapter_raise(
    case: tuple[str, list[tuple[Path, list[dict[str, Any]]]]],
) -> None:
    source, files = case
    adapter = ADAPTERS[source]
    jobs: dict[str, Any] = {}
    for file_id, (path, lines) in enumerate(files, 1):
        info = adapter.classify(path)
        assert info is not None
        ctx = LineContext(file_id, info.role, info.agent_id, info.layout, info.project, str(path))
        for offset, obj in enumerate(lines):
            key = info.job_key or adapter.job_key_from_line(obj)
            if key is None or not isinstance(key, str):
                continue
            job = jobs.setdefault(key, adapter.new_job(key))
            problem = job.feed(obj, ctx, offset * 1000)
            assert problem is None or isinstance(problem, str)
    for job in jobs.values():
        detail = job.build(finalized=True, machine_id=None)
        orjson.dumps(detail.record)  # (the record serializes, as the writer does)
        list(job.usage_candidates())


def test_the_values_the_fuzzing_found() -> None:
    """Regressions: a list as a sidechain line's agentId (Claude), a list as a payload's type
    (Codex). Both raised TypeError (unhashable), which quarantined the session."""
    claude = ADAPTERS["claude"].new_job("s")
    ctx = LineContext(1, "main", None, None, "p", "/p/s.jsonl")
    line = {
        "type": "user", "isSidechain": True, "agentId": ["a"], "sessionId": "s",
        "timestamp": "2025-10-01T00:00:00Z", "message": {"role": "user", "content": "hi"},
    }  # fmt: skip
    assert claude.feed(line, ctx, 0) is None
    subagents = claude.build(finalized=True, machine_id=None).subagents
    assert [s.agent_id for s in subagents] == ["sidechain-1"]  # an unnamed sidechain
    codex = ADAPTERS["codex"].new_job("c")
    ctx = LineContext(2, "main", None, None, None, "/s/rollout-c.jsonl")
    for kind in ("event_msg", "response_item"):
        line = {"type": kind, "timestamp": "2025-10-01T00:00:00Z", "payload": {"type": [1]}}
        assert codex.feed(line, ctx, 0) is None
    codex.build(finalized=True, machine_id=None)
