"""Where the CLI connects: profiles of the config file, the token's search order and the
message naming every place looked at, TLS files."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from controlplane.cli.connection import Flags, config_path, resolve_connection
from controlplane.cli.errors import CliError
from tests.support.tls import make_test_tls


def _config(home: Path, text: str) -> Path:
    path = home / "controlplane" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_config_file_honours_xdg_config_home(tmp_path: Path) -> None:
    """The config file is under XDG_CONFIG_HOME, else ~/.config."""
    assert config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == (
        tmp_path / "controlplane" / "config.toml"
    )
    assert config_path({"HOME": "/home/ops"}) == Path("/home/ops/.config/controlplane/config.toml")


def test_flags_beat_environment_beat_profile_beat_data_dir(tmp_path: Path) -> None:
    """Each value comes from the first place that has it; relative profile paths are read
    next to the config file."""
    _config(
        tmp_path,
        '[profiles.default]\nurl = "https://default:1"\ntoken = "t-default"\n'
        '[profiles.ops]\nurl = "https://ops:2/"\ntoken_file = "ops.token"\ncacert = "ca.pem"\n',
    )
    (tmp_path / "controlplane" / "ops.token").write_text("t-ops\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "admin-token").write_text("t-admin\n")
    env = {"XDG_CONFIG_HOME": str(tmp_path), "CONTROLPLANE_DATA_DIR": str(tmp_path / "data")}
    default = resolve_connection(Flags(), env)
    assert (default.url, default.token) == ("https://default:1", "t-default")
    ops = resolve_connection(Flags(profile="ops"), env)
    assert (ops.url, ops.token) == ("https://ops:2", "t-ops")
    assert ops.cacert == tmp_path / "controlplane" / "ca.pem"
    by_env = resolve_connection(Flags(), env | {"CONTROLPLANE_PROFILE": "ops"})
    assert by_env.token == "t-ops"
    env_wins = resolve_connection(
        Flags(profile="ops"),
        env | {"CONTROLPLANE_URL": "http://e:3", "CONTROLPLANE_TOKEN": "t-env"},
    )
    assert (env_wins.url, env_wins.token) == ("http://e:3", "t-env")
    flag_wins = resolve_connection(Flags(profile="ops", url="http://f:4", token="t-flag"), env)
    assert (flag_wins.url, flag_wins.token) == ("http://f:4", "t-flag")
    no_profile = resolve_connection(
        Flags(),
        {
            "CONTROLPLANE_DATA_DIR": str(tmp_path / "data"),
            "XDG_CONFIG_HOME": str(tmp_path / "none"),
        },
    )
    assert (no_profile.url, no_profile.token) == ("http://127.0.0.1:3000", "t-admin")


def test_missing_token_names_every_place_looked_at(tmp_path: Path) -> None:
    """No token anywhere: the error lists the flags, the variable, the profile file and the
    data dir's admin-token path, each with why it had none."""
    env = {"XDG_CONFIG_HOME": str(tmp_path), "CONTROLPLANE_DATA_DIR": str(tmp_path / "gone")}
    connection = resolve_connection(Flags(), env)
    assert connection.token is None
    with pytest.raises(CliError) as raised:
        connection.require_token()
    message = raised.value.message
    assert raised.value.name == "missing_token"
    assert "--token and --token-file (not given)" in message
    assert "CONTROLPLANE_TOKEN (unset)" in message
    assert f"profile default in {tmp_path}/controlplane/config.toml (no such file)" in message
    assert f"{tmp_path}/gone/admin-token (no such directory" in message
    _config(tmp_path, '[profiles.default]\nurl = "http://x:1"\n')
    (tmp_path / "gone").mkdir()
    message = resolve_connection(Flags(), env).searched
    assert f"profile default in {tmp_path}/controlplane/config.toml (no token or token_file)" in (
        message
    )
    assert f"{tmp_path}/gone/admin-token (no such file; the data dir is --data-dir or" in (
        " ".join(message)
    )


@pytest.mark.parametrize(
    ("text", "flags", "expected"),
    [
        ("", Flags(profile="prod"), "no profile prod in"),
        ('[profiles.ops]\nurl = "x"\n', Flags(profile="prod"), "(profiles: ops)"),
        ('[profiles.default]\ntokn = "x"\n', Flags(), "unknown key(s) tokn"),
        ("[profiles.default]\nurl = 3\n", Flags(), "url must be a non-empty string"),
        ("[profiles\n", Flags(), "is not valid TOML"),
        ('[profiles.default]\ntoken_file = "missing"\n', Flags(), "cannot read token_file"),
    ],
)
def test_profile_mistakes_are_errors_naming_the_file(
    tmp_path: Path, text: str, flags: Flags, expected: str
) -> None:
    """A profile asked for but absent, an unknown key, a bad value, bad TOML or an unreadable
    token file is an error naming the config file (never a silent default)."""
    path = _config(tmp_path, text)
    with pytest.raises(CliError) as raised:
        resolve_connection(flags, {"XDG_CONFIG_HOME": str(tmp_path)})
    assert expected in raised.value.message
    assert str(path.parent) in raised.value.message


def test_no_config_file_and_an_explicit_profile_is_an_error(tmp_path: Path) -> None:
    """--profile without any config file says which file it looked for."""
    with pytest.raises(CliError, match="there is no config file"):
        resolve_connection(Flags(profile="prod"), {"XDG_CONFIG_HOME": str(tmp_path)})


def test_tls_files_build_a_verifying_context(tmp_path: Path) -> None:
    """--cacert gives a context that verifies with that CA; --cert/--key load a client
    certificate; unreadable files and a key without a certificate are errors."""
    tls = make_test_tls(tmp_path / "tls")
    plain = resolve_connection(Flags(url="https://localhost:1", token="t"), {})
    assert plain.verify() is True
    context = resolve_connection(
        Flags(token="t", cacert=str(tls.ca_file), cert=str(tls.cert_file), key=str(tls.key_file)),
        {},
    ).verify()
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.get_ca_certs()[0]["subject"] == ((("commonName", "controlplane test CA"),),)
    with pytest.raises(CliError, match="cannot use CA file"):
        resolve_connection(Flags(token="t", cacert=str(tmp_path / "none.pem")), {}).verify()
    with pytest.raises(CliError, match="--key needs --cert"):
        resolve_connection(Flags(token="t", key=str(tls.key_file)), {}).verify()
