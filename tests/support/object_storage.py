"""Real object-storage servers on 127.0.0.1 with TLS, for pgBackRest repository tests.

Each ``start_*`` function launches its server(s) as subprocesses of the test process on a free port,
waits until a real request succeeds (bucket/container created), and returns an
:class:`ObjectStorage` describing how to reach it. Call its ``cleanup()`` (idempotent) or use it,
or :func:`object_storage`, as a context manager to stop the processes.

- ``s3``: moto's WSGI app under gunicorn (gthread worker, native TLS); bucket made with boto3.
- ``azure``: azurite (npm, ``tests/support/node``) with native TLS; container made with a
  SharedKey-signed REST call (no Azure SDK needed).
- ``gcs``: gcp-storage-emulator (plain HTTP) behind ``tests.support.tls_proxy``.

Servers are addressed as ``localhost``: pgBackRest 2.45 only matches DNS names in certificates.
Install the servers with ``tests/support/install-object-storage.sh``; :func:`missing_requirements`
says what is absent. Server stdout/stderr go to ``<workdir>/<kind>/*.log``.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import hmac
import http.client
import importlib.util
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from tests.support.tls import TlsFiles, make_test_tls

Kind = Literal["s3", "azure", "gcs"]
KINDS: tuple[Kind, ...] = ("s3", "azure", "gcs")

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = Path(__file__).resolve().parent / "node"
AZURITE_BLOB = NODE_DIR / "node_modules" / ".bin" / "azurite-blob"
INSTALL_SCRIPT = "tests/support/install-object-storage.sh"

HOST = "127.0.0.1"  # where the servers listen
ENDPOINT = "localhost"  # how clients must name them (certificate DNS name)

S3_KEY = "test-access-key"
S3_KEY_SECRET = "test-secret-key"  # moto accepts any credentials
S3_REGION = "us-east-1"
# Azurite's well-known development account and key (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
AZURE_API_VERSION = "2021-08-06"
GCS_TOKEN = "test-token"  # the emulator ignores authentication

_PYTHON_MODULES: dict[Kind, tuple[str, ...]] = {
    "s3": ("moto", "gunicorn", "boto3", "werkzeug", "flask_cors"),  # last two: moto[server]
    "azure": (),
    "gcs": ("gcp_storage_emulator",),
}


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""

    address_in_use = False  # set when the log shows the port was taken (start is retried)


def missing_requirements(kinds: tuple[Kind, ...] = KINDS) -> list[str]:
    """Return what is not installed for the given server kinds (empty when all are usable)."""
    missing: list[str] = []
    for kind in kinds:
        for module in _PYTHON_MODULES[kind]:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append(f"python module {module!r} ({kind})")
        if kind == "azure":
            if shutil.which("node") is None:
                missing.append("node on PATH (azure)")
            if not AZURITE_BLOB.exists():
                missing.append(f"{AZURITE_BLOB.relative_to(REPO_ROOT)} (azure)")
    return missing


@dataclass(frozen=True)
class ObjectStorage:
    """How to reach a running object-storage server; everything a pgBackRest repo needs."""

    type: Kind  # pgBackRest repo-type
    endpoint: str  # always "localhost"
    port: int  # TLS port on 127.0.0.1
    bucket: str  # S3/GCS bucket, or Azure container
    key: str  # S3 access key id, Azure shared key, or GCS bearer token
    key_secret: str | None  # S3 secret access key (None for Azure/GCS)
    account: str | None  # Azure storage account (None for S3/GCS)
    region: str | None  # S3 region (None for Azure/GCS)
    uri_style: str | None  # "path" for S3/Azure, None for GCS
    gcs_key_type: str | None  # "token" for GCS, None otherwise
    ca_file: Path  # CA certificate (0644) that signed the server certificate
    startup_seconds: float  # wall time from spawn to ready (bucket/container created)
    log_files: tuple[Path, ...]  # server stdout/stderr
    cleanup: Callable[[], None] = field(repr=False, compare=False)  # stop servers, idempotent

    @property
    def url(self) -> str:
        """Base HTTPS URL of the service."""
        return f"https://{self.endpoint}:{self.port}"

    @property
    def container(self) -> str:
        """The Azure container (same as ``bucket``)."""
        return self.bucket

    def pgbackrest_options(self, repo: int = 1, path: str = "/pgbackrest") -> dict[str, str]:
        """Non-secret ``repoN-*`` options for pgbackrest.conf (secrets: :meth:`pgbackrest_env`)."""
        p = f"repo{repo}-"
        options = {
            f"{p}type": self.type,
            f"{p}path": path,
            f"{p}storage-ca-file": str(self.ca_file),
        }
        if self.type == "s3":
            options |= {
                f"{p}s3-bucket": self.bucket,
                f"{p}s3-endpoint": self.endpoint,
                f"{p}storage-port": str(self.port),
                f"{p}s3-region": self.region or S3_REGION,
                f"{p}s3-uri-style": self.uri_style or "path",
            }
        elif self.type == "azure":
            options |= {
                f"{p}azure-container": self.bucket,
                f"{p}azure-endpoint": self.endpoint,
                f"{p}storage-port": str(self.port),
                f"{p}azure-uri-style": self.uri_style or "path",
            }
        else:
            options |= {
                f"{p}gcs-bucket": self.bucket,
                f"{p}gcs-endpoint": f"{self.endpoint}:{self.port}",
                f"{p}gcs-key-type": self.gcs_key_type or "token",
            }
        return options

    def pgbackrest_env(self, repo: int = 1) -> dict[str, str]:
        """Secret options as ``PGBACKREST_REPON_*`` environment variables (not allowed in argv)."""
        p = f"PGBACKREST_REPO{repo}_"
        if self.type == "s3":
            return {f"{p}S3_KEY": self.key, f"{p}S3_KEY_SECRET": self.key_secret or ""}
        if self.type == "azure":
            return {f"{p}AZURE_ACCOUNT": self.account or "", f"{p}AZURE_KEY": self.key}
        return {f"{p}GCS_KEY": self.key}

    def __enter__(self) -> ObjectStorage:
        return self

    def __exit__(
        self,
        exc_type: builtins.type[BaseException] | None,  # the field `type` shadows the builtin
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


# --- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 40, offset: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


class _Server:
    """One subprocess whose stdout and stderr go to a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_file: Path,
        *,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_file = log_file
        with open(log_file, "ab") as log:
            self.log_offset = log.tell()  # the file may hold an earlier run's output
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # a ^C to pytest reaches only pytest, which cleans up
            )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise self.error(f"exited with code {self.proc.returncode}")

    def error(self, what: str) -> ServerStartError:
        return ServerStartError(
            f"{self.name} {what}\n  command: {' '.join(self.argv)}\n  log: {self.log_file}\n"
            f"--- last lines of the log ---\n{_tail(self.log_file, offset=self.log_offset)}"
        )

    def address_in_use(self) -> bool:
        text = _tail(self.log_file, 200, self.log_offset).lower()
        return any(
            sign in text for sign in ("address already in use", "eaddrinuse", "connection in use")
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Signal the process by its PID, wait, then SIGKILL it if it is still there."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()  # SIGTERM to this PID; gunicorn then stops its worker
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_for_port(server: _Server, port: int, deadline: float) -> None:
    while True:
        server.check_alive()
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise server.error(f"did not listen on {HOST}:{port} in time")
        time.sleep(0.05)


def _retry_until(server: _Server, deadline: float, what: str, step: Callable[[], None]) -> None:
    """Call ``step`` until it does not raise, the server dies, or the deadline passes."""
    while True:
        server.check_alive()
        try:
            step()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise server.error(f"{what} failed: {exc!r}") from exc
        time.sleep(0.2)


def _tls_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def _prepare(workdir: Path, kind: str, tls: TlsFiles | None) -> tuple[Path, TlsFiles]:
    if not workdir.exists():
        workdir.mkdir(parents=True)
        workdir.chmod(0o755)  # the postgres user reads <workdir>/tls/ca.crt
    if tls is None:
        tls_dir = workdir / "tls"
        tls = (
            TlsFiles(tls_dir / "ca.crt", tls_dir / "server.crt", tls_dir / "server.key")
            if (tls_dir / "server.key").exists()
            else make_test_tls(tls_dir)
        )
    kind_dir = workdir / kind
    kind_dir.mkdir(exist_ok=True)
    kind_dir.chmod(0o755)
    return kind_dir, tls


def _start(attempts: int, launch: Callable[[], ObjectStorage]) -> ObjectStorage:
    """Run ``launch`` (which picks fresh ports), retrying when a port was taken meanwhile."""
    for _ in range(attempts - 1):
        try:
            return launch()
        except ServerStartError as exc:
            if not exc.address_in_use:
                raise
    return launch()


def _stopper(servers: list[_Server], leftovers: list[Path]) -> Callable[[], None]:
    """An idempotent function stopping ``servers`` (last first; the list may still grow), then
    removing ``leftovers`` (files or directories)."""
    stopped = False

    def stop_all() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            for server in reversed(servers):
                server.stop()
            for path in leftovers:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    return stop_all


def _ready_or_stop(
    servers: list[_Server], stop_all: Callable[[], None], ready: Callable[[], None]
) -> None:
    """Run ``ready``; if it fails, call ``stop_all`` and flag a port clash on the error."""
    try:
        ready()
    except BaseException as exc:
        clash = any(s.address_in_use() for s in servers)
        stop_all()
        if isinstance(exc, ServerStartError):
            exc.address_in_use = clash
        raise


# --- S3: moto under gunicorn --------------------------------------------------------------------


def start_s3(
    workdir: Path,
    tls: TlsFiles | None = None,
    *,
    bucket: str = "pgbr-bucket",
    timeout: float = 60.0,
    threads: int = 8,
) -> ObjectStorage:
    """Start moto (S3) under gunicorn with TLS on a free port and create ``bucket`` with boto3."""
    kind_dir, tls = _prepare(workdir, "s3", tls)

    def launch() -> ObjectStorage:
        port = free_port()
        started = time.monotonic()
        deadline = started + timeout
        control = kind_dir / f"gunicorn-{port}.ctl"
        leftovers = [control]
        if len(str(control)) > 100:  # AF_UNIX path limit is 108 bytes
            short = Path(tempfile.mkdtemp(prefix="cpt-gu-"))
            control = short / "g.ctl"
            leftovers = [short]
        server = _Server(
            "moto/gunicorn (s3)",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"{HOST}:{port}",
                "--worker-class",
                "gthread",
                "--workers",
                "1",  # moto keeps its state in process memory
                "--threads",
                str(threads),
                "--keep-alive",
                "30",
                "--graceful-timeout",
                "3",
                "--access-logfile",
                "-",
                "--certfile",
                str(tls.cert_file),
                "--keyfile",
                str(tls.key_file),
                "--control-socket",
                str(control),
                "--chdir",
                str(REPO_ROOT),
                "tests.support.moto_app:app",
            ],
            kind_dir / f"moto-{port}.log",
            cwd=REPO_ROOT,
        )
        servers = [server]

        def ready() -> None:
            _wait_for_port(server, port, deadline)
            _retry_until(
                server,
                deadline,
                f"create S3 bucket {bucket!r}",
                lambda: _create_s3_bucket(port, bucket, tls.ca_file),
            )

        stop_all = _stopper(servers, leftovers)
        _ready_or_stop(servers, stop_all, ready)

        return ObjectStorage(
            type="s3",
            endpoint=ENDPOINT,
            port=port,
            bucket=bucket,
            key=S3_KEY,
            key_secret=S3_KEY_SECRET,
            account=None,
            region=S3_REGION,
            uri_style="path",
            gcs_key_type=None,
            ca_file=tls.ca_file,
            startup_seconds=time.monotonic() - started,
            log_files=(server.log_file,),
            cleanup=stop_all,
        )

    return _start(3, launch)


