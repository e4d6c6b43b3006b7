"""pglogical multi-master mesh between the nodes of one database (what pgEdge does with Spock).

Everything here works on asyncpg connections the caller opens (a superuser's, to each node's
application database) and on libpq DSNs by which the nodes reach each other: no HTTP, no tasks.
"""

from controlplane.replication.attach import (
    create_slot,
    restored_origins,
    resume_subscriptions,
    set_origin,
    slot_start,
)
from controlplane.replication.drain import Drained, drain, end_client_sessions
from controlplane.replication.errors import ReplicationError
from controlplane.replication.joins import prepare_join, undo_join
from controlplane.replication.mesh import MeshChanges, converge_mesh
from controlplane.replication.names import (
    PLUGIN,
    REPLICATION_SETS,
    MeshNode,
    pglogical_node_name,
    subscription_name,
)
from controlplane.replication.nodes import (
    FENCED_START_SETTINGS,
    ensure_node,
    local_node_name,
    reset_restored_node,
)
from controlplane.replication.schema import PgTools, copy_schema
from controlplane.replication.subscriptions import (
    SubscriptionStatus,
    drop_node_links,
    drop_subscription,
    ensure_subscription,
    follow_new_primary,
    is_pglogical_node,
    list_subscriptions,
    release_stranded_workers,
    restart_subscriptions_from,
    stop_workers,
    subscription_status,
    wait_for_sync,
)

__all__ = [
    "FENCED_START_SETTINGS",
    "PLUGIN",
    "REPLICATION_SETS",
    "Drained",
    "MeshChanges",
    "MeshNode",
    "PgTools",
    "ReplicationError",
    "SubscriptionStatus",
    "converge_mesh",
    "copy_schema",
    "create_slot",
    "drain",
    "drop_node_links",
    "drop_subscription",
    "end_client_sessions",
    "ensure_node",
    "ensure_subscription",
    "follow_new_primary",
    "is_pglogical_node",
    "list_subscriptions",
    "local_node_name",
    "pglogical_node_name",
    "prepare_join",
    "release_stranded_workers",
    "reset_restored_node",
    "restart_subscriptions_from",
    "restored_origins",
    "resume_subscriptions",
    "set_origin",
    "slot_start",
    "stop_workers",
    "subscription_name",
    "subscription_status",
    "undo_join",
    "wait_for_sync",
]
