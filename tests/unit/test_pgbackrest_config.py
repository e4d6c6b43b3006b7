"""Rendering of pgbackrest.conf, its secret environment, archive_command and atomic writes."""

from __future__ import annotations

import os
import pwd
import shlex
from pathlib import Path
from typing import Any

import msgspec
import pytest

from controlplane.errors import InvalidInputError
from controlplane.pgbackrest.config import (
    NOOP_ARCHIVE_COMMAND,
    InstanceLayout,
    RepositoryPlan,
    archive_command,
    ensure_state_dirs,
    plan_repositories,
    render_config,
    repository_path,
    secret_env,
    write_config_atomic,
)
from controlplane.spec import parse_database_request
from controlplane.spec.models import (
    BackupConfig,
    DatabaseSpec,
    GcsRepository,
    PosixRepository,
    Repository,
)

GOLDEN = Path(__file__).parent / "golden"

LAYOUT = InstanceLayout(
    instance_dir="/var/lib/controlplane/instances/storefront-n1",
    pg_data="/var/lib/controlplane/instances/storefront-n1/pgdata",
    pg_port=5433,
    pg_socket_dir="/tmp/cp-sock",
)

S3_KEY = "AKIAEXAMPLEKEY0001"
S3_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq=="
GCS_KEY = "ya29.dummy-gcs-token-value"
CIPHER_PASS = "cipher-passphrase-0123456789abcdef0123456789"

POSIX: dict[str, Any] = {
    "type": "posix",
    "base_path": "/backups/",
    "retention_full": 3,
    "retention_full_type": "count",
    "retention_diff": 6,
}
S3: dict[str, Any] = {
    "type": "s3",
    "id": "offsite",
    "s3_bucket": "pgbr-bucket",
    "s3_region": "us-east-1",
    "s3_endpoint": "localhost",
    "s3_key": S3_KEY,
    "s3_key_secret": S3_SECRET,
    "s3_uri_style": "path",
    "base_path": "/pgbackrest",
    "storage_port": 59010,
    "storage_ca_file": "/etc/controlplane/tls/ca.crt",
    "retention_full": 14,
    "retention_full_type": "time",
}
AZURE: dict[str, Any] = {
    "type": "azure",
    "azure_account": "devstoreaccount1",
    "azure_container": "pgbr",
    "azure_endpoint": "localhost",
    "azure_key": AZURE_KEY,
    "azure_uri_style": "path",
    "storage_port": 59100,
    "storage_verify_tls": False,
}
GCS: dict[str, Any] = {
    "type": "gcs",
    "gcs_bucket": "pgbr",
    "gcs_endpoint": "localhost:59200",
    "gcs_key_type": "token",
    "gcs_key": GCS_KEY,
    "storage_ca_file": "/etc/controlplane/tls/ca.crt",
}
ENCRYPTED_S3: dict[str, Any] = {
    "type": "s3",
    "s3_bucket": "prod-backups",
    "s3_region": "eu-west-1",
    "s3_key": S3_KEY,
    "s3_key_secret": S3_SECRET,
    "cipher": True,
}
CUSTOM: dict[str, Any] = {
    **POSIX,
    "custom_options": {
        "repo-bundle-limit": "4MiB",
        "compress-type": "lz4",
        "repo-hardlink": "y",
        "buffer-size": "2MiB",
    },
}


def plans_for(
    *repositories: dict[str, Any], node: str = "n1", generations: dict[str, int] | None = None
) -> list[RepositoryPlan]:
    """Plan repositories from plain JSON, as the spec arrives over the API."""
    config = msgspec.convert({"repositories": list(repositories)}, BackupConfig)
    return plan_repositories(
        config,
        database_id="storefront",
        node_name=node,
        generations=generations,
        cipher_passes={"s3": CIPHER_PASS, "posix": CIPHER_PASS},
    )


