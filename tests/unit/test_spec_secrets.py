"""Write-only spec secrets: split/join, merge on update, redaction and encryption at rest."""

from __future__ import annotations

import copy
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest
from cryptography.fernet import Fernet

from controlplane.errors import ControlPlaneError
from controlplane.spec import (
    AzureRepository,
    BackupConfig,
    DatabaseSpec,
    DatabaseUser,
    GcsRepository,
    NodeSpec,
    PosixRepository,
    RestoreConfig,
    S3Repository,
    SecretBox,
    join_secrets,
    merge_secrets,
    redact,
    secret_values,
    split_secrets,
)
from controlplane.spec.secrets import secrets_to_resend

CANARIES = {
    "database_users/admin/password": "canary-admin-pw",
    "database_users/reader/password": "canary-reader-pw",
    "backup_config/s3/s3_key": "canary-s3-key",
    "backup_config/s3/s3_key_secret": "canary-s3-key-secret",
    "backup_config/gcs-main/gcs_key": "canary-gcs-key",
    "restore_config/repository/s3_key": "canary-restore-s3-key",
    "nodes/n2/backup_config/azure/azure_key": "canary-node-azure-key",
    "nodes/n2/restore_config/repository/azure_key": "canary-node-restore-azure-key",
}


def spec_with_secrets() -> DatabaseSpec:
    """A spec holding every kind of secret, each set to its canary value in CANARIES."""
    return DatabaseSpec(
        database_name="app",
        database_users=[
            DatabaseUser(username="admin", password="canary-admin-pw", db_owner=True),
            DatabaseUser(username="reader", password="canary-reader-pw"),
            DatabaseUser(username="nopass"),
        ],
        backup_config=BackupConfig(
            repositories=[
                PosixRepository(base_path="/backups"),
                S3Repository(
                    s3_bucket="bucket",
                    s3_region="r",
                    s3_key="canary-s3-key",
                    s3_key_secret="canary-s3-key-secret",
                ),
                GcsRepository(id="gcs-main", gcs_bucket="bucket", gcs_key="canary-gcs-key"),
            ]
        ),
        restore_config=RestoreConfig(
            source_database_id="old",
            source_node_name="n1",
            repository=S3Repository(
                s3_bucket="old-bucket", s3_region="r", s3_key="canary-restore-s3-key"
            ),
        ),
        nodes=[
            NodeSpec(name="n1"),
            NodeSpec(
                name="n2",
                backup_config=BackupConfig(
                    repositories=[
                        AzureRepository(
                            azure_account="a",
                            azure_container="c",
                            azure_key="canary-node-azure-key",
                        )
                    ]
                ),
                restore_config=RestoreConfig(
                    source_database_id="old",
                    source_node_name="n1",
                    repository=AzureRepository(
                        azure_account="a",
                        azure_container="old",
                        azure_key="canary-node-restore-azure-key",
                    ),
                ),
            ),
        ],
    )


def without_secrets(spec: DatabaseSpec) -> DatabaseSpec:
    """The update a client sends after reading the spec back: same shape, secrets omitted."""
    return redact(spec)


def test_split_keys_are_stable_names() -> None:
    """Secrets are keyed by owner name, scope and repository id, never by list position."""
    _, secrets = split_secrets(spec_with_secrets())
    assert secrets == CANARIES


def test_split_public_part_has_no_secret() -> None:
    """The public half of a split spec contains no secret value and no secret field."""
    public, _ = split_secrets(spec_with_secrets())
    encoded = msgspec.json.encode(public).decode()
    for canary in CANARIES.values():
        assert canary not in encoded
    assert "password" not in encoded
    assert "_key" not in encoded


def test_split_join_round_trip() -> None:
    """join_secrets(split_secrets(spec)) rebuilds the exact spec."""
    spec = spec_with_secrets()
    public, secrets = split_secrets(spec)
    rebuilt = join_secrets(msgspec.json.decode(msgspec.json.encode(public)), secrets)
    assert rebuilt == spec


