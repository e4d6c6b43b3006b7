"""Pure logic of the Docker orchestrator: names, labels, mounts, argv, rendered files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from controlplane.errors import ExternalCommandError, PreconditionError
from controlplane.orchestrator import docker_layout as layout
from controlplane.orchestrator.base import InstanceRef
from controlplane.orchestrator.docker_orchestrator import DockerOrchestrator, load_docker_hosts
from controlplane.settings import Settings

REF = InstanceRef(
    instance_id="shop-n1", database_id="shop", node_name="n1", host_id="local", port=5501
)
OWN = """\
[global]
repo1-path=/backups/databases/shop/posix/n1/2
repo1-type=posix
repo2-path=/controlplane
repo2-type=s3
repo2-storage-ca-file=/etc/ssl/minio-ca.crt
spool-path=/x/spool

[db]
pg1-path=/var/lib/postgresql/data/pgdata
"""
SOURCE = """\
[global]
repo1-path=/backups/databases/legacy/posix/n3/1
"""


def test_names_are_per_control_plane_and_instance() -> None:
    """Two control planes (data dirs) on one engine never share a container or volume name."""
    first = layout.namespace_of(Path("/srv/cp-a"))
    second = layout.namespace_of(Path("/srv/cp-b"))
    assert first != second
    assert layout.container_name(first, "shop-n1") == f"cp-{first}-shop-n1"
    assert layout.volume_name(first, "shop-n1") == f"cp-{first}-shop-n1-data"
    assert layout.one_off_name(first, "shop-n1", "ab12") == f"cp-{first}-shop-n1-run-ab12"


def test_labels_identify_database_node_instance_and_role() -> None:
    """Labels carry the database, node and instance plus the namespace, host, role and
    port."""
    assert layout.labels(REF, "ns1", layout.ROLE_INSTANCE) == {
        "controlplane.namespace": "ns1",
        "controlplane.database": "shop",
        "controlplane.node": "n1",
        "controlplane.instance": "shop-n1",
        "controlplane.host": "local",
        "controlplane.role": "instance",
        "controlplane.port": "5501",
    }
    assert layout.instance_filter("ns1", "shop-n1", "data-one-off") == [
        "controlplane.namespace=ns1",
        "controlplane.instance=shop-n1",
        "controlplane.role=data-one-off",
    ]


def test_repository_paths_only_posix() -> None:
    """Only posix repositories (type posix or unset) are directories to mount."""
    assert layout.repository_paths(OWN) == ["/backups/databases/shop/posix/n1/2"]
    assert layout.repository_paths(SOURCE) == ["/backups/databases/legacy/posix/n3/1"]
    assert layout.ca_paths(OWN) == ["/etc/ssl/minio-ca.crt"]


def test_mount_root_is_the_database_directory() -> None:
    """Our layout mounts `<base>/databases/<database>` (all its repositories and generations);
    a path of another shape is mounted as it is."""
    assert layout.mount_root("/b/databases/shop/posix/n1/2") == "/b/databases/shop"
    assert layout.mount_root("/databases/shop/posix/n1/1") == "/databases/shop"
    assert layout.mount_root("/srv/other/repo/") == "/srv/other/repo"


def test_repository_mounts_restore_source_read_only() -> None:
    """Own repositories are writable; a restore source and CA files are read-only; a source
    that is also our own stays writable."""
    mounts = layout.repository_mounts(OWN, [SOURCE])
    assert [(m.target, m.read_only) for m in mounts] == [
        ("/backups/databases/legacy", True),
        ("/backups/databases/shop", False),
        ("/etc/ssl/minio-ca.crt", True),
    ]
    two = layout.repository_mounts(None, [SOURCE, OWN.replace("shop", "old")])
    assert {m.target for m in two} >= {"/backups/databases/legacy", "/backups/databases/old"}
    same = layout.repository_mounts(OWN, [OWN])
    assert ("/backups/databases/shop", False) in [(m.target, m.read_only) for m in same]
    assert all(m.source == m.target for m in mounts)


def test_instance_mounts() -> None:
    """The instance dir is read-only except its pgbackrest state dir; secrets read-only; the
    data volume only when asked for."""
    repos = layout.repository_mounts(OWN, [])
    mounts = layout.instance_mounts(
        instance_dir="/cp/instances/shop-n1",
        secrets_dir="/cp/secrets/shop",
        volume="cp-ns-shop-n1-data",
        repositories=repos,
    )
    by_target = {m.target: m for m in mounts}
    assert by_target["/cp/instances/shop-n1"].read_only
    assert not by_target["/cp/instances/shop-n1/pgbackrest"].read_only
    assert by_target["/cp/secrets/shop"].read_only
    volume = by_target[layout.VOLUME_TARGET]
    assert (volume.kind, volume.source, volume.read_only) == ("volume", "cp-ns-shop-n1-data", False)
    without = layout.instance_mounts(
        instance_dir="/cp/instances/shop-n1",
        secrets_dir="/cp/secrets/shop",
        volume=None,
        repositories=repos,
    )
    assert layout.VOLUME_TARGET not in {m.target for m in without}


def test_covers_requires_presence_and_writability() -> None:
    """A container covers a wanted mount when it has it, writable if wanted writable."""
    wanted = layout.repository_mounts(OWN, [SOURCE])
    current = {
        "/backups/databases/shop": True,
        "/backups/databases/legacy": False,
        "/etc/ssl/minio-ca.crt": False,
    }
    assert layout.covers(current, wanted)
    assert not layout.covers({**current, "/backups/databases/shop": False}, wanted)
    assert not layout.covers({"/backups/databases/shop": True}, wanted)


def test_postgres_argv_uses_our_config_file_and_options_last() -> None:
    """Postgres runs on PGDATA with the instance dir's config; one-off options come last."""
    options = layout.check_start_options({"max_logical_replication_workers": "0"})
    argv = layout.postgres_argv("/cp/instances/shop-n1", options)
    assert argv[:2] == ["sh", "-c"]
    assert argv[3] == "/run/controlplane-secrets/env"
    assert argv[4:] == [
        f"{layout.PG_BIN}/postgres",
        "-D",
        layout.PGDATA,
        "-c",
        "config_file=/cp/instances/shop-n1/postgresql.conf",
        "-c",
        "max_logical_replication_workers=0",
    ]