def assert_golden(name: str, text: str) -> None:
    """Compare with tests/unit/golden/<name>; UPDATE_GOLDENS=1 rewrites the file first."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDENS") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text


def render(plans: list[RepositoryPlan], **kwargs: Any) -> str:
    """Render with the defaults a two-core host gets."""
    return render_config(LAYOUT, plans, process_max=kwargs.pop("process_max", 2), **kwargs)


def test_posix_only_golden() -> None:
    """A single posix repository renders paths, retention and the documented defaults."""
    assert_golden("posix_only.conf", render(plans_for(POSIX)))


def test_s3_golden() -> None:
    """An s3 repository renders endpoint, port, CA file, URI style and no keys."""
    assert_golden("s3.conf", render(plans_for(S3), io_timeout=10, archive_timeout=20))


def test_azure_golden() -> None:
    """An azure repository renders account, container, endpoint, URI style and verify-tls=n."""
    assert_golden("azure.conf", render(plans_for(AZURE)))


def test_gcs_golden() -> None:
    """A gcs repository renders bucket, endpoint and key type but not the key."""
    assert_golden("gcs.conf", render(plans_for(GCS)))


def test_multi_repo_golden() -> None:
    """posix + encrypted s3 number as repo1/repo2; s3 defaults its endpoint from the region."""
    plans = plans_for(POSIX, ENCRYPTED_S3, generations={"s3": 3})
    text = render(plans, process_max=4)
    assert_golden("multi_repo.conf", text)
    assert "repo2-s3-endpoint=s3.eu-west-1.amazonaws.com\n" in text
    assert "repo2-path=/databases/storefront/s3/n1/3\n" in text


def test_node_level_config_golden() -> None:
    """A node-level backup_config replaces the database one and paths carry the node name."""
    spec = msgspec.convert(
        {
            "database_name": "app",
            "backup_config": {"repositories": [POSIX]},
            "nodes": [
                {"name": "n1"},
                {"name": "n2", "backup_config": {"repositories": [{**POSIX, "id": "n2-local"}]}},
            ],
        },
        DatabaseSpec,
    )
    node = spec.nodes[1]
    config = node.backup_config or spec.backup_config
    assert config is not None
    plans = plan_repositories(config, database_id="storefront", node_name=node.name)
    layout = msgspec.structs.replace(
        LAYOUT,
        instance_dir="/srv/cp/storefront-n2",
        pg_data="/srv/cp/storefront-n2/pgdata",
        pg_port=5434,
    )
    text = render_config(layout, plans, process_max=1)
    assert_golden("node_level.conf", text)
    assert "repo1-path=/backups/databases/storefront/n2-local/n2/1\n" in text


def test_custom_options_golden() -> None:
    """custom_options: `repo-*` keys become repo<N>-*, others go to [global] and win defaults."""
    text = render(plans_for(CUSTOM, ENCRYPTED_S3))
    assert_golden("custom_options.conf", text)
    assert "compress-type=lz4\n" in text and "compress-type=zst" not in text
    assert "repo1-bundle-limit=4MiB\n" in text and "repo2-bundle-limit" not in text


@pytest.mark.parametrize("repositories", [[S3], [AZURE], [GCS], [POSIX, ENCRYPTED_S3]])
def test_no_secret_in_file_and_all_in_env(repositories: list[dict[str, Any]]) -> None:
    """Every secret is absent from the file and present in secret_env under its pgBackRest name."""
    plans = plans_for(*repositories)
    text = render(plans)
    env = secret_env(plans)
    assert env
    for value in env.values():
        assert value not in text
    assert set(env.values()) <= {S3_KEY, S3_SECRET, AZURE_KEY, GCS_KEY, CIPHER_PASS}


def test_secret_env_names() -> None:
    """secret_env uses PGBACKREST_REPO<N>_* names and only for secrets that are set."""
    plans = plans_for(POSIX, ENCRYPTED_S3, {**GCS, "gcs_key": None}, AZURE)
    assert secret_env(plans) == {
        "PGBACKREST_REPO2_S3_KEY": S3_KEY,
        "PGBACKREST_REPO2_S3_KEY_SECRET": S3_SECRET,
        "PGBACKREST_REPO2_CIPHER_PASS": CIPHER_PASS,
        "PGBACKREST_REPO4_AZURE_KEY": AZURE_KEY,
    }


def test_render_is_deterministic() -> None:
    """Rendering twice, or with custom_options in another order, yields the same text."""
    reordered = {**CUSTOM, "custom_options": dict(reversed(CUSTOM["custom_options"].items()))}
    first = render(plans_for(CUSTOM, S3))
    assert first == render(plans_for(CUSTOM, S3))
    assert first == render(plans_for(reordered, S3))


def test_keys_sorted_within_sections() -> None:
    """Keys inside [global] and [db] are in sorted order."""
    text = render(plans_for(CUSTOM, ENCRYPTED_S3))
    global_part, db_part = text.split("[global]\n")[1].split("\n[db]\n")
    for section in (global_part, db_part):
        keys = [line.split("=")[0] for line in section.splitlines() if "=" in line]
        assert keys == sorted(keys) and keys


def test_newline_in_value_refused() -> None:
    """A value with a line break (an INI injection) raises instead of being written."""
    plans = plans_for({**POSIX, "custom_options": {"buffer-size": "1MiB\nrepo1-path=/etc"}})
    with pytest.raises(ValueError, match="newline"):
        render(plans)


def test_secret_custom_option_refused() -> None:
    """A custom option naming a secret (repo-s3-key) never reaches the file."""
    plans = plans_for({**S3, "custom_options": {"repo-s3-key": "leaked"}})
    with pytest.raises(ValueError, match="secret"):
        render(plans)


@pytest.mark.parametrize(
    "key", ["repo1-path", "repo-path", "pg1-path", "lock-path", "stanza", "config-include-path"]
)
def test_structural_custom_option_refused(key: str) -> None:
    """custom_options cannot redirect paths, the stanza or another repo's indexed options."""
    plans = plans_for({**POSIX, "custom_options": {key: "/tmp/elsewhere"}})
    with pytest.raises(ValueError, match="may not be set"):
        render(plans)


