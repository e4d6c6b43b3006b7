"""pgBackRest argv building and exit codes in words.

`data/pgbackrest_errors.json` holds real pgBackRest 2.45 failures (exit code, command and
combined output) recorded on a PG15 scratch cluster: a backup before stanza-create (55),
a second backup while one held the lock (50), a restore while Postgres ran (38), a restore of
an unknown set (75), info without the cipher passphrase (37), and stanza-create / backup /
check from a second cluster pointed at the first one's repository (28, 51, 68).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controlplane.errors import ExternalCommandError
from controlplane.pgbackrest.command import (
    backup_argv,
    check_argv,
    describe_exit,
    error_for,
    expire_argv,
    info_argv,
    is_retryable,
    last_error_line,
    pgbackrest_argv,
    restore_argv,
    stanza_create_argv,
    verify_argv,
)

CONF = "/srv/cp/n1/pgbackrest.conf"
BASE = ["pgbackrest", f"--config={CONF}", "--stanza=db"]
SYSTEM_ID_WORDS = "the repository belongs to a different database system (system-id mismatch)"


def recorded() -> dict[str, dict[str, Any]]:
    """The recorded real failures, by scenario name."""
    path = Path(__file__).parent / "data" / "pgbackrest_errors.json"
    data: dict[str, dict[str, Any]] = json.loads(path.read_text())
    return data


def test_argv_shape() -> None:
    """Config and stanza come first, options in the given order, the command last."""
    argv = pgbackrest_argv(
        "backup",
        config_path=CONF,
        options={"type": "full", "process-max": 2, "annotation": ["a=1", "b=2"]},
    )
    assert argv == [
        *BASE,
        "--type=full",
        "--process-max=2",
        "--annotation=a=1",
        "--annotation=b=2",
        "backup",
    ]


def test_argv_booleans() -> None:
    """True renders --opt and False --no-opt, pgBackRest's boolean spelling."""
    argv = pgbackrest_argv(
        "backup", config_path=CONF, options={"start-fast": True, "resume": False}
    )
    assert argv == [*BASE, "--start-fast", "--no-resume", "backup"]


@pytest.mark.parametrize(
    "name",
    [
        "repo1-s3-key",
        "repo1-s3-key-secret",
        "repo2-cipher-pass",
        "repo1-s3-token",
        "repo1-azure-key",
        "repo1-gcs-key",
        "pg1-pass",
    ],
)
def test_argv_refuses_secrets(name: str) -> None:
    """Options that carry secrets are refused: argv is visible to every user via ps."""
    with pytest.raises(ValueError, match="secret"):
        pgbackrest_argv("backup", config_path=CONF, options={name: "x"})


@pytest.mark.parametrize("name", ["config", "stanza", "--type", "Type", "repo1_path", ""])
def test_argv_refuses_reserved_and_malformed_names(name: str) -> None:
    """config/stanza are set once by the builder; malformed option names are refused."""
    with pytest.raises(ValueError):
        pgbackrest_argv("info", config_path=CONF, options={name: "x"})


def test_argv_refuses_line_breaks_and_bad_commands() -> None:
    """A line break in a value or a malformed command name is refused."""
    with pytest.raises(ValueError):
        pgbackrest_argv("info", config_path=CONF, options={"set": "a\nb"})
    with pytest.raises(ValueError):
        pgbackrest_argv("info; rm -rf /", config_path=CONF)


def test_argv_allows_non_secret_key_lookalikes() -> None:
    """Options merely containing "key" (key-type, repo) are not mistaken for secrets."""
    argv = pgbackrest_argv("info", config_path=CONF, options={"repo1-s3-key-type": "auto"})
    assert argv == [*BASE, "--repo1-s3-key-type=auto", "info"]


def test_backup_argv_annotations() -> None:
    """The task annotation comes first, then user annotations sorted by key."""
    argv = backup_argv(
        CONF, type="incr", task_id="t-1", annotations={"z": "last", "a": "first"}, repo=2
    )
    assert argv == [
        *BASE,
        "--type=incr",
        "--annotation=controlplane_task_id=t-1",
        "--annotation=a=first",
        "--annotation=z=last",
        "--repo=2",
        "backup",
    ]


@pytest.mark.parametrize("key", ["controlplane_task_id", "a=b", ""])
def test_backup_argv_refuses_bad_annotation_keys(key: str) -> None:
    """User annotations may not spoof the task id or contain `=` in the key."""
    with pytest.raises(ValueError):
        backup_argv(CONF, type="full", task_id="t-1", annotations={key: "v"})


def test_restore_argv_latest_into_new_dir() -> None:
    """A clone restore: latest set, archive mode off, another data dir; no target action."""
    argv = restore_argv(CONF, archive_mode="off", pg_path="/srv/cp/n2/pgdata", process_max=4)
    assert argv == [
        *BASE,
        "--archive-mode=off",
        "--pg1-path=/srv/cp/n2/pgdata",
        "--process-max=4",
        "restore",
    ]


def test_restore_argv_point_in_time() -> None:
    """A PITR restore names set, type, target, timeline and promotes at the target."""
    argv = restore_argv(
        CONF,
        delta=True,
        set_label="20261121-084532F",
        target_type="time",
        target="2026-11-21 08:45:40+00",
        target_exclusive=True,
        target_timeline="current",
        repo=1,
    )
    assert argv == [
        *BASE,
        "--delta",
        "--set=20261121-084532F",
        "--type=time",
        "--target=2026-11-21 08:45:40+00",
        "--target-exclusive",
        "--target-action=promote",
        "--target-timeline=current",
        "--repo=1",
        "restore",
    ]


