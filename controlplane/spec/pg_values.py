"""PostgreSQL setting values as the server reads them: guc.c's parse_bool, parse_int,
parse_real and convert_to_base_unit in pure Python (a value the server reads from a
configuration file passes here exactly when it passes there, units and rounding included).
"""

from __future__ import annotations

import math
import re

# A base unit this module cannot size (an integer setting whose range could not be probed).
UNKNOWN_UNIT = "?"
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
# guc.c's unit tables: every unit a value may carry, in bytes or milliseconds, largest first
# (a fraction of a unit is rounded to the next smaller one, as the server does).
_MEMORY_UNITS = (
    ("TB", 1024.0**4),
    ("GB", 1024.0**3),
    ("MB", 1024.0**2),
    ("kB", 1024.0),
    ("B", 1.0),
)
_TIME_UNITS = (
    ("d", 86_400_000.0),
    ("h", 3_600_000.0),
    ("min", 60_000.0),
    ("s", 1000.0),
    ("ms", 1.0),
    ("us", 0.001),
)
_MAX_UNIT_LENGTH = 3
_MEMORY_HINT = 'valid units are "B", "kB", "MB", "GB" and "TB"'
_TIME_HINT = 'valid units are "us", "ms", "s", "min", "h" and "d"'
INTEGER_RANGE_HINT = "the value exceeds the integer range"


def parse_bool(text: str) -> bool | None:
    """guc.c's parse_bool: any unique prefix of true/false/yes/no, on/off, 1/0, any case."""
    lowered = text.lower()
    if not lowered:
        return None
    for word, value in (("true", True), ("false", False), ("yes", True), ("no", False)):
        if word.startswith(lowered):
            return value
    if lowered == "on":
        return True
    if lowered in ("of", "off"):
        return False
    return {"1": True, "0": False}.get(lowered)


def parse_number(text: str, integer: bool, unit: str | None) -> tuple[float | None, str | None]:
    """(value in the base unit, None) as guc.c's parse_int/parse_real read `text`, or
    (None, hint) when the server would refuse it."""
    if integer:
        value, rest, overflow = _strtol(text)
        if rest[:1] in (".", "e", "E") or overflow:
            value, rest, overflow = _strtod(text)
    else:
        value, rest, overflow = _strtod(text)
    if value is None or overflow or math.isnan(value):
        return None, None
    rest = rest.lstrip()
    if rest:
        if unit is None:
            return None, "this setting takes no unit"
        converted = _to_base_unit(value, rest, unit)
        if converted is None:
            return None, _TIME_HINT if _is_time(unit) else _MEMORY_HINT
        value = converted
    if integer:
        if math.isinf(value) or not _INT_MIN <= round(value) <= _INT_MAX:
            return None, INTEGER_RANGE_HINT
        value = float(round(value))
    return value, None


def _strtol(text: str) -> tuple[float | None, str, bool]:
    """C strtol(text, &end, 0): leading spaces, a sign, 0x hex, 0 octal or decimal digits."""
    match = re.match(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if match is None:
        return None, text, False
    digits = match.group(2)
    if digits[:2].lower() == "0x":
        number = int(digits, 16)
    elif digits.startswith("0"):
        number = int(digits, 8)
    else:
        number = int(digits)
    number = -number if match.group(1) == "-" else number
    overflow = not -(2**63) <= number < 2**63
    return float(number), text[match.end() :], overflow


_DECIMAL = re.compile(r"\s*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")
_SPECIAL = re.compile(r"\s*[+-]?(?:infinity|inf|nan)", re.IGNORECASE)


def _strtod(text: str) -> tuple[float | None, str, bool]:
    """C strtod: a decimal number, inf or nan; overflow (and underflow to zero) flagged as
    ERANGE the way glibc does."""
    match = _DECIMAL.match(text) or _SPECIAL.match(text)
    if match is None:
        return None, text, False
    number_text = match.group(0).strip()
    value = float(number_text)
    lowered = number_text.lower()
    finite_text = "inf" not in lowered and "nan" not in lowered
    overflow = finite_text and math.isinf(value)
    underflow = (
        finite_text and value == 0.0 and any(c in "123456789" for c in lowered.split("e")[0])
    )
    return value, text[match.end() :], overflow or underflow


def _is_time(unit: str) -> bool:
    return unit in {name for name, _ in _TIME_UNITS}


def _unit_size(unit: str) -> float | None:
    """The size of a base unit (`8kB` is a block) in bytes or milliseconds."""
    table = dict(_TIME_UNITS) if _is_time(unit) else dict(_MEMORY_UNITS)
    if unit in table:
        return table[unit]
    match = re.fullmatch(r"([0-9]+)(kB|MB|B)", unit)
    if match is None:
        return None
    return int(match.group(1)) * dict(_MEMORY_UNITS)[match.group(2)]


def _to_base_unit(value: float, text: str, base: str) -> float | None:
    """guc.c's convert_to_base_unit: `text` is a unit (at most 3 characters, case-sensitive)
    and trailing spaces."""
    token = text[:_MAX_UNIT_LENGTH].split()[0] if text.strip() else ""
    remainder = text[len(token) :]
    if not token or remainder.strip() or base == UNKNOWN_UNIT:
        return None
    base_size = _unit_size(base)
    table = _TIME_UNITS if _is_time(base) else _MEMORY_UNITS
    if base_size is None:
        return None
    for position, (name, size) in enumerate(table):
        if name != token:
            continue
        converted = value * size / base_size
        if position + 1 < len(table):
            smaller = table[position + 1][1] / base_size
            converted = round(converted / smaller) * smaller
        return converted
    return None