def test_disagreeing_global_custom_options_refused() -> None:
    """Two repositories asking for different global values is an error, not a silent pick."""
    plans = plans_for(
        {**POSIX, "custom_options": {"compress-type": "lz4"}},
        {**ENCRYPTED_S3, "custom_options": {"compress-type": "zst"}},
    )
    with pytest.raises(ValueError, match="disagree"):
        render(plans)


def test_repository_path_shapes() -> None:
    """The path is <base>/databases/<db>/<repo id>/<node>/<generation>, normalised."""
    posix = PosixRepository(base_path="/backups//x/", id="local")
    assert (
        repository_path(posix, database_id="db1", node_name="n3", generation=2)
        == "/backups/x/databases/db1/local/n3/2"
    )
    bare = msgspec.convert(ENCRYPTED_S3, Repository)
    assert repository_path(bare, database_id="db1", node_name="n1", generation=1) == (
        "/databases/db1/s3/n1/1"
    )


@pytest.mark.parametrize(
    ("base_path", "node", "generation"),
    [("relative/path", "n1", 1), ("/b", "n1", 0), ("/b", "..", 1), ("/b", "n1/../n2", 1)],
)
def test_repository_path_refuses_bad_input(base_path: str, node: str, generation: int) -> None:
    """Relative bases, generation 0 and path separators in ids are refused."""
    repo = PosixRepository(base_path=base_path)
    with pytest.raises(ValueError):
        repository_path(repo, database_id="db1", node_name=node, generation=generation)


def test_plan_repositories_numbers_and_passes() -> None:
    """Repos are numbered from 1 in spec order; only encrypted repos get their passphrase."""
    plans = plans_for(POSIX, ENCRYPTED_S3)
    assert [plan.index for plan in plans] == [1, 2]
    assert [plan.cipher_pass for plan in plans] == [None, CIPHER_PASS]
    assert plans[0].path == "/backups/databases/storefront/posix/n1/1"


def test_plan_repositories_requires_cipher_pass() -> None:
    """An encrypted repository without a passphrase cannot be planned."""
    config = msgspec.convert({"repositories": [ENCRYPTED_S3]}, BackupConfig)
    with pytest.raises(ValueError, match="passphrase"):
        plan_repositories(config, database_id="db1", node_name="n1", cipher_passes={})