@pytest.mark.parametrize("value", ["0; rm -rf /", "a b", "'x'", ""])
def test_unsafe_start_options_refused(value: str) -> None:
    """Start options are inert `name=value` tokens only."""
    with pytest.raises(ValueError, match="unsafe start option"):
        layout.check_start_options({"work_mem": value})


def test_postgresql_conf_includes_image_first_and_pins_hba_last() -> None:
    """The image's needs come first, spec settings in between, our hba/ident paths last so a
    user setting cannot move them."""
    text = layout.render_postgresql_conf(
        {"port": "5501", "hba_file": "'/tmp/evil'"}, "/cp/instances/shop-n1"
    )
    lines = text.splitlines()
    assert lines[1] == f"include_if_exists = '{layout.IMAGE_CONF}'"
    assert lines[-2:] == [
        "hba_file = '/cp/instances/shop-n1/pg_hba.conf'",
        "ident_file = '/cp/instances/shop-n1/pg_ident.conf'",
    ]
    assert "port = 5501" in lines


def test_hba_needs_a_password_over_tcp() -> None:
    """Host networking shares 127.0.0.1 with every local user: no trust over TCP."""
    tcp = [line for line in layout.HBA.splitlines() if line.startswith("host")]
    assert tcp and all(line.split()[-1] == "scram-sha-256" for line in tcp)


