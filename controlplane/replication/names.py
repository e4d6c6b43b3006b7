"""Names in the pglogical mesh: nodes, subscriptions, and the replication sets they carry."""

from __future__ import annotations

import re

import msgspec

# Node names end up inside subscription and slot names; keeping them to [a-z0-9] keeps
# `cp_sub_<provider>_to_<subscriber>` unambiguous and well below NAMEDATALEN.
NODE_NAME = re.compile(r"^[a-z][a-z0-9]{0,29}$")
SUBSCRIPTION_PREFIX = "cp_sub_"
# The output plugin of every slot pglogical streams from.
PLUGIN = "pglogical_output"

# Every subscription carries all three sets pglogical creates with a node: tables with a primary
# key go to `default`, tables without one to `default_insert_only` (pglogical refuses them in
# `default`), and `ddl_sql` lets pglogical.replicate_ddl_command reach every node.
REPLICATION_SETS = ("default", "default_insert_only", "ddl_sql")


class MeshNode(msgspec.Struct, frozen=True, kw_only=True):
    """One node of the mesh: its name (e.g. "n1") and the libpq DSN by which OTHER nodes reach
    its application database as a superuser (e.g. "host=/tmp/cp-x/i port=5433 dbname=app
    user=postgres")."""

    name: str
    dsn: str

    def __post_init__(self) -> None:
        check_node_name(self.name)
        if not self.dsn.strip():
            raise ValueError(f"node {self.name}: empty dsn")


def check_node_name(node: str) -> str:
    """Return `node` when it is a valid mesh node name, else raise ValueError."""
    if not NODE_NAME.match(node):
        raise ValueError(f"invalid mesh node name {node!r}: expected {NODE_NAME.pattern}")
    return node


def pglogical_node_name(node: str) -> str:
    """The pglogical node name of mesh node `node`: the node name itself, so that
    `show_subscription_status().provider_node` reads as the spec's node name."""
    return check_node_name(node)


def subscription_name(provider: str, subscriber: str) -> str:
    """The subscription through which `subscriber` receives the writes of `provider`.

    It lives on the subscriber: `cp_sub_n1_to_n2` is on n2 and replicates n1's writes to n2.
    """
    return f"{SUBSCRIPTION_PREFIX}{check_node_name(provider)}_to_{check_node_name(subscriber)}"
