"""Hostile inputs shared by the security tests: path values, bodies, wrong-typed mutations, and
the check that the server log holds no line an attacker started."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

from tests.security.conftest import Target
from tests.support.api import database_body

# A client who can put a line break into a log line tries to make it look like this one.
FORGED = "2026-01-01 00:00:00,000 ERROR controlplane.api.errors: FORGED"
# Values for path parameters that no resource can have; each stays one path segment.
HOSTILE_SEGMENTS = [
    "a\x00b",
    "\x00",
    "n1\x00",
    "a\nb",
    "x\n" + FORGED,
    "x\r\n" + FORGED,
    "\x00\n" + FORGED,
    "a\rb",
    "\x1b[31mred\x1b[0m",
    "a\u2028b",
    "a\x85b",
    "\x7f",
    " ",
    "a b",
    "' OR '1'='1",
    '"',
    "%00",
    "\U0001f600",
    "a" * 5000,
    "Target",
    "n1 ",
    "-a",
]
# Raw (already percent-encoded) segments: bytes that are not UTF-8 once decoded.
HOSTILE_RAW_SEGMENTS = ["%FF%FE", "%C0%AF", "%ED%A0%80", "%"]
# Wrong values of every JSON type, for every field of a template.
WRONG_VALUES: list[Any] = [None, True, 0, -1, 1.5, 2**64, "s", "\n\r\x1b", [], {}, [None], {"": 0}]
_LINE_START = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ |    \| )")


def create_template() -> dict[str, Any]:
    """A create body that is well formed everywhere but invalid as a whole (two nodes named n1),
    so no single wrong value can turn it into a database."""
    body = database_body("dupes", nodes=2)
    body["spec"]["nodes"] = [{"name": "n1", "port": 0}, {"name": "n1"}]
    body["spec"]["postgresql_conf"] = {"work_mem": "8MB", "max_connections": 50}
    body["spec"]["backup_config"] = {
        "repositories": [
            {"type": "posix", "base_path": "/tmp/cp-backups", "retention_full": 2},
            {
                "type": "s3",
                "s3_bucket": "bucket",
                "s3_region": "us-east-1",
                "s3_key": "key",
                "s3_key_secret": "secret",
                "custom_options": {"s3-uri-style": "path"},
            },
        ],
        "schedules": [{"id": "nightly", "type": "full", "cron_expression": "0 2 * * *"}],
    }
    return body


_RESTORE_CONFIG = {
    "source_database_id": "ghost",
    "source_node_name": "n1",
    "repository": {"type": "posix", "base_path": "/tmp/cp-backups"},
    "restore_options": {"type": "time", "target": "2026-01-01 00:00:00+00"},
}
TEMPLATES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/databases", create_template()),
    ("/v1/databases/ghost", create_template()),
    (
        "/v1/databases/ghost/nodes/n9/backups",
        {"type": "full", "annotations": {"reason": "x"}, "repository_id": "posix"},
    ),
    (
        "/v1/databases/ghost/restore",
        {"restore_config": _RESTORE_CONFIG, "target_nodes": ["n1"], "pre_restore_backup": False},
    ),
    ("/v1/databases/ghost/nodes/n9/restore-points", {"name": "before-upgrade"}),
]


def deep(levels: int, *, objects: bool = False) -> bytes:
    """`levels` nested arrays (or objects under key "a") around a 1."""
    if objects:
        return b'{"a":' * levels + b"1" + b"}" * levels
    return b"[" * levels + b"1" + b"]" * levels


def hostile_bodies(max_body: int) -> list[tuple[str, bytes, set[int]]]:
    """(what, body, acceptable statuses) for any route that takes a JSON body."""
    bad_json = {400}
    # An object shape the route rejects (422), or, on a route whose ids are absent, not found.
    refused = {404, 422}
    pad = b'{"id": "x"}'
    return [
        ("1000 nested arrays", deep(1000), bad_json),
        ("1000 nested objects", deep(1000, objects=True), bad_json),
        ("65 nested objects", deep(65, objects=True), bad_json),
        ("64 nested objects", deep(64, objects=True), refused),
        ("brackets inside a string", b'{"id": "' + b"[" * 5000 + b'"}', refused),
        ("escaped quotes then brackets", b'{"id": "\\"' + b"{" * 500 + b'"}', refused),
        ("empty", b"", bad_json),
        ("null", b"null", bad_json),
        ("array", b"[]", bad_json),
        ("number", b"1", bad_json),
        ("string", b'"s"', bad_json),
        ("truncated", b'{"id":', bad_json),
        ("byte order mark", b'\xef\xbb\xbf{"id": "a"}', bad_json),
        ("invalid utf-8", b'{"id": "\xff\xfe"}', bad_json),
        ("overlong utf-8", b'{"id": "\xc0\xaf"}', bad_json),
        ("encoded surrogate", b'{"id": "\xed\xa0\x80"}', bad_json),
        ("lone surrogate escape", b'{"id": "\\ud800"}', bad_json),
        ("raw NUL in a string", b'{"id": "a\x00b"}', bad_json),
        ("raw newline in a string", b'{"id": "a\nb"}', bad_json),
        ("NUL escape in a value", b'{"id": "a\\u0000b"}', bad_json),
        ("NUL escape in a key", b'{"a\\u0000": 1}', bad_json),
        ("NUL escape deep inside", b'{"spec": {"nodes": [{"name": "\\u0000"}]}}', bad_json),
        ("escaped backslash then u0000", b'{"id": "\\\\u0000"}', refused),
        ("duplicate keys", b'{"id": "a", "id": "Bad Id", "id": 5}', refused),
        ("integer of 5000 digits", b'{"id": ' + b"9" * 5000 + b"}", bad_json),
        ("float out of range", b'{"spec": {"port": 1e400}}', bad_json),
        ("negative float out of range", b'{"spec": {"port": -1e400}}', bad_json),
        ("integer beyond 64 bits", b'{"spec": {"port": 18446744073709551616}}', refused),
        ("NaN", b'{"spec": {"port": NaN}}', bad_json),
        ("exactly the limit", pad + b" " * (max_body - len(pad)), refused),
        ("one byte over the limit", pad + b" " * (max_body + 1 - len(pad)), {413}),
    ]


def leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every field, item and container inside `value` (not the root)."""
    if path:
        yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaf_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaf_paths(item, (*path, index))


def with_value(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A deep copy of `document` with the thing at `path` replaced by `value`."""
    copied = copy.deepcopy(document)
    parent = copied
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return copied


def wrong_typed(template: Any) -> Iterator[tuple[str, bytes]]:
    """Every field of `template` replaced by each of WRONG_VALUES, one at a time."""
    for path in leaf_paths(template):
        for value in WRONG_VALUES:
            body = json.dumps(with_value(template, path, value)).encode()
            yield f"{'.'.join(map(str, path))} = {value!r}", body


def assert_log_clean(target: Target) -> None:
    """No line of the server log starts with attacker text; no internal error was logged."""
    lines = target.log_lines()
    assert lines, "the server log is empty"
    forged = [line for line in lines if line.startswith(FORGED[:23]) or "FORGED" in line[:40]]
    assert not forged, forged[:5]
    internal = [line for line in lines if "internal error" in line or "Traceback" in line]
    assert not internal, internal[:5]
    # Everything a record of ours prints starts with its timestamp or the continuation mark;
    # `admin token written …` is the one line `serve` prints itself.
    strays = [
        line for line in lines if not _LINE_START.match(line) and not line.startswith("admin token")
    ]
    assert not strays, strays[:5]