def s3_client(port: int, ca_file: Path, **config: Any) -> Any:
    """A boto3 client of the test S3 server on localhost:`port` (path-style, TLS verified
    with the test CA, no proxies); `config` adds botocore Config options."""
    import boto3  # type: ignore[import-untyped]  # lazily: only needed for S3
    from botocore.config import Config  # type: ignore[import-untyped]

    return boto3.client(
        "s3",
        endpoint_url=f"https://{ENDPOINT}:{port}",
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_KEY_SECRET,
        region_name=S3_REGION,
        verify=str(ca_file),
        config=Config(s3={"addressing_style": "path"}, proxies={}, **config),
    )


def s3_keys(port: int, ca_file: Path, bucket: str, prefix: str) -> list[str]:
    """The keys under `prefix` in a bucket of the test S3 server on localhost:`port`."""
    client = s3_client(port, ca_file)
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]
    finally:
        client.close()


def _create_s3_bucket(port: int, bucket: str, ca_file: Path) -> None:
    client = s3_client(
        port, ca_file, connect_timeout=5, read_timeout=15, retries={"max_attempts": 1}
    )
    try:
        client.create_bucket(Bucket=bucket)
        client.head_bucket(Bucket=bucket)
    finally:
        client.close()


# --- Azure: azurite -----------------------------------------------------------------------------


