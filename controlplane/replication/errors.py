"""The one error the replication mesh raises: it names the node, subscription and status."""

from __future__ import annotations

from controlplane.errors import ControlPlaneError


class ReplicationError(ControlPlaneError):
    """pglogical could not be brought to the wanted shape (sync timeout, wrong node identity, …)."""

    name = "replication_failed"