def test_join_ignores_secrets_without_a_place() -> None:
    """A stored secret for a repository that no longer exists is dropped on join."""
    public, secrets = split_secrets(spec_with_secrets())
    rebuilt = join_secrets(public, {**secrets, "backup_config/gone/s3_key": "stale"})
    assert "stale" not in secret_values(rebuilt)


def test_merge_keeps_omitted_secrets() -> None:
    """An update that omits every secret keeps all of them from the stored spec."""
    old = spec_with_secrets()
    merged = merge_secrets(without_secrets(old), old)
    assert merged == old


def test_merge_survives_reordering() -> None:
    """Omitted secrets follow users and repositories to their new list positions."""
    old = spec_with_secrets()
    new = without_secrets(old)
    new.database_users.reverse()
    assert new.backup_config is not None
    new.backup_config.repositories.reverse()
    new.nodes.reverse()
    merged = merge_secrets(new, old)
    _, secrets = split_secrets(merged)
    assert secrets == CANARIES
    assert [u.username for u in merged.database_users] == ["nopass", "reader", "admin"]


def test_merge_prefers_new_secrets() -> None:
    """A secret given in the update replaces the stored one."""
    old = spec_with_secrets()
    new = without_secrets(old)
    new.database_users[0].password = "rotated"
    merged = merge_secrets(new, old)
    assert merged.database_users[0].password == "rotated"
    assert merged.database_users[1].password == "canary-reader-pw"


def test_merge_does_not_cross_repository_identity() -> None:
    """Secrets are not carried to a repository with another id, or to a renamed user."""
    old = spec_with_secrets()
    new = without_secrets(old)
    assert new.backup_config is not None and new.restore_config is not None
    new.backup_config.repositories[1].id = "other"
    new.restore_config.repository.id = "elsewhere"
    new.database_users[0].username = "owner"
    _, secrets = split_secrets(merge_secrets(new, old))
    assert "backup_config/other/s3_key" not in secrets
    assert "restore_config/repository/s3_key" not in secrets
    assert "database_users/owner/password" not in secrets
    assert secrets["backup_config/gcs-main/gcs_key"] == "canary-gcs-key"


def test_merge_does_not_cross_repository_type() -> None:
    """A repository whose type changed under the same id starts without secrets."""
    old = spec_with_secrets()
    new = without_secrets(old)
    assert new.backup_config is not None
    new.backup_config.repositories[1] = GcsRepository(id="s3", gcs_bucket="bucket")
    merged = merge_secrets(new, old)
    assert merged.backup_config is not None
    replaced = merged.backup_config.repositories[1]
    assert isinstance(replaced, GcsRepository)
    assert replaced.gcs_key is None


@pytest.mark.parametrize(
    "change",
    [
        {"s3_endpoint": "attacker.example"},
        {"storage_port": 9443},
        {"s3_bucket": "other-bucket"},
        {"s3_region": "elsewhere"},
        {"custom_options": {"storage-host": "attacker.example"}},
    ],
)
def test_stored_keys_stay_with_their_storage(change: dict[str, object]) -> None:
    """A repository pointed at other storage under the same id does not inherit its keys, and
    the update is told which keys to give again (by JSON path)."""
    old = spec_with_secrets()
    new = without_secrets(old)
    assert new.backup_config is not None
    new.backup_config.repositories[1] = msgspec.structs.replace(
        new.backup_config.repositories[1], **change
    )
    merged = merge_secrets(new, old)
    assert merged.backup_config is not None
    moved = merged.backup_config.repositories[1]
    assert isinstance(moved, S3Repository)
    assert moved.s3_key is None and moved.s3_key_secret is None
    prefix = "spec.backup_config.repositories[1]"
    assert [path for path, _ in secrets_to_resend(new, old)] == [
        f"{prefix}.s3_key",
        f"{prefix}.s3_key_secret",
    ]