def start_azure(
    workdir: Path,
    tls: TlsFiles | None = None,
    *,
    container: str = "pgbr",
    timeout: float = 60.0,
) -> ObjectStorage:
    """Start azurite's blob service with TLS on a free port and create ``container``."""
    kind_dir, tls = _prepare(workdir, "azure", tls)
    node = shutil.which("node")
    if node is None or not AZURITE_BLOB.exists():
        raise ServerStartError(f"azurite is not installed: run {INSTALL_SCRIPT}")

    def launch() -> ObjectStorage:
        port = free_port()
        started = time.monotonic()
        deadline = started + timeout
        data = kind_dir / f"azurite-{port}"
        data.mkdir(exist_ok=True)
        server = _Server(
            "azurite (azure)",
            [
                node,
                str(AZURITE_BLOB),
                "--blobHost",
                HOST,
                "--blobPort",
                str(port),
                "--cert",
                str(tls.cert_file),
                "--key",
                str(tls.key_file),
                "--location",
                str(data),
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",  # otherwise it tries to reach an outside endpoint
            ],
            kind_dir / f"azurite-{port}.log",
            cwd=kind_dir,
        )
        servers = [server]

        def ready() -> None:
            _wait_for_port(server, port, deadline)
            _retry_until(
                server,
                deadline,
                f"create Azure container {container!r}",
                lambda: _create_azure_container(port, container, tls.ca_file),
            )

        stop_all = _stopper(servers, [])
        _ready_or_stop(servers, stop_all, ready)
        return ObjectStorage(
            type="azure",
            endpoint=ENDPOINT,
            port=port,
            bucket=container,
            key=AZURITE_KEY,
            key_secret=None,
            account=AZURITE_ACCOUNT,
            region=None,
            uri_style="path",
            gcs_key_type=None,
            ca_file=tls.ca_file,
            startup_seconds=time.monotonic() - started,
            log_files=(server.log_file,),
            cleanup=stop_all,
        )

    return _start(3, launch)