def test_archive_command_shapes() -> None:
    """archive_command quotes unsafe paths, doubles `%` and keeps `%p` for Postgres."""
    assert (
        archive_command("/srv/cp/n1/pgbackrest.conf")
        == "pgbackrest --config=/srv/cp/n1/pgbackrest.conf --stanza=db archive-push %p"
    )
    tricky = archive_command("/srv/my dir/100%/pgbackrest.conf")
    # What the shell sees once Postgres has expanded %% and %p.
    expanded = tricky.replace("%p", "pg_wal/0001").replace("%%", "%")
    assert shlex.split(expanded) == [
        "pgbackrest",
        "--config=/srv/my dir/100%/pgbackrest.conf",
        "--stanza=db",
        "archive-push",
        "pg_wal/0001",
    ]
    assert NOOP_ARCHIVE_COMMAND == "/bin/true"


def test_write_config_atomic(tmp_path: Path) -> None:
    """The file is written 0600, a same-content rewrite is a no-op, new content replaces it."""
    path = tmp_path / "pgbackrest.conf"
    assert write_config_atomic(path, "a=1\n", uid=None, gid=None) is True
    assert path.read_text() == "a=1\n"
    assert path.stat().st_mode & 0o777 == 0o600
    mtime = path.stat().st_mtime_ns
    assert write_config_atomic(path, "a=1\n", uid=None, gid=None) is False
    assert path.stat().st_mtime_ns == mtime
    assert write_config_atomic(path, "a=2\n", uid=None, gid=None) is True
    assert path.read_text() == "a=2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pgbackrest.conf"]


def test_write_config_atomic_repairs_mode(tmp_path: Path) -> None:
    """Same content with a drifted mode is rewritten with mode 0600."""
    path = tmp_path / "pgbackrest.conf"
    path.write_text("a=1\n")
    path.chmod(0o644)
    assert write_config_atomic(path, "a=1\n", uid=None, gid=None) is True
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_write_config_atomic_owner(tmp_path: Path) -> None:
    """With uid/gid the file belongs to the OS user, and ownership drift triggers a rewrite."""
    entry = pwd.getpwnam("postgres")
    path = tmp_path / "pgbackrest.conf"
    assert write_config_atomic(path, "a=1\n", uid=entry.pw_uid, gid=entry.pw_gid) is True
    assert (path.stat().st_uid, path.stat().st_gid) == (entry.pw_uid, entry.pw_gid)
    assert write_config_atomic(path, "a=1\n", uid=entry.pw_uid, gid=entry.pw_gid) is False
    os.chown(path, 0, 0)
    assert write_config_atomic(path, "a=1\n", uid=entry.pw_uid, gid=entry.pw_gid) is True
    assert path.stat().st_uid == entry.pw_uid


def test_ensure_state_dirs(tmp_path: Path) -> None:
    """The lock, log and spool directories named in the config exist after ensure_state_dirs."""
    layout = msgspec.structs.replace(LAYOUT, instance_dir=str(tmp_path / "inst"))
    ensure_state_dirs(layout, uid=None, gid=None)
    text = render_config(layout, plans_for(POSIX), process_max=1)
    for key in ("lock-path", "log-path", "spool-path"):
        value = next(line for line in text.splitlines() if line.startswith(f"{key}="))
        assert Path(value.split("=", 1)[1]).is_dir()


def test_gcs_port_goes_into_the_endpoint() -> None:
    """pgBackRest 2.45 ignores storage-port for GCS, so the port is rendered in the endpoint."""
    repo = msgspec.convert(
        {"type": "gcs", "gcs_bucket": "bkt", "gcs_endpoint": "localhost", "storage_port": 59200},
        GcsRepository,
    )
    text = render_config(
        InstanceLayout(instance_dir="/i", pg_data="/i/pgdata", pg_port=5432, pg_socket_dir="/s"),
        [RepositoryPlan(index=1, repository=repo, path="/p")],
        process_max=1,
    )
    assert "repo1-gcs-endpoint=localhost:59200" in text
    assert "storage-port" not in text


CUSTOM_KEYS = [
    *("compress-type", "compress-level", "process-max", "buffer-size", "archive-async"),
    *("repo-bundle", "repo-bundle-limit", "repo-hardlink", "io-timeout", "archive-timeout"),
    *("repo1-path", "repo2-retention-full", "pg1-path", "repo-path", "lock-path", "stanza"),
    *("config-include-path", "repo-s3-key", "repo-cipher-pass", "repo-host", "type", "repo"),
    *("online", "log-level-console", "target-action", "Compress", "a--b", "repo-", "x=y"),
]


