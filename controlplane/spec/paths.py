"""Validation problems: a JSON path (`spec.nodes[1].port`) plus a lowercase message."""

from __future__ import annotations

Problem = dict[str, str]


def problem(path: str, message: str) -> Problem:
    """One validation error in the shape `InvalidInputError` reports."""
    return {"path": path, "message": message}


def field_path(base: str, name: str) -> str:
    """The path of field (or dict entry) `name` inside `base`; the request root is ``""``."""
    return f"{base}.{name}" if base else name


def item_path(base: str, index: int) -> str:
    """The path of list item `index` inside `base`."""
    return f"{base}[{index}]"


def has_control_chars(text: str) -> bool:
    """True when `text` could break out of an INI line or a C string (newline, CR, NUL)."""
    return any(char in text for char in "\n\r\0")


UNSAFE_TEXT = "must not contain a newline or NUL"
