"""Task ids as people type them: a whole id, or a unique prefix of at least six hex digits
(dashes may be left out), resolved against the database's tasks."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from controlplane.cli.errors import CliError

if TYPE_CHECKING:
    from controlplane.client.sync import Client

MIN_PREFIX = 6
_FULL_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PREFIX = re.compile(r"^[0-9a-f-]+$")
_PAGE = 1000
_SHOWN = 5


def is_full_id(text: str) -> bool:
    return _FULL_ID.match(text.lower()) is not None


def _digits(text: str) -> str:
    return text.lower().replace("-", "")


def check_prefix(text: str) -> str:
    """The prefix's hex digits, or a usage error saying what a task id looks like."""
    digits = _digits(text)
    if not _PREFIX.match(text.lower()) or len(digits) < MIN_PREFIX:
        raise CliError(
            f"task id {text!r} is neither a task id nor a prefix of at least {MIN_PREFIX} hex"
            " digits",
            name="invalid_task_id",
            exit_code=2,
        )
    return digits


def match_prefix(text: str, database_id: str, task_ids: Iterable[str]) -> str:
    """The one task id starting with `text`; an error when none or several do."""
    digits = check_prefix(text)
    found = sorted({t for t in task_ids if _digits(t).startswith(digits)})
    if len(found) == 1:
        return found[0]
    if not found:
        raise CliError(
            f"no task of {database_id} has an id starting with {text}",
            name="not_found",
            details={"prefix": text},
        )
    shown = ", ".join(found[:_SHOWN]) + (", …" if len(found) > _SHOWN else "")
    raise CliError(
        f"task id prefix {text} is ambiguous: {len(found)} tasks of {database_id} match"
        f" ({shown}); give more digits",
        name="ambiguous_task_id",
        exit_code=2,
        details={"prefix": text, "matches": found},
    )


def resolve_task_id(client: Client, database_id: str, text: str) -> str:
    """A whole id as given; a prefix looked up among every task of the database."""
    if is_full_id(text):
        return text.lower()
    check_prefix(text)
    ids: list[str] = []
    after: str | None = None
    while True:
        page = client.list_tasks(database_id, limit=_PAGE, after_task_id=after)
        ids += [t.task_id for t in page]
        if len(page) < _PAGE:
            break
        after = page[-1].task_id
    return match_prefix(text, database_id, ids)