@pytest.mark.parametrize("key", CUSTOM_KEYS)
def test_spec_and_renderer_share_one_custom_option_rule(key: str) -> None:
    """A custom option passes spec validation exactly when the renderer writes it: nothing the
    API accepts fails later in a backup, the catalog or verify."""
    repository = {**POSIX, "base_path": "/backups", "custom_options": {key: "2"}}
    body = {
        "spec": {
            "database_name": "app",
            "nodes": [{"name": "n1"}],
            "backup_config": {"repositories": [repository]},
        }
    }
    try:
        parse_database_request(msgspec.json.encode(body))
        accepted = True
    except InvalidInputError:
        accepted = False
    try:
        render(plans_for(repository))
        rendered = True
    except ValueError:
        rendered = False
    assert accepted == rendered, (key, accepted, rendered)


def test_repo1_path_custom_option_refused_up_front() -> None:
    """The audit's `repo1-path` custom option is a 422 at its path, saying why."""
    repository = {**POSIX, "base_path": "/backups", "custom_options": {"repo1-path": "/x"}}
    body = {
        "spec": {
            "database_name": "app",
            "nodes": [{"name": "n1"}],
            "backup_config": {"repositories": [repository]},
        }
    }
    with pytest.raises(InvalidInputError) as raised:
        parse_database_request(msgspec.json.encode(body))
    assert raised.value.errors == [
        {
            "path": "spec.backup_config.repositories[0].custom_options.repo1-path",
            "message": "option repo1-path names a repository by number; the control plane "
            "numbers the repositories: write path and it applies to this repository",
        }
    ]


def test_one_repository_config_names_that_repository_alone() -> None:
    """`only_repo` keeps the global options and that repository's own, with its number, so
    stanza-create and check (no --repo in 2.45) act on it alone."""
    plans = plans_for(
        {**POSIX, "custom_options": {"compress-type": "lz4", "repo-bundle-limit": "4MiB"}},
        ENCRYPTED_S3,
    )
    full = render(plans)
    second = render(plans, only_repo=2)
    first = render(plans, only_repo=1)
    assert "repo1-" not in second and "repo2-s3-bucket=prod-backups\n" in second
    assert "repo2-" not in first and "repo1-bundle-limit=4MiB\n" in first
    assert "compress-type=lz4\n" in first and "compress-type=lz4\n" in second
    assert set(first.splitlines()) | set(second.splitlines()) == set(full.splitlines())
    with pytest.raises(ValueError, match="no repository repo3"):
        render(plans, only_repo=3)


def test_secret_env_of_one_repository() -> None:
    """The environment of a one-repository command carries only that repository's secrets:
    pgBackRest would count a repository whose key alone is set as configured."""
    plans = plans_for(POSIX, ENCRYPTED_S3)
    env = secret_env([plans[1]])
    assert set(env) == {
        "PGBACKREST_REPO2_S3_KEY",
        "PGBACKREST_REPO2_S3_KEY_SECRET",
        "PGBACKREST_REPO2_CIPHER_PASS",
    }
    assert secret_env([plans[0]]) == {}


def test_object_stores_without_keys_use_the_instance_credentials() -> None:
    """An s3 repository without keys renders s3-key-type=auto (instance profile, task role) and
    a gcs one without key or key type gcs-key-type=auto (the instance's service account), as
    pgEdge does; with keys, neither is rendered and the keys go to the environment."""
    keyless_s3 = {k: v for k, v in S3.items() if k not in ("s3_key", "s3_key_secret")}
    keyless_gcs = {k: v for k, v in GCS.items() if k not in ("gcs_key", "gcs_key_type")}
    plans = plans_for(keyless_s3, keyless_gcs)
    text = render(plans)
    assert "repo1-s3-key-type=auto" in text
    assert "repo2-gcs-key-type=auto" in text
    assert secret_env(plans) == {}
    with_keys = render(plans_for(S3))
    assert "s3-key-type" not in with_keys