def _create_azure_container(port: int, container: str, ca_file: Path) -> None:
    """PUT ``?restype=container`` signed with the account's SharedKey (path-style URL)."""
    path = f"/{AZURITE_ACCOUNT}/{container}"
    headers = {
        "x-ms-date": formatdate(usegmt=True),
        "x-ms-version": AZURE_API_VERSION,
        "Content-Length": "0",
    }
    canonical_headers = "".join(
        f"{name}:{value}\n" for name, value in sorted(headers.items()) if name.startswith("x-ms-")
    )
    # Verb, 11 standard headers (Content-Length is empty when 0), x-ms-* headers, resource.
    string_to_sign = (
        "PUT\n" + "\n" * 11 + canonical_headers + f"/{AZURITE_ACCOUNT}{path}\nrestype:container"
    )
    signature = base64.b64encode(
        hmac.new(base64.b64decode(AZURITE_KEY), string_to_sign.encode(), hashlib.sha256).digest()
    ).decode()
    headers["Authorization"] = f"SharedKey {AZURITE_ACCOUNT}:{signature}"
    conn = http.client.HTTPSConnection(ENDPOINT, port, timeout=10, context=_tls_context(ca_file))
    try:
        conn.request("PUT", f"{path}?restype=container", headers=headers)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    # 409 ContainerAlreadyExists: fine (an earlier attempt may have succeeded).
    if response.status not in (201, 409):
        raise RuntimeError(f"HTTP {response.status}: {body[:500]!r}")


