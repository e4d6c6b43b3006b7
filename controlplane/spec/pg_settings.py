"""PostgreSQL setting rules read from the installed server: names, types, ranges, units, enums.

`postgres --describe-config` prints one tab-separated line per setting a configuration file may
hold (name, context, group, type, reset value, min, max, descriptions); it says nothing of units
or enum values. Those come from the server too: a scratch configuration file that sets every
integer and real just outside its range and every enum to a value it lacks makes `postgres`
log, for each, "<min - 1> <base unit> is outside the valid range …" or "Available values: …",
and exit without touching any data. Both texts are parsed here into a `SettingRules` table,
built once per process (`load_setting_rules`) and passed down; values are then checked in pure
code that follows guc.c (`parse_bool`, `parse_int`, `parse_real`, `convert_to_base_unit`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import msgspec

from controlplane.settings import Settings
from controlplane.spec.pg_values import (
    INTEGER_RANGE_HINT,
    UNKNOWN_UNIT,
    parse_bool,
    parse_number,
)
from controlplane.system.files import OwnedFiles
from controlplane.system.process import as_user, run_command

log = logging.getLogger(__name__)

SettingType = Literal["bool", "integer", "real", "string", "enum"]
_TYPES: Mapping[str, SettingType] = MappingProxyType(
    {"BOOLEAN": "bool", "INTEGER": "integer", "REAL": "real", "STRING": "string", "ENUM": "enum"}
)
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
# describe-config prints DBL_MAX with %g, which reads back a little smaller.
_PRINTED_DBL_MAX = 1.79769e308
_PROBE_ENUM = "cp-probe-not-a-value"
_PROBE_TIMEOUT = 30.0
# Every line of both outputs is needed (a few hundred settings, up to two lines each).
_MAX_LINES = 100_000

_OUT_OF_RANGE = re.compile(
    r"(?P<value>\S+)(?: (?P<unit>[0-9A-Za-z]+))? is outside the valid range for parameter "
    r'"(?P<name>[^"]+)"'
)
_INVALID_VALUE = re.compile(r'invalid value for parameter "(?P<name>[^"]+)"')
_AVAILABLE = re.compile(r"Available values: (?P<values>.*)\.$")
_LOG_LINE = re.compile(r"\b(?P<level>LOG|HINT|FATAL|ERROR|WARNING):\s+(?P<text>.*)$")


class SettingRule(msgspec.Struct, frozen=True, kw_only=True):
    """What the server accepts for one setting (`min`/`max` in `unit`, its base unit)."""

    name: str
    context: str
    type: SettingType
    min: float | None = None
    max: float | None = None
    unit: str | None = None
    enum_values: tuple[str, ...] = ()


class SettingRules:
    """The installed server's settings by lower-case name (names match case-insensitively)."""

    def __init__(self, rules: Iterable[SettingRule], *, source: str) -> None:
        self._rules = {rule.name.lower(): rule for rule in rules}
        self.source = source

    def get(self, name: str) -> SettingRule | None:
        return self._rules.get(name.lower())

    def names(self) -> list[str]:
        return sorted(self._rules)

    def __len__(self) -> int:
        return len(self._rules)


# -- reading the server's own description ----------------------------------------------------


def parse_describe_config(text: str) -> list[SettingRule]:
    """Rules (without units or enum values) from `postgres --describe-config` output."""
    rules = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 7 or fields[3] not in _TYPES:
            continue
        name, context, _, raw_type, _, raw_min, raw_max = fields[:7]
        kind = _TYPES[raw_type]
        numeric = kind in ("integer", "real")
        rules.append(
            SettingRule(
                name=name,
                context=context,
                type=kind,
                min=_bound(raw_min) if numeric else None,
                max=_bound(raw_max) if numeric else None,
            )
        )
    return rules


def _bound(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if value >= _PRINTED_DBL_MAX:
        return sys.float_info.max
    if value <= -_PRINTED_DBL_MAX:
        return -sys.float_info.max
    return value


def probe_config(rules: Iterable[SettingRule]) -> str:
    """A configuration file the server refuses setting by setting, revealing each numeric
    setting's base unit (in its range error) and each enum's values (in its hint)."""
    lines = []
    for rule in rules:
        probe = _probe_value(rule)
        if probe is not None:
            lines.append(f"{rule.name} = '{probe}'")
    return "\n".join(lines) + "\n"


def _probe_value(rule: SettingRule) -> str | None:
    if rule.type == "enum":
        return _PROBE_ENUM
    if rule.type not in ("integer", "real") or rule.min is None or rule.max is None:
        return None
    low = _INT_MIN if rule.type == "integer" else -sys.float_info.max
    high = _INT_MAX if rule.type == "integer" else sys.float_info.max
    if rule.min > low:
        return _number(rule.min - 1)
    if rule.max < high:
        return _number(rule.max + 1)
    return None


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}"


def parse_probe_log(text: str) -> tuple[dict[str, str | None], dict[str, tuple[str, ...]]]:
    """(base unit or None, enum values) by lower-case setting name, from the server's answer to
    `probe_config`."""
    units: dict[str, str | None] = {}
    enums: dict[str, tuple[str, ...]] = {}
    pending: str | None = None
    for line in text.splitlines():
        match = _LOG_LINE.search(line)
        if match is None:
            continue
        level, message = match.group("level"), match.group("text")
        if level == "HINT":
            available = _AVAILABLE.match(message)
            if pending is not None and available is not None:
                enums[pending] = tuple(v.strip() for v in available.group("values").split(","))
            pending = None
            continue
        pending = None
        if (found := _OUT_OF_RANGE.search(message)) is not None:
            units[found.group("name").lower()] = found.group("unit")
        elif (found := _INVALID_VALUE.search(message)) is not None:
            pending = found.group("name").lower()
    return units, enums


