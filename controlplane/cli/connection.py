"""Where the client commands connect: URL, token and TLS files, each from the first place that
has it: a flag, the environment, the named profile of the config file, then the defaults (the
local data dir's admin token, http://127.0.0.1:3000).

The config file is `$XDG_CONFIG_HOME/controlplane/config.toml` (`~/.config/...` by default):

    [profiles.default]              # used when no --profile / CONTROLPLANE_PROFILE is given
    url = "https://cp.example.com:3000"
    token_file = "~/.config/controlplane/prod.token"   # or: token = "..."
    cacert = "ca.pem"                                  # relative to the config file's directory
    cert = "client.pem"
    key = "client.key"
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controlplane.cli.errors import CliError

if TYPE_CHECKING:
    import ssl

DEFAULT_URL = "http://127.0.0.1:3000"
DEFAULT_PROFILE = "default"
PROFILE_KEYS = ("url", "token", "token_file", "cacert", "cert", "key")


@dataclass(frozen=True)
class Profile:
    """One `[profiles.NAME]` table; paths already made absolute."""

    name: str
    path: Path
    url: str | None = None
    token: str | None = None
    token_file: Path | None = None
    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class Flags:
    """The root command's connection flags as given (None: not given)."""

    url: str | None = None
    token: str | None = None
    token_file: str | None = None
    data_dir: str | None = None
    profile: str | None = None
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class Connection:
    """What a client needs; `token` is None when no place had one (`searched` says where)."""

    url: str
    token: str | None
    searched: list[str] = field(default_factory=list)
    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def require_token(self) -> str:
        """The token, or the error naming every place it was looked for."""
        if self.token:
            return self.token
        raise CliError(
            "no api token found; looked in: "
            + "; ".join(self.searched)
            + ". Create one on the server with `controlplane token create NAME --scope read`"
            " and set CONTROLPLANE_TOKEN, or a profile's token_file",
            name="missing_token",
            details={"searched": self.searched},
        )

    def verify(self) -> ssl.SSLContext | bool:
        """The TLS context for `--cacert`/`--cert`/`--key`, or True (the system's CAs)."""
        if self.cacert is None and self.cert is None and self.key is None:
            return True
        import ssl

        if self.key is not None and self.cert is None:
            raise CliError("--key needs --cert (the client certificate)", name="invalid_tls")
        try:
            context = ssl.create_default_context(
                cafile=str(self.cacert) if self.cacert is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"cannot use CA file {self.cacert}: {exc}", name="invalid_tls") from None
        if self.cert is not None:
            try:
                context.load_cert_chain(
                    str(self.cert), str(self.key) if self.key is not None else None
                )
            except (OSError, ssl.SSLError) as exc:
                raise CliError(
                    f"cannot use client certificate {self.cert}: {exc}", name="invalid_tls"
                ) from None
        return context


def config_path(env: Mapping[str, str]) -> Path:
    """`$XDG_CONFIG_HOME/controlplane/config.toml`, `~/.config/...` when it is unset."""
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "controlplane" / "config.toml"


def load_profile(name: str | None, env: Mapping[str, str]) -> Profile | None:
    """The named profile (`--profile`, else CONTROLPLANE_PROFILE, else `default`); None when
    no profile was asked for and there is no `default` one. Asking for one that is not there
    is an error naming the file."""
    wanted = name or env.get("CONTROLPLANE_PROFILE") or None
    path = config_path(env)
    try:
        text = path.read_text()
    except FileNotFoundError:
        if wanted is None:
            return None
        raise CliError(
            f"no profile {wanted}: there is no config file {path}", name="unknown_profile"
        ) from None
    except OSError as exc:
        raise CliError(f"cannot read config file {path}: {exc}", name="invalid_config") from None
    import tomllib

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = f"config file {path} is not valid TOML: {exc}"
        raise CliError(message, name="invalid_config") from None
    profiles = document.get("profiles", {})
    if not isinstance(profiles, dict):
        raise CliError(f"config file {path}: `profiles` must be a table", name="invalid_config")
    table = profiles.get(wanted or DEFAULT_PROFILE)
    if table is None:
        if wanted is None:
            return None
        known = ", ".join(sorted(profiles)) or "none"
        raise CliError(f"no profile {wanted} in {path} (profiles: {known})", name="unknown_profile")
    return _profile(wanted or DEFAULT_PROFILE, path, table)


