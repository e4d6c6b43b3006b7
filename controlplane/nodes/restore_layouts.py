"""Repository layouts a restore reads: ours, and pgEdge Control Plane's, so a pgEdge user moves a
database over by creating it here from a pgEdge backup.

- ours: `<base_path>/databases/<database_id>/<repository id or type>/<node>/<generation>`;
- pgEdge's renderer (`pgbackrest.WriteConfig`): `<base_path>/databases/<database_id>/[<id>/]
  <node>`, the repository id only when one is set, no generation. Both use stanza `db`.

A source this control plane does not run is looked for in our layout first (a database deleted
here keeps its repositories), then in pgEdge's.
"""

from __future__ import annotations

import posixpath
from typing import Literal

import msgspec

from controlplane.pgbackrest.config import RepositoryPlan
from controlplane.spec.models import Repository

Layout = Literal["controlplane", "pgedge"]
LAYOUTS: tuple[Layout, ...] = ("controlplane", "pgedge")


def pgedge_repository_path(repository: Repository, *, database_id: str, node_name: str) -> str:
    """Where pgEdge Control Plane keeps a node's backups in `repository`."""
    base = repository.base_path or "/"
    if not base.startswith("/"):
        raise ValueError(f"repository base_path {base!r} is not absolute")
    parts = [database_id, *([repository.id] if repository.id else []), node_name]
    for part in parts:
        if not part or "/" in part or part in (".", ".."):
            raise ValueError(f"invalid repository path component {part!r}")
    return posixpath.normpath(posixpath.join(base, "databases", *parts))


def in_layout(
    plans: list[RepositoryPlan], layout: Layout, *, database_id: str, node_name: str
) -> list[RepositoryPlan]:
    """`plans` (rendered in our layout) with their paths in `layout`."""
    if layout == "controlplane":
        return plans
    return [
        msgspec.structs.replace(
            plan,
            path=pgedge_repository_path(
                plan.repository, database_id=database_id, node_name=node_name
            ),
        )
        for plan in plans
    ]