def test_unchanged_storage_needs_no_keys_again() -> None:
    """Changing what does not decide where requests go (retention, other custom options)
    keeps the keys and asks for nothing."""
    old = spec_with_secrets()
    new = without_secrets(old)
    assert new.backup_config is not None
    new.backup_config.repositories[1] = msgspec.structs.replace(
        new.backup_config.repositories[1], retention_full=3, custom_options={"io-timeout": "9"}
    )
    assert secrets_to_resend(new, old) == []
    merged = merge_secrets(new, old)
    assert merged.backup_config is not None
    kept = merged.backup_config.repositories[1]
    assert isinstance(kept, S3Repository) and kept.s3_key == "canary-s3-key"


def test_merge_does_not_mutate_inputs() -> None:
    """merge_secrets returns a new spec and leaves both inputs as they were."""
    old = spec_with_secrets()
    new = without_secrets(old)
    new_before, old_before = copy.deepcopy(new), copy.deepcopy(old)
    merge_secrets(new, old)
    assert new == new_before
    assert old == old_before


def test_redact_removes_every_secret() -> None:
    """The redacted spec, as the API encodes it, contains none of the secrets."""
    spec = spec_with_secrets()
    encoded = msgspec.json.encode(redact(spec)).decode()
    for canary in CANARIES.values():
        assert canary not in encoded
    assert secret_values(redact(spec)) == set()
    assert secret_values(spec) == set(CANARIES.values())  # the original is untouched


def test_secret_values_lists_every_secret() -> None:
    """secret_values returns each secret string of the spec."""
    assert secret_values(spec_with_secrets()) == set(CANARIES.values())


def test_secret_box_round_trip() -> None:
    """A SecretBox decrypts what it encrypted, and the token hides the plaintext."""
    box = SecretBox.from_key(Fernet.generate_key())
    token = box.encrypt(CANARIES)
    assert all(canary not in token for canary in CANARIES.values())
    assert box.decrypt(token) == CANARIES


def test_secret_box_wrong_key() -> None:
    """A token sealed with another key is refused with a domain error."""
    token = SecretBox.from_key(Fernet.generate_key()).encrypt({"a": "b"})
    with pytest.raises(ControlPlaneError, match="cannot be decrypted"):
        SecretBox.from_key(Fernet.generate_key()).decrypt(token)


def test_secret_box_rejects_bad_key() -> None:
    """A key that is not a Fernet key is refused with a clear message."""
    with pytest.raises(ValueError, match="not a fernet key"):
        SecretBox.from_key(b"too-short")


def test_load_or_create_makes_private_key_file(tmp_path: Path) -> None:
    """The key file is created with mode 0600 and reused by the next load."""
    path = tmp_path / "state" / "secret-key"
    token = SecretBox.load_or_create(path).encrypt({"k": "v"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SecretBox.load_or_create(path).decrypt(token) == {"k": "v"}
    assert [p.name for p in path.parent.iterdir()] == ["secret-key"]  # no temporary left


def test_load_or_create_reads_existing_key(tmp_path: Path) -> None:
    """An existing key file is read, not replaced."""
    key = Fernet.generate_key()
    path = tmp_path / "secret-key"
    path.write_bytes(key + b"\n")
    token = SecretBox.from_key(key).encrypt({"k": "v"})
    assert SecretBox.load_or_create(path).decrypt(token) == {"k": "v"}
    assert path.read_bytes() == key + b"\n"


def test_load_or_create_is_race_safe(tmp_path: Path) -> None:
    """Concurrent first loads all end up with the one key that was written."""
    path = tmp_path / "secret-key"
    with ThreadPoolExecutor(max_workers=8) as pool:
        boxes = list(pool.map(lambda _: SecretBox.load_or_create(path), range(32)))
    token = boxes[0].encrypt({"k": "v"})
    assert all(box.decrypt(token) == {"k": "v"} for box in boxes)
    assert [p.name for p in tmp_path.iterdir()] == ["secret-key"]
