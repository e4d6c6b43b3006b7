"""A small seeded fuzzer: random requests (paths, queries, headers, JSON-ish bodies) for the
routes of the OpenAPI document, reproducible from the seed alone."""

from __future__ import annotations

import json
import random
import string
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any

from tests.security.hostile import (
    HOSTILE_RAW_SEGMENTS,
    HOSTILE_SEGMENTS,
    TEMPLATES,
    deep,
    leaf_paths,
    with_value,
)
from tests.security.routes import ABSENT, Route

# Field names of our bodies, so random objects sometimes look almost right.
_KEYS = [
    "id", "spec", "database_name", "nodes", "name", "port", "host_ids", "database_users",
    "username", "password", "db_owner", "attributes", "postgresql_conf", "backup_config",
    "repositories", "schedules", "type", "base_path", "cron_expression", "restore_config",
    "source_database_id", "source_node_name", "repository", "restore_options", "target",
    "target_nodes", "pre_restore_backup", "annotations", "repository_id", "custom_options",
    "s3_bucket", "s3_key", "cipher", "retention_full", "source_node", "postgres_version",
]  # fmt: skip
_QUERY_KEYS = [
    "limit", "after_task_id", "after_entry_id", "sort_order", "status", "type", "parent_id",
    "force",
]  # fmt: skip
_CHARS = (
    string.ascii_letters + string.digits + string.punctuation + " \t\n\r\x00\x01\x1b\x7f"
    "\x85\u00e9\u4e2d\u2028\u2029\ufeff\U0001f600\ud800\udfff"
)
_NUMBERS = [0, -1, 1, 7, 65535, 65536, 2**31, 2**63, -(2**63) - 1, 10**30, 1.5, -0.0, 1e308]


@dataclass
class FuzzRequest:
    method: str
    path: str
    scope: str | None
    content: bytes | None
    headers: dict[str, str | bytes]


