"""Write-only secrets of a spec: split out for storage, kept on update, redacted, encrypted.

Every secret has a stable key that names its owner rather than its list position
(`database_users/admin/password`, `nodes/n1/backup_config/s3/s3_key`), so a declarative update
that reorders users or repositories still finds the secrets it omitted.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
from cryptography.fernet import Fernet, InvalidToken

from controlplane.errors import ControlPlaneError
from controlplane.settings import Settings
from controlplane.spec.models import (
    SECRET_FIELDS,
    BackupConfig,
    DatabaseSpec,
    Repository,
    RestoreConfig,
    repository_id,
    type_of,
)


class _Slot(NamedTuple):
    """One place a secret can live: its stable key, the struct holding it, the field name."""

    key: str
    owner: msgspec.Struct
    field: str
    # What must also match for an omitted secret to be carried over on update.
    identity: str
    # Where it sits in the request, for error messages.
    path: str


def split_secrets(spec: DatabaseSpec) -> tuple[dict[str, Any], dict[str, str]]:
    """The spec as JSON builtins without its secrets, plus the secrets by stable key."""
    public = msgspec.to_builtins(redact(spec))
    assert isinstance(public, dict)  # a Struct always encodes to an object
    secrets = {slot.key: value for slot, value in _filled_slots(spec)}
    return public, secrets


def join_secrets(public: Mapping[str, Any], secrets: Mapping[str, str]) -> DatabaseSpec:
    """Rebuild a spec from `split_secrets` output; keys without a place are ignored."""
    spec = msgspec.convert(dict(public), DatabaseSpec)
    for slot in _slots(spec):
        if slot.key in secrets:
            setattr(slot.owner, slot.field, secrets[slot.key])
    return spec


def merge_secrets(new: DatabaseSpec, old: DatabaseSpec) -> DatabaseSpec:
    """A copy of `new` where each omitted secret is taken from `old` at the same stable key.

    Users match by username, repositories by scope, repository id and type (the secret's field
    name is type specific) and only while the repository still names the same storage
    (`repository_identity`): a key is never sent to an endpoint it was not given for. A secret
    given in `new` always wins.
    """
    previous = {slot.key: (slot.identity, value) for slot, value in _filled_slots(old)}
    merged = copy.deepcopy(new)
    for slot in _slots(merged):
        if getattr(slot.owner, slot.field) is not None or slot.key not in previous:
            continue
        identity, value = previous[slot.key]
        if identity == slot.identity:
            setattr(slot.owner, slot.field, value)
    return merged


def secrets_to_resend(new: DatabaseSpec, old: DatabaseSpec) -> list[tuple[str, str]]:
    """(JSON path, message) for each secret `new` omits that `old` holds for a repository whose
    storage changed: it is not carried over, so the request must give it again."""
    previous = {slot.key: slot.identity for slot, _ in _filled_slots(old)}
    return [
        (
            slot.path,
            f"the repository's storage changed ({slot.identity.split('|', 1)[1]}): give "
            f"{slot.field} again, stored keys are only kept for the storage they were given for",
        )
        for slot in _slots(new)
        if getattr(slot.owner, slot.field) is None
        and slot.key in previous
        and previous[slot.key] != slot.identity
    ]


# Custom options that change where a repository's requests go (pgBackRest's names, unprefixed).
_LOCATION_OPTIONS = frozenset(
    {
        "storage-host",
        "storage-port",
        "s3-endpoint",
        "s3-bucket",
        "s3-region",
        "s3-uri-style",
        "gcs-endpoint",
        "gcs-bucket",
        "azure-endpoint",
        "azure-account",
        "azure-container",
        "azure-uri-style",
        "host-cert-file",
        "host-key-file",
    }
)
_LOCATION_FIELDS = (
    "storage_port",
    "s3_bucket",
    "s3_region",
    "s3_endpoint",
    "s3_uri_style",
    "gcs_bucket",
    "gcs_endpoint",
    "azure_account",
    "azure_container",
    "azure_endpoint",
    "azure_uri_style",
)


def repository_identity(repository: Repository) -> str:
    """What a repository's keys were given for: its type and every field (or custom option)
    that decides where its requests go."""
    parts = [type_of(repository)]
    parts += [
        f"{name}={getattr(repository, name)}"
        for name in _LOCATION_FIELDS
        if getattr(repository, name, None) is not None
    ]
    parts += [
        f"{key}={value}"
        for key, value in sorted(repository.custom_options.items())
        if key in _LOCATION_OPTIONS
    ]
    return " ".join(parts)


def redact(spec: DatabaseSpec) -> DatabaseSpec:
    """A copy of `spec` with every secret set to None (omitted when encoded)."""
    redacted = copy.deepcopy(spec)
    for slot in _slots(redacted):
        setattr(slot.owner, slot.field, None)
    return redacted


def secret_values(spec: DatabaseSpec) -> set[str]:
    """Every secret string in `spec`, for scrubbing logs and command output."""
    return {value for _, value in _filled_slots(spec)}


def _filled_slots(spec: DatabaseSpec) -> Iterator[tuple[_Slot, str]]:
    for slot in _slots(spec):
        value = getattr(slot.owner, slot.field)
        if isinstance(value, str):
            yield slot, value


def _slots(spec: DatabaseSpec) -> Iterator[_Slot]:
    for index, user in enumerate(spec.database_users):
        key = f"database_users/{user.username}/password"
        path = f"spec.database_users[{index}].password"
        yield _Slot(key, user, "password", user.username, path)
    yield from _scope_slots("", "spec.", spec.backup_config, spec.restore_config)
    for index, node in enumerate(spec.nodes):
        yield from _scope_slots(
            f"nodes/{node.name}/", f"spec.nodes[{index}].", node.backup_config, node.restore_config
        )


def _scope_slots(
    scope: str,
    path: str,
    backup_config: BackupConfig | None,
    restore_config: RestoreConfig | None,
) -> Iterator[_Slot]:
    if backup_config is not None:
        for index, repository in enumerate(backup_config.repositories):
            prefix = f"{scope}backup_config/{repository_id(repository)}"
            at = f"{path}backup_config.repositories[{index}]"
            yield from _repository_slots(prefix, at, repository)
    if restore_config is not None:
        yield from _repository_slots(
            f"{scope}restore_config/repository",
            f"{path}restore_config.repository",
            restore_config.repository,
        )


def _repository_slots(prefix: str, path: str, repository: Repository) -> Iterator[_Slot]:
    identity = f"{repository_id(repository)}|{repository_identity(repository)}"
    for name in SECRET_FIELDS[type_of(repository)]:
        yield _Slot(f"{prefix}/{name}", repository, name, identity, f"{path}.{name}")


class SecretBox:
    """Encrypts secret maps at rest with a Fernet key (AES-128-CBC + HMAC-SHA256)."""

    def __init__(self, fernet: Fernet) -> None:
        self._fernet = fernet

    @classmethod
    def from_key(cls, key: bytes) -> SecretBox:
        """A box using `key` (32 url-safe base64-encoded bytes, as Fernet.generate_key makes)."""
        try:
            return cls(Fernet(key.strip()))
        except ValueError:
            raise ValueError(
                "secret key is not a fernet key (32 url-safe base64-encoded bytes)"
            ) from None

    @classmethod
    def for_settings(cls, settings: Settings) -> SecretBox:
        """The key that encrypts secrets at rest: from the environment (shared by every server
        of one store) or a 0600 file in the data dir."""
        if settings.secret_key:
            return cls.from_key(settings.secret_key.encode())
        return cls.load_or_create(settings.secret_key_path)

    @classmethod
    def load_or_create(cls, path: Path) -> SecretBox:
        """A box using the key in `path`, creating a new key file (mode 0600) if there is none."""
        key = _create_key_file(path)
        if key is None:
            key = path.read_bytes()
        return cls.from_key(key)

    def encrypt(self, data: Mapping[str, str]) -> str:
        """An opaque token holding `data`."""
        return self._fernet.encrypt(msgspec.json.encode(dict(data))).decode("ascii")

    def decrypt(self, token: str) -> dict[str, str]:
        """The map `encrypt` sealed into `token`."""
        try:
            plain = self._fernet.decrypt(token.encode("ascii"))
        except InvalidToken:
            raise ControlPlaneError(
                "stored secrets cannot be decrypted: the secret key is not the one that "
                "encrypted them"
            ) from None
        return msgspec.json.decode(plain, type=dict[str, str])


def _create_key_file(path: Path) -> bytes | None:
    """Write a new key to `path` unless it exists; None when another writer got there first.

    The key is written to a private temporary file and hard-linked into place, so a concurrent
    reader sees either no file or the complete key, never a half-written one.
    """
    if path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # the umask may only narrow; keep it exact
            handle.write(key + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)
    except FileExistsError:
        return None
    finally:
        temporary.unlink(missing_ok=True)
    return key
