"""What a partial in-place restore's log says, and where pgEdge keeps a node's backups."""

from __future__ import annotations

import pytest

from controlplane.nodes.restore_layouts import pgedge_repository_path
from controlplane.nodes.restore_outcome import partial_restore_note
from controlplane.spec.models import PosixRepository, S3Repository


def _note(**overrides: object) -> tuple[str, str] | None:
    arguments: dict[str, object] = {
        "database_id": "shop",
        "targets": ["n1"],
        "others": ["n2"],
        "point_in_time": False,
        "source_database_id": "shop",
        "restore_options": {},
    }
    arguments.update(overrides)
    return partial_restore_note(**arguments)  # type: ignore[arg-type]


def test_every_node_restored_says_nothing() -> None:
    """With no node left out, nothing can diverge."""
    assert _note(others=[], point_in_time=True) is None


def test_earlier_point_warns() -> None:
    """A target (or immediate) leaves the restored nodes behind the others."""
    level, message = _note(point_in_time=True) or ("", "")
    assert level == "warning" and "diverge from n2" in message


def test_another_database_warns() -> None:
    """Another database's backup gives the node that database's rows."""
    level, message = _note(source_database_id="elsewhere") or ("", "")
    assert level == "warning" and "backup of database elsewhere" in message


def test_named_set_without_type_says_it_came_back_to_the_latest_point() -> None:
    """A set named with no type is replayed to the end of the archive: the log says the node
    keeps every row, and how to stop at the set instead."""
    level, message = _note(restore_options={"set": "20250505-020001F"}) or ("", "")
    assert level == "info" and "20250505-020001F to the latest point" in message
    assert "type immediate" in message
    assert _note(restore_options={"set": "latest"}) is None
    assert _note() is None


@pytest.mark.parametrize(
    ("repository", "path"),
    [
        (
            PosixRepository(base_path="/backups", id="0c28ad6e-233b-4ca7-ae60-4214e3a5356d"),
            "/backups/databases/storefront/0c28ad6e-233b-4ca7-ae60-4214e3a5356d/n1",
        ),
        (PosixRepository(base_path="/backups"), "/backups/databases/storefront/n1"),
        (S3Repository(s3_bucket="bkt", s3_region="us-east-1"), "/databases/storefront/n1"),
    ],
)
def test_pgedge_repository_path(repository: PosixRepository | S3Repository, path: str) -> None:
    """pgEdge's renderer: `<base>/databases/<db>/[<id>/]<node>`, no generation."""
    assert pgedge_repository_path(repository, database_id="storefront", node_name="n1") == path
