"""What the control plane writes for Postgres itself, once: password verifiers and the client
authentication rules every instance shares (each orchestrator adds why its socket is safe);
and whether a data directory's postmaster runs, read as `pg_ctl status` reads it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

SCRAM_ITERATIONS = 4096

# Over the unix socket trust is safe (its directory is private to the instance's OS user, or
# lives inside the instance's container); over TCP on the loopback network, shared by
# everything on the machine, a password is needed. The whole of 127.0.0.0/8: local named hosts
# each listen on an address of their own in it (127.0.1.<i>), and a client may connect from
# any of them.
HBA_RULES = """\
local   all             all                                     trust
local   replication     all                                     trust
host    all             all             127.0.0.0/8             scram-sha-256
host    all             all             ::1/128                 scram-sha-256
host    replication     all             127.0.0.0/8             scram-sha-256
host    replication     all             ::1/128                 scram-sha-256
"""


def hba(why_the_socket_is_safe: str) -> str:
    """The instance's pg_hba.conf: our header, the orchestrator's reason, the shared rules."""
    return f"# Managed by controlplane.\n# {why_the_socket_is_safe}\n{HBA_RULES}"


def scram_verifier(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """A SCRAM-SHA-256 verifier for `ALTER ROLE … PASSWORD`: Postgres stores it as is, so the
    plaintext never reaches the server, nor its log if the statement fails."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def postmaster_running(pgdata: Path) -> bool | None:
    """Whether the postmaster of `pgdata` runs, as `pg_ctl status` decides it: postmaster.pid
    names a live process, here one whose command line is postgres's (a PID reused after a
    crash is not). None when this process may not read the directory (another OS user's, and
    this one not root) or the file is being written: ask `pg_ctl status` then. The monitor
    asks this of every instance on every pass, so no process is started for it."""
    try:
        first = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        pid = int(first)
    except ValueError:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc to tell: the PID is alive, as pg_ctl would say
    return b"postgres" in cmdline