def test_restore_argv_immediate() -> None:
    """An immediate restore takes no target but still gets a target action."""
    argv = restore_argv(CONF, target_type="immediate", target_action="shutdown")
    assert argv == [*BASE, "--type=immediate", "--target-action=shutdown", "restore"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_type": "time"}, "needs a target"),
        ({"target_type": "immediate", "target": "x"}, "takes no target"),
        ({"target": "x"}, "takes no target"),
        ({"target_type": "default", "target_exclusive": True}, "target_exclusive"),
        ({"target_type": "sometime", "target": "x"}, "unknown restore type"),
    ],
)
def test_restore_argv_refuses_inconsistent_targets(kwargs: dict[str, Any], match: str) -> None:
    """Combinations pgBackRest would reject (031) or misread are refused up front."""
    with pytest.raises(ValueError, match=match):
        restore_argv(CONF, **kwargs)


def test_simple_command_argvs() -> None:
    """info, check, stanza-create, expire and verify build the expected argv."""
    assert info_argv(CONF) == [*BASE, "--output=json", "info"]
    assert info_argv(CONF, set_label="L") == [*BASE, "--output=json", "--set=L", "info"]
    assert check_argv(CONF) == [*BASE, "check"]
    assert stanza_create_argv(CONF) == [*BASE, "stanza-create"]
    assert expire_argv(CONF) == [*BASE, "expire"]
    assert expire_argv(CONF, set_label="L", repo=2) == [*BASE, "--set=L", "--repo=2", "expire"]
    assert verify_argv(CONF) == [*BASE, "verify"]
    assert verify_argv(CONF, repo=1) == [*BASE, "--repo=1", "verify"]


@pytest.mark.parametrize(
    ("scenario", "code", "words", "error"),
    [
        ("backup_missing_stanza", 55, "a required file is missing", "has a stanza-create been"),
        ("backup_lock_held", 50, "lock held by another backup or expire", "unable to acquire lock"),
        ("restore_pg_running", 38, "postgres is still running", "unable to restore while"),
        ("restore_unknown_set", 75, "backup set not found", "is not valid"),
        ("info_no_cipher_pass", 37, "option is missing", "requires option: repo2-cipher-pass"),
        ("stanza_create_mismatch", 28, SYSTEM_ID_WORDS, "do not match the database"),
        ("backup_mismatch", 51, SYSTEM_ID_WORDS, "do not match stanza"),
        ("check_mismatch", 68, "archive_command does not run pgbackrest", "must contain"),
    ],
)
def test_describe_recorded_failures(scenario: str, code: int, words: str, error: str) -> None:
    """Real failures are described with words for the code and pgBackRest's own ERROR text."""
    failure = recorded()[scenario]
    assert failure["code"] == code
    text = describe_exit(code, failure["output"], command=failure["command"])
    assert text.startswith(f"pgbackrest exited {code} (")
    assert words in text
    assert f"ERROR: [{code:03d}]" in text and error in text
    assert "\n" not in text


def test_error_for_message_and_flags() -> None:
    """error_for names the subject, the code in words, and marks lock-held retryable."""
    failure = recorded()["backup_lock_held"]
    error = error_for(
        50, failure["output"], command="backup", subject="backup of node n1 of storefront"
    )
    assert isinstance(error, ExternalCommandError)
    assert error.message.startswith(
        "backup of node n1 of storefront failed: pgbackrest exited 50 "
        "(lock held by another backup or expire on this stanza): ERROR: [050]"
    )
    assert error.exit_code == 50 and error.details == {"exit_code": 50}
    assert error.retryable is True
    assert error_for(75, "", command="restore", subject="restore").retryable is False


def test_is_retryable() -> None:
    """Only lock held, host unreachable and postgres unreachable are retried."""
    assert [code for code in range(256) if is_retryable(code)] == [49, 50, 56]


def test_describe_without_output_and_unknown_codes() -> None:
    """No ERROR line means words only; unknown and signal codes still read sensibly."""
    assert describe_exit(62, "", command="backup") == (
        "pgbackrest exited 62 (the stanza is stopped by pgbackrest stop)"
    )
    assert describe_exit(200, "noise", command="backup") == (
        "pgbackrest exited 200 (unexpected pgbackrest error)"
    )
    assert describe_exit(-15, "", command="restore") == "pgbackrest was killed by signal 15"


def test_command_specific_words() -> None:
    """The same code reads differently for the command that returned it."""
    assert "delta" in describe_exit(40, "", command="restore")
    assert "repository path is not empty" in describe_exit(40, "", command="stanza-create")


def test_last_error_line() -> None:
    """The last ERROR wins, continuation lines join it, later log lines do not."""
    output = (
        "P00  ERROR: [041]: first\n"
        "P00   INFO: retrying\n"
        "ERROR: [050]: unable to acquire lock\n"
        "       HINT: is another pgBackRest process running?\n"
        "P00   INFO: backup command end: aborted with exception [050]\n"
        "    indented noise\n"
    )
    assert last_error_line(output) == (
        "ERROR: [050]: unable to acquire lock HINT: is another pgBackRest process running?"
    )
    assert last_error_line("P00 INFO: ok\n") is None
    long = last_error_line("ERROR: [039]: " + "x" * 2000, limit=100)
    assert long is not None and len(long) == 100 and long.endswith("…")