def test_replication_dsn_uses_a_passfile_not_a_password(tmp_path: Path) -> None:
    """The DSN stored in pglogical's catalog names the database's passfile, never a secret."""
    orchestrator = DockerOrchestrator(Settings(data_dir=tmp_path / "cp my"))
    dsn = orchestrator.replication_dsn(REF, "app")
    passfile = tmp_path / "cp my" / "secrets" / "shop" / "pgpass"
    assert dsn == (f"host=127.0.0.1 port=5501 dbname=app user=postgres passfile='{passfile}'")
    assert "password" not in dsn.replace("passfile", "")
    assert orchestrator.connection_info(REF) == ("127.0.0.1", 5501)
    assert orchestrator.file_path(REF, "pgbackrest.conf") == str(
        tmp_path / "cp my" / "instances" / "shop-n1" / "pgbackrest.conf"
    )


def test_pgpass_escapes_separators() -> None:
    """A ':' or '\\' in a password cannot split the pgpass line."""
    assert layout.pgpass("a:b\\c") == "*:*:*:postgres:a\\:b\\\\c\n"


def test_password_sql_holds_a_verifier_not_the_password() -> None:
    """The SQL file that resets the superuser carries a SCRAM verifier only."""
    sql = layout.password_sql("hunter2-secret")
    assert "hunter2-secret" not in sql
    assert sql.startswith("ALTER ROLE postgres PASSWORD 'SCRAM-SHA-256$4096:")


def test_docker_hosts_inline_file_and_default(tmp_path: Path) -> None:
    """Hosts come inline (`id=url,…`), from a file (one per line), or default to `local`."""
    assert load_docker_hosts(None, default_url="unix:///x.sock") == {"local": "unix:///x.sock"}
    assert load_docker_hosts("a=unix:///a.sock, b=tcp://10.0.0.2:2376", default_url=None) == {
        "a": "unix:///a.sock",
        "b": "tcp://10.0.0.2:2376",
    }
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("# engines\nedge-1=unix:///e1.sock\n\nedge-2=unix:///e2.sock\n")
    assert list(load_docker_hosts(str(hosts_file), default_url=None)) == ["edge-1", "edge-2"]
    for bad in ("a", "A=unix:///x", "a=unix:///x,a=unix:///y", "a="):
        with pytest.raises(ValueError):
            layout.parse_docker_hosts(bad)


def test_line_splitter_handles_split_chunks_and_no_final_newline() -> None:
    """Lines cut across chunks are joined; a last line without newline is kept (pgBackRest's
    JSON has none)."""
    splitter = layout.LineSplitter()
    assert splitter.feed(b"INFO: a") == []
    assert splitter.feed(b"bc\r\nline 2\n[{") == ["INFO: abc", "line 2"]
    assert splitter.feed("\u00e9".encode()[:1]) == []
    assert splitter.flush() == ["[{\ufffd"]
    assert splitter.flush() == []


def test_exec_wrapper_records_the_pid_of_the_command(tmp_path: Path) -> None:
    """The exec wrapper writes the pid of the process that becomes argv (so a cancel can
    signal it) and passes argv through untouched."""
    pid_file = tmp_path / "pid"
    argv = layout.exec_argv(["sh", "-c", 'echo "$$ $1"', "sh", "a b"], str(pid_file))
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    pid, arg = result.stdout.strip().split(" ", 1)
    assert pid_file.read_text().strip() == pid
    assert arg == "a b"
    kill = layout.kill_argv(str(pid_file), "TERM")
    assert subprocess.run(kill, check=False).returncode == 0  # gone already: not an error


async def test_unreachable_engine_is_a_clear_error(tmp_path: Path) -> None:
    """A dead engine URL gives ExternalCommandError naming the host, and hosts() says so."""
    settings = Settings(data_dir=tmp_path / "cp")
    # TCP to a closed port (a missing unix socket would do too, but the SDK leaks that socket).
    orchestrator = DockerOrchestrator(settings, hosts={"edge": "tcp://127.0.0.1:9"})
    ref = InstanceRef(instance_id="s-n1", database_id="s", node_name="n1", host_id="edge", port=1)
    with pytest.raises(ExternalCommandError, match="docker engine of host edge is unreachable"):
        await orchestrator.status(ref)
    assert [(h.id, h.state) for h in orchestrator.hosts()] == [("edge", "unreachable")]
    with pytest.raises(PreconditionError, match="not a configured docker engine"):
        await orchestrator.status(REF)
