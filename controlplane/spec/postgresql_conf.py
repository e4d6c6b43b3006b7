"""`postgresql_conf`: which settings a spec may give, and whether the server would take them.

Two kinds of rule. The server's own (names, types, units, ranges, enum values) come from the
installed binary (`pg_settings.SettingRules`). The control plane's are here: settings it
manages itself (ports, sockets, archiving, replication), settings that would reach outside a
node (paths, libraries, shell commands, include directives) and settings that would break it
(certificates it does not provision, replication capacity below what the mesh needs).
"""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Mapping
from types import MappingProxyType

from controlplane.spec.models import ConfValue
from controlplane.spec.paths import UNSAFE_TEXT, Problem, field_path, has_control_chars, problem
from controlplane.spec.pg_settings import SettingRules, value_problem
from controlplane.spec.pg_values import parse_bool, parse_number

_NAME = re.compile(r"^[a-z_][a-z0-9_.]{0,63}$")
# Python's repr of a float that postgresql.conf also reads unquoted (no exponent, no inf/nan).
_PLAIN_DECIMAL = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")

# What the replication mesh needs on every node; a spec may raise these, never lower them.
MESH_MINIMUMS: Mapping[str, int] = MappingProxyType(
    {"max_wal_senders": 20, "max_replication_slots": 20, "max_worker_processes": 24}
)

_MANAGED = "is managed by the control plane"
_REFUSED: Mapping[str, str] = MappingProxyType(
    {
        **dict.fromkeys(
            ("port", "listen_addresses", "unix_socket_directories", "unix_socket_group"),
            f"{_MANAGED}: it places every node on its host and reaches it there",
        ),
        "unix_socket_permissions": f"{_MANAGED}: it places every node on its host",
        "cluster_name": f"{_MANAGED}: it names each instance after its id",
        "wal_level": f"{_MANAGED}: the replication mesh needs wal_level = logical",
        "archive_mode": f"{_MANAGED}: WAL archiving is always on (backups only change the command)",
        "track_commit_timestamp": f"{_MANAGED}: xid restore targets need commit timestamps",
        "password_encryption": f"{_MANAGED}: passwords reach the server as SCRAM verifiers",
        "hot_standby": f"{_MANAGED}: restores rely on how recovery ends",
        "output_plugin_libraries": f"{_MANAGED}: the mesh needs pglogical's output plugin",
        **dict.fromkeys(
            ("primary_conninfo", "primary_slot_name", "promote_trigger_file"),
            f"{_MANAGED}: nodes are primaries joined by logical replication, not standbys",
        ),
        "synchronous_standby_names": (
            f"{_MANAGED}: every commit would wait for a synchronous standby the node does not have"
        ),
        **dict.fromkeys(
            ("data_directory", "config_file", "hba_file", "ident_file", "external_pid_file"),
            f"{_MANAGED}: it places the node's files itself",
        ),
        **dict.fromkeys(
            (
                "ssl_cert_file",
                "ssl_key_file",
                "ssl_ca_file",
                "ssl_crl_file",
                "ssl_crl_dir",
                "ssl_dh_params_file",
                "krb_server_keyfile",
            ),
            "is a path outside the node's data directory: the control plane provisions no "
            "certificates or key files",
        ),
        **dict.fromkeys(
            (
                "shared_preload_libraries",
                "session_preload_libraries",
                "local_preload_libraries",
                "dynamic_library_path",
                "extension_destdir",
                "jit_provider",
                "archive_library",
            ),
            "loads server code from the host: the control plane manages the libraries "
            "(pglogical) every node loads",
        ),
        **dict.fromkeys(
            (
                "archive_command",
                "restore_command",
                "archive_cleanup_command",
                "recovery_end_command",
                "ssl_passphrase_command",
            ),
            "runs a shell command on the host: the control plane sets archiving and restore "
            "commands itself (pgBackRest)",
        ),
        **dict.fromkeys(
            ("include", "include_dir", "include_if_exists"),
            "would read another file into the node's configuration",
        ),
    }
)


def conf_text(value: ConfValue) -> str:
    """The value as the server reads it from postgresql.conf (booleans as on/off)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def quote_conf(value: ConfValue) -> str:
    """A postgresql.conf value: booleans on/off, integers and plain decimals bare, anything
    else single-quoted (the server reads `1e-05` unquoted as the integer 1 followed by junk)."""
    text = conf_text(value)
    if isinstance(value, bool | int) or (isinstance(value, float) and _PLAIN_DECIMAL.match(text)):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def check_postgresql_conf(
    conf: Mapping[str, ConfValue], path: str, rules: SettingRules | None
) -> list[Problem]:
    """Problems with a `postgresql_conf` at `path`: the control plane's rules always, the
    server's (`rules`, read from the installed binary) when known."""
    errors: list[Problem] = []
    for key, value in conf.items():
        reason = setting_problem(key, value, rules)
        if reason is not None:
            errors.append(problem(field_path(path, key), reason))
    return errors


def setting_problem(key: str, value: ConfValue, rules: SettingRules | None) -> str | None:
    """Why `key = value` cannot be in a spec's postgresql_conf, or None."""
    if has_control_chars(key) or not _NAME.fullmatch(key):
        return "invalid parameter name (expected ^[a-z_][a-z0-9_.]*$, at most 64 chars)"
    text = conf_text(value)
    if has_control_chars(text):
        return UNSAFE_TEXT
    if key in _REFUSED:
        return f"parameter {key} {_REFUSED[key]}"
    if key.startswith("recovery_target"):
        return f"parameter {key} {_MANAGED}: restores set their own targets"
    if rules is not None and "." not in key:
        # A dotted name is an extension's: the server only knows it once the library loads.
        rule = rules.get(key)
        if rule is None:
            return _unknown(key, rules)
        reason = value_problem(rule, text)
        if reason is not None:
            return reason
    return _node_problem(key, text)


def _unknown(key: str, rules: SettingRules) -> str:
    close = difflib.get_close_matches(key, rules.names(), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (
        f"unknown parameter {key}: the installed PostgreSQL server has no such setting, or "
        f"it is a developer option that cannot be set here{hint}"
    )


def _node_problem(key: str, text: str) -> str | None:
    """What would break the node or reach outside it, given a value the server accepts."""
    if key == "ssl" and parse_bool(text):
        return "ssl cannot be turned on: the control plane provisions no server certificate"
    if key == "log_directory":
        return _log_directory_problem(text)
    if key == "log_filename" and "/" in text:
        return "log_filename must be a file name inside log_directory (no '/')"
    minimum = MESH_MINIMUMS.get(key)
    if minimum is not None:
        value, _ = parse_number(text, True, None)
        if value is not None and value < minimum:
            return (
                f"{key} must be at least {minimum}: the replication mesh between the nodes "
                "needs that many"
            )
    return None


def _log_directory_problem(text: str) -> str | None:
    if text.startswith("/"):
        return "log_directory must be relative to the node's data directory"
    first = text.split("/")[0]
    if not text or posixpath.normpath(text) != text or first == "..":
        return "log_directory must be a normalised path inside the data directory (no '..')"
    if first.startswith("pg_") or first in ("base", "global"):
        return f"log_directory must not be inside the server's own directory {first}"
    return None
