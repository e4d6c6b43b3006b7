"""The pieces behind the guarantees, without a server: the nesting scan, the NUL scan, the path
parameter rules and the log formatter."""

from __future__ import annotations

import io
import json
import logging
import random
import time
from typing import Any

from controlplane.api.bodies import MAX_JSON_DEPTH, has_nul_escape, nesting_depth
from controlplane.api.log_lines import CONTINUATION, OneLineFormatter, printable
from controlplane.api.params import invalid_path_params
from tests.security.hostile import FORGED, HOSTILE_SEGMENTS

_TRICKY = ['"', "\\", "[", "]", "{", "}", '\\"', "\\\\", "\\u0000", "x", "\u2028", "\n"]


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def _random_value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth < 12 and roll < 0.3:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 12 and roll < 0.6:
        return {
            "".join(rng.choices(_TRICKY, k=rng.randint(0, 4))): _random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 3))
        }
    if roll < 0.8:
        return "".join(rng.choices(_TRICKY, k=rng.randint(0, 12)))
    return rng.choice([0, -1.5, True, None])


def test_nesting_depth_matches_the_document() -> None:
    """The byte scan finds the same depth as a walk of the decoded document, whatever brackets,
    quotes and escapes the strings hold."""
    rng = random.Random(7)
    for _ in range(3000):
        value = _random_value(rng, 0)
        body = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        assert nesting_depth(body, limit=100) == _depth(value), body


def test_nesting_depth_across_slices_and_limits() -> None:
    """Strings and nesting that span the scan's 64 KiB slices are counted right; the scan stops
    early past the limit; 1 MiB of the worst bytes is scanned quickly."""
    padded = b'["' + b"[" * 70_000 + b'", ' + b"[" * 10 + b"]" * 10 + b"]"
    assert nesting_depth(padded) == 11
    escaped = b'["' + b'\\"' * 40_000 + b"[" * 100 + b'"]'
    assert nesting_depth(escaped) == 1
    assert nesting_depth(b"[" * 65 + b"]" * 65) == 65 > MAX_JSON_DEPTH
    assert nesting_depth(b"[" * 64 + b"]" * 64) == MAX_JSON_DEPTH
    for worst in (b"[" * 2**20, b'"' * 2**20, b'\\"' * 2**19, b"[]" * 2**19, b'"[' * 2**19):
        started = time.monotonic()
        nesting_depth(worst)
        assert time.monotonic() - started < 1.0


def test_nul_escapes_are_found_only_in_strings() -> None:
    """`\\u0000` is a NUL; an escaped backslash followed by `u0000` is not."""
    assert has_nul_escape(b'{"a": "x\\u0000"}')
    assert has_nul_escape(b'{"a\\\\\\u0000": 1}')
    assert not has_nul_escape(b'{"a": "x\\\\u0000"}')
    assert not has_nul_escape(b'{"a": "\\u0001"}')


def test_path_parameter_rules() -> None:
    """Hostile values break every parameter's rule; real ids, node names, task ids and labels
    pass."""
    for name in ("database_id", "node", "task_id", "label"):
        for value in HOSTILE_SEGMENTS:
            assert invalid_path_params({name: value}), (name, value)
    # A parameter without a rule of its own: still no control character, space or quote.
    for value in HOSTILE_SEGMENTS:
        if value not in ("Target", "a" * 5000):
            assert invalid_path_params({"anything": value}), value
    valid = {
        "database_id": "storefront-2",
        "node": "n12",
        "task_id": "0b5e6f5e-5c1e-4d7a-9a43-2f0d7c6b9e11",
        "label": "20250505-020001F_20250506-020001I",
        "path": "openapi.json",
    }
    assert invalid_path_params(valid) == []
    assert invalid_path_params({"database_id": "a" * 37})
    assert invalid_path_params({"task_id": "0" * 31 + "\n"})


def test_log_lines_cannot_be_forged() -> None:
    """A message and an exception holding line breaks and a fake record: the record stays on
    its line, its traceback lines are marked as continuations, and no line starts with the
    fake record."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(message)s"))
    log = logging.getLogger("tests.security.forgery")
    log.addHandler(handler)
    log.propagate = False
    try:
        attack = f"x\n{FORGED}\r\n{FORGED}\u2028{FORGED}\x85{FORGED}"
        try:
            raise ValueError(attack)
        except ValueError:
            log.exception("internal error on GET /v1/databases/%s", attack)
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("ERROR internal error on GET /v1/databases/x\\n2026-01-01")
    assert all(line.startswith(CONTINUATION) for line in lines[1:]), lines
    assert not any(line.startswith(FORGED[:10]) for line in lines)
    assert printable("a\tb\x00\x1b\u2028\x85") == "a\tb\\x00\\x1b\\u2028\\x85"