class Fuzzer:
    """Random requests for `routes`. `real` gives ids that exist (used only by GET requests,
    so the fuzzer never changes the database it reads); everything else exists nowhere."""

    def __init__(self, seed: int, routes: list[Route], real: dict[str, str]) -> None:
        self.rng = random.Random(seed)
        self.routes = routes
        self.real = real

    def request(self, index: int) -> FuzzRequest:
        """The index-th request; routes are taken in turn so every one gets its share."""
        route = self.routes[index % len(self.routes)]
        rng = self.rng
        values: dict[str, str] = {}
        encoded = False
        for param in route.params:
            value, raw = self.path_value(param, read_only=route.method == "GET")
            values[param] = value
            encoded = encoded or raw
        if encoded:  # the template is filled verbatim: quote the plain values ourselves
            values = {k: v if v in HOSTILE_RAW_SEGMENTS else _quote(v) for k, v in values.items()}
        headers: dict[str, str | bytes] = {}
        if rng.random() < 0.3:
            headers["Accept"] = rng.choice(["text/event-stream", "*/*", "application/json", "x"])
        if rng.random() < 0.2:
            # Header values are what HTTP lets through: visible ASCII and Latin-1 bytes.
            event = rng.choice([str(rng.choice(_NUMBERS)), "9" * 30, "\xb2", "-1", "1e3", "\xff"])
            headers["Last-Event-ID"] = event.encode("latin-1")
        if rng.random() < 0.2:
            headers["Content-Type"] = rng.choice(
                ["application/json", "text/plain", "multipart/form-data; boundary=x", "a/b; c=\xe9"]
            ).encode("latin-1")
        path = route.path(values, encoded=encoded)
        if rng.random() < 0.4:  # encoded here: values may hold bytes that are not UTF-8
            path += "?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in self.query().items())
        return FuzzRequest(
            method=route.method,
            path=path,
            scope=rng.choice(["read", "write", "admin", "admin", None]),
            content=self.body(route) if route.takes_body or rng.random() < 0.05 else None,
            headers=headers,
        )

    def path_value(self, param: str, *, read_only: bool) -> tuple[str, bool]:
        """A value for a path parameter, and whether it is already percent-encoded."""
        rng = self.rng
        roll = rng.random()
        if read_only and param in self.real and roll < 0.35:
            return self.real[param], False
        if roll < 0.5:
            return ABSENT.get(param, "x"), False
        if roll < 0.65:
            return rng.choice(HOSTILE_RAW_SEGMENTS), True
        if roll < 0.8:
            return rng.choice(HOSTILE_SEGMENTS), False
        if roll < 0.9:
            return rng.choice(
                [
                    f"fz{rng.randrange(10**6)}",
                    f"n{rng.randrange(100)}",
                    str(uuid.UUID(int=rng.getrandbits(128))),
                ]
            ), False
        return self.text(rng.choice([1, 5, 40, 300])), False

    def query(self) -> dict[str, str]:
        rng = self.rng
        keys = rng.sample(_QUERY_KEYS, rng.randint(1, 3)) + (
            [self.text(4)] if rng.random() < 0.2 else []
        )
        return {key: self.scalar_text() for key in keys}

    def scalar_text(self) -> str:
        rng = self.rng
        return rng.choice(
            [
                str(rng.choice(_NUMBERS)),
                "9" * rng.choice([19, 20, 400, 5000]),
                rng.choice(["asc", "desc", "completed", "node_backup", "true", "false", ""]),
                str(uuid.UUID(int=rng.getrandbits(128))),
                self.text(rng.choice([1, 8, 64])),
            ]
        )

    def text(self, length: int) -> str:
        return "".join(self.rng.choice(_CHARS) for _ in range(length))

    def value(self, depth: int = 0) -> Any:
        """A random JSON value, nesting at most 6 levels."""
        rng = self.rng
        kind = rng.random()
        if depth < 6 and kind < 0.2:
            return [self.value(depth + 1) for _ in range(rng.randint(0, 4))]
        if depth < 6 and kind < 0.4:
            return {
                (rng.choice(_KEYS) if rng.random() < 0.7 else self.text(rng.randint(0, 8))): (
                    self.value(depth + 1)
                )
                for _ in range(rng.randint(0, 5))
            }
        if kind < 0.6:
            return rng.choice(_NUMBERS)
        if kind < 0.65:
            return rng.choice([None, True, False])
        return self.text(rng.choice([0, 1, 3, 10, 63, 64, 1025]))

    def body(self, route: Route) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.45:
            _path, template = rng.choice(TEMPLATES)
            document: Any = template
            for _ in range(rng.randint(1, 3)):
                document = self.mutate(document)
        elif roll < 0.75:
            document = self.value()
        else:
            return self.junk()
        if route.template == "/v1/databases" and isinstance(document, dict):
            # A create that happens to be valid names the database that exists: 409, so the
            # fuzzer never starts a database of its own.
            document["id"] = self.real["database_id"]
        text = json.dumps(document, ensure_ascii=rng.random() < 0.5)
        return text.encode("utf-8", "surrogatepass")

    def mutate(self, document: Any) -> Any:
        rng = self.rng
        paths = list(leaf_paths(document))
        if not paths:
            return self.value()
        path = rng.choice(paths)
        roll = rng.random()
        if roll < 0.6:
            return with_value(document, path, self.value(3))
        parent_path, key = path[:-1], path[-1]
        copied = (
            with_value(document, path, None) if parent_path else json.loads(json.dumps(document))
        )
        parent: Any = copied
        for step in parent_path:
            parent = parent[step]
        if roll < 0.8 and isinstance(parent, dict):
            del parent[key]
            parent[self.text(rng.randint(1, 6))] = self.value(3)
        elif isinstance(parent, list):
            parent.extend(self.value(4) for _ in range(rng.randint(1, 20)))
        return copied

    def junk(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.25:
            return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
        if roll < 0.45:
            levels = rng.randint(50, 80)
            return deep(levels, objects=rng.random() < 0.5)
        if roll < 0.65:
            whole = json.dumps(rng.choice(TEMPLATES)[1]).encode()
            return whole[: rng.randint(0, len(whole))]
        if roll < 0.8:
            return rng.choice([b"", b" ", b"null", b"[]", b"{}", b'{"":{}}', b"\xef\xbb\xbf{}"])
        if roll < 0.97:
            escapes = [b'\\"', b"\\\\", b"\\u0000", b"\\ud800", b"\\n", b"[", b"{", b"]", b'"']
            inner = b"".join(rng.choice(escapes) for _ in range(rng.randint(1, 60)))
            return b'{"id": "' + inner + b'"}'
        # Rarely, a body around the size limit.
        size = rng.choice([1024 * 1024 - 20, 1024 * 1024 + 1])
        return b'{"id": "' + b"x" * size + b'"}'


def _quote(value: str) -> str:
    return urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")