def _profile(name: str, path: Path, table: Any) -> Profile:
    where = f"profile {name} in {path}"
    if not isinstance(table, dict):
        raise CliError(f"{where} must be a table", name="invalid_config")
    unknown = sorted(set(table) - set(PROFILE_KEYS))
    if unknown:
        raise CliError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(PROFILE_KEYS)})",
            name="invalid_config",
        )
    for key, value in table.items():
        if not isinstance(value, str) or not value:
            raise CliError(f"{where}: {key} must be a non-empty string", name="invalid_config")

    def file(key: str) -> Path | None:
        value = table.get(key)
        return None if value is None else path.parent / Path(value).expanduser()

    return Profile(
        name=name,
        path=path,
        url=table.get("url"),
        token=table.get("token"),
        token_file=file("token_file"),
        cacert=file("cacert"),
        cert=file("cert"),
        key=file("key"),
    )


def _read_token(path: Path, what: str) -> str:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        message = f"cannot read {what} {path}: {exc.strerror}"
        raise CliError(message, name="invalid_token_file") from None
    if not text:
        raise CliError(f"{what} {path} is empty", name="invalid_token_file")
    return text


def _find_token(
    flags: Flags, profile: Profile | None, env: Mapping[str, str]
) -> tuple[str | None, list[str]]:
    """The token from the first place that has one, and every place looked at (never the
    token itself)."""
    if flags.token:
        return flags.token, []
    if flags.token_file:
        return _read_token(Path(flags.token_file).expanduser(), "--token-file"), []
    searched = ["--token and --token-file (not given)"]
    if env.get("CONTROLPLANE_TOKEN"):
        return env["CONTROLPLANE_TOKEN"], []
    searched.append("CONTROLPLANE_TOKEN (unset)")
    if profile is not None:
        if profile.token:
            return profile.token, []
        if profile.token_file is not None:
            return _read_token(profile.token_file, f"token_file of profile {profile.name}"), []
        searched.append(f"profile {profile.name} in {profile.path} (no token or token_file)")
    else:
        path = config_path(env)
        state = "no default profile" if path.exists() else "no such file"
        searched.append(f"profile {DEFAULT_PROFILE} in {path} ({state})")
    data_dir = flags.data_dir or env.get("CONTROLPLANE_DATA_DIR") or ".controlplane"
    admin = Path(data_dir).expanduser().resolve() / "admin-token"
    if admin.is_file():
        return _read_token(admin, "admin token"), []
    state = "no such file" if admin.parent.is_dir() else "no such directory"
    searched.append(f"{admin} ({state}; the data dir is --data-dir or CONTROLPLANE_DATA_DIR)")
    return None, searched


def resolve_connection(flags: Flags, env: Mapping[str, str] | None = None) -> Connection:
    """Flags, then the environment, then the profile, then the defaults."""
    env = os.environ if env is None else env
    profile = load_profile(flags.profile, env)
    token, searched = _find_token(flags, profile, env)
    url = flags.url or env.get("CONTROLPLANE_URL") or (profile and profile.url) or DEFAULT_URL

    def file(flag: str | None, from_profile: Path | None) -> Path | None:
        return Path(flag).expanduser() if flag else from_profile

    return Connection(
        url=url.rstrip("/"),
        token=token,
        searched=searched,
        cacert=file(flags.cacert, profile.cacert if profile else None),
        cert=file(flags.cert, profile.cert if profile else None),
        key=file(flags.key, profile.key if profile else None),
    )