# --- GCS: gcp-storage-emulator behind the TLS proxy ---------------------------------------------


def start_gcs(
    workdir: Path,
    tls: TlsFiles | None = None,
    *,
    bucket: str = "pgbr",
    timeout: float = 60.0,
    in_memory: bool = True,
) -> ObjectStorage:
    """Start gcp-storage-emulator (HTTP) plus a TLS proxy in front of it; ``bucket`` exists."""
    kind_dir, tls = _prepare(workdir, "gcs", tls)

    def launch() -> ObjectStorage:
        backend_port = free_port()
        port = free_port()
        while port == backend_port:  # pragma: no cover
            port = free_port()
        started = time.monotonic()
        deadline = started + timeout
        argv = [
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "start",
            "--host",
            HOST,
            "--port",
            str(backend_port),
            "--default-bucket",
            bucket,
        ]
        if in_memory:
            argv.append("--no-store-on-disk")
        else:
            data = kind_dir / f"gcs-{backend_port}"
            data.mkdir(exist_ok=True)
            argv += ["--data-dir", str(data)]
        emulator = _Server(
            "gcp-storage-emulator (gcs)",
            argv,
            kind_dir / f"gcs-emulator-{backend_port}.log",
            cwd=kind_dir,
        )
        servers = [emulator]

        def ready() -> None:
            _wait_for_port(emulator, backend_port, deadline)
            proxy = _Server(
                "tls_proxy (gcs)",
                [
                    sys.executable,
                    "-m",
                    "tests.support.tls_proxy",
                    "--listen",
                    f"{HOST}:{port}",
                    "--backend",
                    f"{HOST}:{backend_port}",
                    "--cert",
                    str(tls.cert_file),
                    "--key",
                    str(tls.key_file),
                ],
                kind_dir / f"gcs-tls-proxy-{port}.log",
                cwd=REPO_ROOT,
            )
            servers.append(proxy)
            _wait_for_port(proxy, port, deadline)
            _retry_until(
                proxy,
                deadline,
                f"read GCS bucket {bucket!r} through the TLS proxy",
                lambda: _check_gcs_bucket(port, bucket, tls.ca_file),
            )

        stop_all = _stopper(servers, [])
        _ready_or_stop(servers, stop_all, ready)
        return ObjectStorage(
            type="gcs",
            endpoint=ENDPOINT,
            port=port,
            bucket=bucket,
            key=GCS_TOKEN,
            key_secret=None,
            account=None,
            region=None,
            uri_style=None,
            gcs_key_type="token",
            ca_file=tls.ca_file,
            startup_seconds=time.monotonic() - started,
            log_files=tuple(s.log_file for s in servers),
            cleanup=stop_all,
        )

    return _start(3, launch)


def _check_gcs_bucket(port: int, bucket: str, ca_file: Path) -> None:
    conn = http.client.HTTPSConnection(ENDPOINT, port, timeout=10, context=_tls_context(ca_file))
    try:
        conn.request("GET", f"/storage/v1/b/{bucket}", headers={"Authorization": "Bearer x"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {body[:500]!r}")


# --- any kind -----------------------------------------------------------------------------------

_STARTERS: dict[Kind, Callable[..., ObjectStorage]] = {
    "s3": start_s3,
    "azure": start_azure,
    "gcs": start_gcs,
}


def start_object_storage(
    kind: Kind, workdir: Path, tls: TlsFiles | None = None, *, timeout: float = 60.0
) -> ObjectStorage:
    """Start the server for ``kind`` ("s3", "azure" or "gcs") with its default bucket."""
    return _STARTERS[kind](workdir, tls, timeout=timeout)


@contextmanager
def object_storage(
    kind: Kind, workdir: Path, tls: TlsFiles | None = None, *, timeout: float = 60.0
) -> Iterator[ObjectStorage]:
    """Context manager: start the server for ``kind``; stop it on exit."""
    storage = start_object_storage(kind, workdir, tls, timeout=timeout)
    try:
        yield storage
    finally:
        storage.cleanup()
