"""The pglogical node of one database: extension, node identity, table sets, restored catalogs.

A data directory restored from a backup carries the pglogical catalog of the moment and of the
node the backup was taken from: its local node may bear another node's name, and its
subscriptions point at slots that are gone (same node) or that belong to the live node the
backup came from (another node). `reset_restored_node` clears both without touching any other
node; `ensure_node` then gives the database the identity it must have.
"""

from __future__ import annotations

from controlplane.replication.errors import ReplicationError
from controlplane.replication.names import MeshNode, pglogical_node_name
from controlplane.replication.subscriptions import drop_subscription, list_subscriptions
from controlplane.replication.tables import install_autorep, replicate_existing_tables
from controlplane.store.pool import Connection

# Start a restored data directory with these settings until `reset_restored_node` has run:
# pglogical's supervisor, managers and apply workers are background workers, so none starts
# and no stale subscription can stream from a slot (max_logical_replication_workers only
# governs native logical replication and does not stop pglogical). pglogical's SQL functions
# keep working. hot_standby=off because archive recovery with hot standby refuses a
# max_worker_processes below the primary's; it also means connections are refused until
# recovery has ended, and `pg_ctl start -w` returns before that: poll until a connection works.
FENCED_START_SETTINGS = {"max_worker_processes": "0", "hot_standby": "off"}

LOCAL_NODE_SQL = """
SELECT n.node_name, i.if_id, i.if_dsn
  FROM pglogical.local_node l
  JOIN pglogical.node n ON n.node_id = l.node_id
  JOIN pglogical.node_interface i ON i.if_id = l.node_local_interface
"""


async def ensure_node(conn: Connection, node: MeshNode) -> bool:
    """Make the database pglogical node `node`; True when anything changed.

    Creates the extension and the node if missing, and replaces a node of another name (a data
    directory restored from another node's backup) after dropping its stale subscriptions
    without touching their slots elsewhere. Installs the event trigger that adds new tables to
    the replication sets and adds every existing user table. `conn` must be a superuser's.
    """
    if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        raise ReplicationError(f"node {node.name}: pglogical must be set up by a superuser")
    changed = False
    if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'pglogical'") is None:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pglogical")
        changed = True
    async with conn.transaction():
        await _grant_trigger_access(conn)
        changed |= await _ensure_identity(conn, node)
        changed |= await install_autorep(conn)
        changed |= bool(await replicate_existing_tables(conn))
    return changed


async def _grant_trigger_access(conn: Connection) -> None:
    """Let table owners fire pglogical's triggers, and nothing else.

    pglogical's TRUNCATE trigger resolves names in schema pglogical as the table owner, so a
    non-superuser owner could not truncate a replicated table ("permission denied for schema
    pglogical"). USAGE on the schema fixes that; USAGE alone would also let any user call
    pglogical.drop_node(), so EXECUTE on every pglogical function is taken from PUBLIC
    (firing a trigger does not check EXECUTE).
    """
    await conn.execute("GRANT USAGE ON SCHEMA pglogical TO PUBLIC")
    await conn.execute("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA pglogical FROM PUBLIC")


async def reset_restored_node(conn: Connection, node: MeshNode) -> bool:
    """Clear the pglogical state a restored data directory brought along, then `ensure_node`.

    Drops every subscription in the catalog without reaching its provider (the slot is gone,
    or belongs to the node the backup came from), forgets the other nodes, and (re)creates the
    local node as `node`. Subscriptions are recreated afterwards by `converge_mesh`. True when
    anything changed.
    """
    changed = await _detach_catalog(conn, node)
    return await ensure_node(conn, node) or changed


async def local_node_name(conn: Connection) -> str | None:
    """The name of the database's pglogical node, or None when it has none."""
    if await conn.fetchval("SELECT to_regclass('pglogical.local_node')") is None:
        return None
    name = await conn.fetchval("SELECT node_name FROM (" + LOCAL_NODE_SQL + ") AS local_node")
    return None if name is None else str(name)


async def _ensure_identity(conn: Connection, node: MeshNode) -> bool:
    wanted = pglogical_node_name(node.name)
    local = await conn.fetchrow(LOCAL_NODE_SQL)
    if local is not None and local["node_name"] == wanted:
        if local["if_dsn"] == node.dsn:
            return False
        # pglogical has no call to change the local interface; the DSN is only used by this
        # node to check it can reach itself, so updating the row in place is enough.
        await conn.execute(
            "UPDATE pglogical.node_interface SET if_dsn = $1 WHERE if_id = $2",
            node.dsn,
            local["if_id"],
        )
        return True
    if local is not None:
        await _detach_catalog(conn, node)
    # A remote node record with our name (restored catalog) would make create_node fail.
    await conn.execute("SELECT pglogical.drop_node($1, ifexists := true)", wanted)
    await conn.execute("SELECT pglogical.create_node($1, $2)", wanted, node.dsn)
    return True


async def _detach_catalog(conn: Connection, node: MeshNode) -> bool:
    """Drop every subscription (slots elsewhere untouched) and every node record but ours."""
    if await conn.fetchval("SELECT to_regclass('pglogical.local_node')") is None:
        return False
    local = await local_node_name(conn)
    if local is not None and local != pglogical_node_name(node.name):
        await _refuse_if_serving(conn, node, local)
    changed = False
    for sub in await list_subscriptions(conn):
        changed |= await drop_subscription(conn, sub.name, drop_remote_slot=False)
    keep = pglogical_node_name(node.name)
    for record in await conn.fetch("SELECT node_name FROM pglogical.node ORDER BY node_name"):
        if record["node_name"] != keep:
            # Dropping the local node also drops this database's pglogical slots: there are
            # none on a restored node (slots are not in backups), and we refused otherwise.
            await conn.execute("SELECT pglogical.drop_node($1)", record["node_name"])
            changed = True
    return changed


async def _refuse_if_serving(conn: Connection, node: MeshNode, local: str) -> None:
    """A node whose slots feed subscribers is live, not restored: renaming it would cut them."""
    slots = await conn.fetchval(
        "SELECT count(*) FROM pg_replication_slots "
        "WHERE database = current_database() AND plugin = 'pglogical_output'"
    )
    if slots:
        raise ReplicationError(
            f"node {node.name}: the database is pglogical node {local} and still serves "
            f"{slots} replication slot(s); refusing to rename it"
        )