def build_rules(describe_text: str, probe_log: str, *, source: str) -> SettingRules:
    """The rules table from the two texts the server printed."""
    units, enums = parse_probe_log(probe_log)
    rules = []
    for rule in parse_describe_config(describe_text):
        key = rule.name.lower()
        if rule.type in ("integer", "real"):
            unit = units.get(key, UNKNOWN_UNIT)
            rule = msgspec.structs.replace(rule, unit=unit)
        elif rule.type == "enum":
            rule = msgspec.structs.replace(rule, enum_values=enums.get(key, ()))
        rules.append(rule)
    return SettingRules(rules, source=source)


async def load_setting_rules(settings: Settings) -> SettingRules | None:
    """Read the rules from the server binary in `settings.pg_bin_dir` (run as the OS user: the
    server refuses root). None, with a warning, when it is absent or does not answer: then
    only the control plane's own rules are checked up front and the server's are met when a
    node applies the configuration (a failing update puts the previous configuration back)."""
    binary = settings.pg_bin_dir / "postgres"
    if not binary.exists():
        log.warning("%s not found: postgresql_conf values are checked only when applied", binary)
        return None
    try:
        described = await run_command(
            as_user([str(binary), "--describe-config"], settings.os_user), keep_lines=_MAX_LINES
        )
        if described.exit_code != 0:
            raise OSError(f"postgres --describe-config exited {described.exit_code}")
        rules = parse_describe_config(described.output)
        probe_log = await run_config_probe(settings, probe_config(rules))
    except (OSError, TimeoutError, KeyError) as exc:  # KeyError: no such OS user
        log.warning(
            "reading setting rules from %s failed (%s): values checked when applied", binary, exc
        )
        return None
    table = build_rules(described.output, probe_log, source=str(binary))
    log.info("read the rules of %d settings from %s", len(table), binary)
    return table


async def run_config_probe(settings: Settings, conf: str) -> str:
    """What the installed server logs when started on a scratch directory holding only `conf`:
    every value it refuses, each with its reason. It exits at once: a config with errors stops
    it before it looks for a cluster (give at least one refused value)."""
    binary = settings.pg_bin_dir / "postgres"
    files = OwnedFiles(settings.os_user)
    scratch = Path(tempfile.mkdtemp(prefix="cp-guc-"))
    try:
        files.chown(scratch)
        files.write(scratch / "postgresql.conf", conf)
        argv = as_user([str(binary), "-D", str(scratch)], settings.os_user)
        environment = {"LC_ALL": "C", "LC_MESSAGES": "C", "LANG": "C"}
        result = await asyncio.wait_for(
            run_command(argv, env=environment, keep_lines=_MAX_LINES), _PROBE_TIMEOUT
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    return result.output


# -- checking a value ------------------------------------------------------------------------


def value_problem(rule: SettingRule, text: str) -> str | None:
    """Why the server would refuse `text` (the value as it reads it) for `rule`, or None."""
    if rule.type == "bool":
        if parse_bool(text) is None:
            return f"{rule.name} is a boolean: expected on or off (true/false, yes/no, 1/0)"
        return None
    if rule.type == "enum":
        return _enum_problem(rule, text)
    if rule.type in ("integer", "real"):
        return _number_problem(rule, text)
    return None


def _enum_problem(rule: SettingRule, text: str) -> str | None:
    values = {value.lower() for value in rule.enum_values}
    if not values or text.lower() in values:
        return None
    # Enums with on and off also take the boolean spellings (hidden from the server's hint).
    if {"on", "off"} <= values and text.lower() in {"true", "false", "yes", "no", "1", "0"}:
        return None
    return f"invalid value {text!r} for {rule.name}: expected one of {', '.join(rule.enum_values)}"


def _number_problem(rule: SettingRule, text: str) -> str | None:
    value, hint = parse_number(text, rule.type == "integer", rule.unit)
    kind = "an integer" if rule.type == "integer" else "a number"
    if value is None and hint == INTEGER_RANGE_HINT:
        return f"{text!r} is outside the valid range for {rule.name} ({_range(rule)})"
    if value is None:
        unit = "" if rule.unit in (None, UNKNOWN_UNIT) else f" (in {rule.unit} by default)"
        return f"invalid value {text!r} for {rule.name}: expected {kind}{unit}" + (
            f"; {hint}" if hint else ""
        )
    if rule.unit == UNKNOWN_UNIT or rule.min is None or rule.max is None:
        return None
    if not rule.min <= value <= rule.max:
        return f"{text!r} is outside the valid range for {rule.name} ({_range(rule)})"
    return None


def _range(rule: SettingRule) -> str:
    unit = f" {rule.unit}" if rule.unit and rule.unit != UNKNOWN_UNIT else ""
    low = "" if rule.min is None else _number(rule.min)
    high = "" if rule.max is None else _number(rule.max)
    return f"{low} .. {high}{unit}"
