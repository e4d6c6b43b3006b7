"""pgEdge spec fields naming what this control plane does not have: each is accepted in
pgEdge's shape and, when it asks for something, refused with why and what to use instead."""

from __future__ import annotations

from controlplane.spec.models import DatabaseSpec
from controlplane.spec.paths import Problem, field_path, item_path, problem

# Predefined roles of PostgreSQL 15 a user may be granted (pg_database_owner is implicit).
PREDEFINED_ROLES = frozenset(
    {
        *("pg_read_all_data", "pg_write_all_data", "pg_read_all_settings", "pg_read_all_stats"),
        *("pg_stat_scan_tables", "pg_monitor", "pg_signal_backend", "pg_read_server_files"),
        *("pg_write_server_files", "pg_execute_server_program", "pg_checkpoint"),
    }
)


def check_unsupported(spec: DatabaseSpec) -> list[Problem]:
    """Problems with pgEdge fields that ask for what is not here (services, scripts) and with
    users' `roles` (granted here, so each must be a role that exists)."""
    errors: list[Problem] = []
    for index, _ in enumerate(spec.services):
        message = (
            "service instances (MCP, PostgREST, RAG) are not run by this control plane: run "
            "the service yourself and point it at the database's connection_info"
        )
        errors.append(problem(item_path("spec.services", index), message))
    if spec.scripts is not None:
        for name in ("post_init", "post_database_create"):
            if getattr(spec.scripts, name):
                message = (
                    "SQL scripts are not run by this control plane: run the statements once "
                    "the create task has completed (they replicate like any other change "
                    "only if they are DML; run DDL on every node)"
                )
                errors.append(problem(field_path("spec.scripts", name), message))
    usernames = {user.username for user in spec.database_users}
    for index, user in enumerate(spec.database_users):
        for k, role in enumerate(user.roles):
            path = item_path(f"{item_path('spec.database_users', index)}.roles", k)
            if role == user.username:
                errors.append(problem(path, f"user {role} cannot be granted to itself"))
            elif role not in usernames and role not in PREDEFINED_ROLES:
                message = (
                    f"role {role} is neither a user of this spec nor a predefined role "
                    "(e.g. pg_read_all_data, pg_monitor): roles made by pgEdge's post_init "
                    "scripts do not exist here; add it to database_users with NOLOGIN"
                )
                errors.append(problem(path, message))
    return errors
