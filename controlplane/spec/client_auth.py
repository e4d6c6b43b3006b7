"""Checks of the spec's `pg_hba_conf` rules and `pg_ident_conf` maps (pgEdge's fields).

A rule the server cannot parse makes it refuse the whole file (at start, or keep the old one on
reload), so each line is checked here against PostgreSQL 15's syntax before it is stored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from controlplane.spec.paths import UNSAFE_TEXT, Problem, has_control_chars, item_path, problem

_CONNECTION_TYPES = frozenset(
    {"local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc"}
)
AUTH_METHODS = frozenset(
    {
        *("trust", "reject", "scram-sha-256", "md5", "password", "gss", "sspi", "ident"),
        *("peer", "ldap", "radius", "cert", "pam", "bsd"),
    }
)
_ADDRESS_KEYWORDS = frozenset({"all", "samehost", "samenet"})


def check_hba_rules(rules: Sequence[str], path: str) -> list[Problem]:
    """Problems with `pg_hba_conf` lines at `path` (one rule per item)."""
    errors: list[Problem] = []
    for index, rule in enumerate(rules):
        reason = hba_rule_problem(rule)
        if reason is not None:
            errors.append(problem(item_path(path, index), reason))
    return errors


def hba_rule_problem(rule: str) -> str | None:
    """Why `rule` is not one pg_hba.conf rule PostgreSQL 15 accepts, or None."""
    if has_control_chars(rule):
        return UNSAFE_TEXT
    fields = rule.split("#", 1)[0].split()
    if not fields:
        return "empty rule (one pg_hba.conf rule per item)"
    kind = fields[0]
    if kind.startswith("include"):
        return "include directives need PostgreSQL 16; this control plane runs PostgreSQL 15"
    if kind not in _CONNECTION_TYPES:
        return f"unknown connection type {kind!r} (one of {', '.join(sorted(_CONNECTION_TYPES))})"
    first_after = 3 if kind == "local" else 4
    if len(fields) < first_after + 1:
        shape = "local DATABASE USER METHOD" if kind == "local" else f"{kind} DATABASE USER "
        shape += "" if kind == "local" else "ADDRESS METHOD"
        return f"too few fields: expected {shape} [OPTIONS]"
    if kind != "local":
        reason = _address_problem(fields[3], fields[4] if len(fields) > 4 else None)
        if reason is not None:
            return reason
        if "/" not in fields[3] and _is_ip(fields[3]):
            first_after = 5  # an address followed by a separate netmask
    method = fields[first_after] if len(fields) > first_after else ""
    if method not in AUTH_METHODS:
        return (
            f"unknown authentication method {method!r} (one of {', '.join(sorted(AUTH_METHODS))})"
        )
    options = fields[first_after + 1 :]
    for option in options:
        if "=" not in option:
            return f"authentication option {option!r} is not NAME=VALUE"
    return _method_problem(kind, method, {option.split("=", 1)[0] for option in options})


def _method_problem(kind: str, method: str, options: set[str]) -> str | None:
    """Methods PostgreSQL 15 on Linux refuses in this place, or without their options."""
    if method in ("sspi", "bsd"):
        return f"authentication method {method} is not available on Linux"
    if method == "cert" and kind != "hostssl":
        return "cert authentication is only supported on hostssl connections"
    if method == "ldap" and not options & {"ldapserver", "ldapurl"}:
        return "ldap authentication needs ldapserver=... or ldapurl=..."
    if method == "radius" and not options & {"radiusservers", "radiusserver"}:
        return "radius authentication needs radiusservers=..."
    return None


def _address_problem(address: str, following: str | None) -> str | None:
    if address in _ADDRESS_KEYWORDS or address.startswith("."):
        return None
    if "/" in address:
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError:
            return f"invalid address {address!r} (expected CIDR like 10.0.0.0/8)"
        return None
    if _is_ip(address):
        if following is None or not _is_ip(following):
            return f"address {address!r} needs a /prefix length or a netmask after it"
        return None
    # A host name: letters, digits, dots and hyphens.
    if all(char.isalnum() or char in ".-" for char in address):
        return None
    return f"invalid address {address!r}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_ident_maps(maps: Sequence[str], path: str) -> list[Problem]:
    """Problems with `pg_ident_conf` lines (`MAPNAME SYSTEM-USERNAME PG-USERNAME`)."""
    errors: list[Problem] = []
    for index, line in enumerate(maps):
        if has_control_chars(line):
            errors.append(problem(item_path(path, index), UNSAFE_TEXT))
            continue
        fields = line.split("#", 1)[0].split()
        if len(fields) != 3:
            message = (
                "expected MAPNAME SYSTEM-USERNAME PG-USERNAME (3 fields), "
                f"got {len(fields)} field(s)"
            )
            errors.append(problem(item_path(path, index), message))
        elif fields[0].startswith("include"):
            message = "include directives need PostgreSQL 16; this control plane runs 15"
            errors.append(problem(item_path(path, index), message))
    return errors
