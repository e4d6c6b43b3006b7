"""pgBackRest option names and values: the checks shared by the config file and the argv."""

from __future__ import annotations

import re

_OPTION_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")

# Suffixes of every pgBackRest option that carries a credential (repo-s3-key,
# repo-s3-key-secret, repo-azure-key, repo-gcs-key, repo-cipher-pass, repo-s3-token, …).
# Such values may only travel through the environment (`secret_env`): a config file is
# readable by anyone who can read the instance dir, and argv is visible in `ps`.
_SECRET_SUFFIXES = ("key", "key-secret", "cipher-pass", "token", "pass")

# What custom_options may never touch: every path (repo, lock, log, spool, pg data, config),
# the stanza, and indexed options (`repo2-…`, `pg1-…`) that would reach past their own repo.
_STRUCTURAL_OPTION = re.compile(r"^((repo|pg)[0-9]+-.*|.*path|stanza|config.*)$")


def is_secret_option(name: str) -> bool:
    """True when the option name (without `--`) is one pgBackRest reads a credential from."""
    return name.endswith(_SECRET_SUFFIXES)


def check_option_name(name: str) -> None:
    """Refuse an option name that is not lowercase kebab-case or that names a secret."""
    if not _OPTION_NAME.match(name):
        raise ValueError(f"invalid pgbackrest option name {name!r}")
    if is_secret_option(name):
        raise ValueError(f"pgbackrest option {name!r} carries a secret: use the environment")


def check_custom_option(name: str) -> None:
    """Refuse a custom option that would redirect paths or the stanza, or carry a secret."""
    check_option_name(name)
    if _STRUCTURAL_OPTION.match(name):
        raise ValueError(f"custom option {name!r} may not set a path, the stanza or pg/repo<N>")


def check_option_value(name: str, value: str) -> None:
    """Refuse a value that would break out of its line (an INI value or a single argument)."""
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"pgbackrest option {name!r} has a line break or NUL in its value")


def flag(value: bool) -> str:
    """pgBackRest's spelling of a boolean option value."""
    return "y" if value else "n"
