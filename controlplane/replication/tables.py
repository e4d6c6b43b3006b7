"""Which tables replicate: every ordinary user table joins a replication set, now and on CREATE.

Two SQL functions and one event trigger are installed in the application database, in the
`pglogical` schema so that the schema copy for a joining node (`pg_dump --exclude-schema=pglogical`)
leaves them out while a user's own full `pg_dump` still contains them:

- `pglogical.cp_replicate_table(regclass)` puts one table into the right set: `default` when it
  has a primary key or replica identity index, else `default_insert_only` (pglogical refuses such
  a table in `default`, so without this a CREATE TABLE without a key would fail). A table that
  gains a key moves to `default`. Temporary, unlogged, partitioned parents (their rows live in
  the partitions; COPY from a parent fails in the initial sync), system and extension tables are
  skipped. It returns the set it put the table into, or NULL when nothing changed.
- `pglogical.cp_autorep()` runs it for each table of a CREATE TABLE / CREATE TABLE AS /
  SELECT INTO / ALTER TABLE. It is SECURITY DEFINER and owned by the superuser that installs it:
  a non-superuser table owner may not call `pglogical.replication_set_add_table` itself. A
  failure becomes a WARNING to the client, never a failed CREATE TABLE.
"""

from __future__ import annotations

from controlplane.store.pool import Connection

TRIGGER_NAME = "cp_autorep"
TRIGGER_TAGS = ("CREATE TABLE", "CREATE TABLE AS", "SELECT INTO", "ALTER TABLE")

REPLICATE_TABLE_BODY = """
DECLARE
  rel_info record;
  wanted text;
  current_set text;
BEGIN
  SELECT n.nspname, c.relkind, c.relpersistence,
         EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype = 'e') AS in_extension
    INTO rel_info
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.oid = rel;
  IF NOT FOUND OR rel_info.relkind <> 'r' OR rel_info.relpersistence <> 'p'
     OR rel_info.in_extension
     OR rel_info.nspname IN ('pglogical', 'pg_catalog', 'information_schema')
     OR rel_info.nspname LIKE 'pg\\_%' THEN
    RETURN NULL;
  END IF;
  wanted := CASE WHEN EXISTS (SELECT 1 FROM pg_index i
                               WHERE i.indrelid = rel AND (i.indisprimary OR i.indisreplident))
                 THEN 'default' ELSE 'default_insert_only' END;
  SELECT s.set_name INTO current_set
    FROM pglogical.replication_set_table t
    JOIN pglogical.replication_set s ON s.set_id = t.set_id
    JOIN pglogical.local_node l ON l.node_id = s.set_nodeid
   WHERE t.set_reloid = rel AND s.set_name IN ('default', 'default_insert_only');
  IF current_set IS NOT DISTINCT FROM wanted THEN
    RETURN NULL;
  END IF;
  IF current_set IS NOT NULL THEN
    PERFORM pglogical.replication_set_remove_table(current_set, rel);
  END IF;
  PERFORM pglogical.replication_set_add_table(wanted, rel, synchronize_data := false);
  RETURN wanted;
END
"""

AUTOREP_BODY = """
DECLARE
  cmd record;
BEGIN
  FOR cmd IN SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
              WHERE object_type = 'table' AND NOT in_extension LOOP
    BEGIN
      PERFORM pglogical.cp_replicate_table(cmd.objid);
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'table % is not replicated: %', cmd.objid::regclass, SQLERRM;
    END;
  END LOOP;
END
"""

FUNCTIONS = {
    # name: (signature for CREATE, regprocedure for lookup, return type, body)
    "cp_replicate_table": (
        "pglogical.cp_replicate_table(rel regclass)",
        "pglogical.cp_replicate_table(regclass)",
        "text",
        REPLICATE_TABLE_BODY,
    ),
    "cp_autorep": (
        "pglogical.cp_autorep()",
        "pglogical.cp_autorep()",
        "event_trigger",
        AUTOREP_BODY,
    ),
}

USER_TABLES_SQL = """
SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND c.relpersistence = 'p'
   AND n.nspname NOT IN ('pglogical', 'pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype = 'e')
 ORDER BY c.oid
"""


async def install_autorep(conn: Connection) -> bool:
    """Install (or update) the two functions and the event trigger; True when anything changed.

    Must run as a superuser after the pglogical extension exists.
    """
    changed = False
    for signature, regproc, returns, body in FUNCTIONS.values():
        current = await conn.fetchval(
            "SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure($1)", regproc
        )
        if current == body:
            continue
        # Only our constant texts are interpolated here (no user input).
        await conn.execute(
            f"CREATE OR REPLACE FUNCTION {signature} RETURNS {returns} LANGUAGE plpgsql "
            "SECURITY DEFINER SET search_path = pg_catalog, pg_temp "
            f"AS $cp_body${body}$cp_body$"
        )
        changed = True
    exists = await conn.fetchval("SELECT 1 FROM pg_event_trigger WHERE evtname = $1", TRIGGER_NAME)
    if not exists:
        tags = ", ".join(f"'{tag}'" for tag in TRIGGER_TAGS)
        await conn.execute(
            f"CREATE EVENT TRIGGER {TRIGGER_NAME} ON ddl_command_end WHEN TAG IN ({tags}) "
            "EXECUTE FUNCTION pglogical.cp_autorep()"
        )
        changed = True
    return changed


async def replicate_existing_tables(conn: Connection) -> list[str]:
    """Put every existing user table into its replication set; return the tables that moved.

    Idempotent: tables already in the right set are left alone. A table pglogical refuses raises
    here (unlike in the event trigger) so that a mesh is never reported complete without it.
    """
    changed: list[str] = []
    for record in await conn.fetch(USER_TABLES_SQL):
        target = await conn.fetchval(
            "SELECT pglogical.cp_replicate_table($1::oid::regclass)", record["oid"]
        )
        if target is not None:
            changed.append(str(record["name"]))
    return changed


async def user_tables(conn: Connection) -> list[str]:
    """Qualified, quoted names of the user tables that replicate (see USER_TABLES_SQL)."""
    return [str(record["name"]) for record in await conn.fetch(USER_TABLES_SQL)]
