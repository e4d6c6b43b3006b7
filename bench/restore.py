"""In-place restore through the API vs the same stop + `pgbackrest restore --delta` + start by hand.

Usage: .venv/bin/python -m bench.restore [--scale 50] [--runs 5] [--target immediate|latest|both]
                                         [--nodes 1|2] [--load] [--clients 4]

Creates a database with a posix repository, loads `pgbench -i -s SCALE` into n1, takes a full
backup, then times, alternating which goes first, for each target:
  api   POST /v1/databases/bench/restore of n1 until the parent task is completed — every step
        included (validation, subscription handling, fenced start if needed, restart if needed,
        mesh relink)
  raw   pg_ctl stop, pgbackrest --delta [--type=immediate --target-action=promote] restore,
        pg_ctl start, wait until pg_is_in_recovery() is false — by hand, same config
Targets: `immediate` (restore_options {type: immediate}: the set's consistent point) and
`latest` (no restore_options at all: replay the whole archive). Every `latest` run, api and
raw alike, is prepared untimed: a full backup, then one committed row in `bench_marker` that
only WAL replay can bring back; after the run the row must be there (no committed row lost).
The fresh backup matters: each restore opens a timeline, and replaying the chain of all
earlier restores' timelines from one old set grows ~0.5 s per run for both paths, which would
swamp the comparison.

With --nodes 2 the database has two nodes: n2 is added from n1's backup (no copy), so the api
restore of n1 also drops and recreates the links between n1 and n2. With --load (implies
--nodes 2) pgbench (`--clients` clients, TPC-B-like, as the Postgres OS user) writes to
**n2**, the other node of the database, for the whole benchmark while n1 is restored (n1 is
stopped during a restore, so it cannot take the load itself); n1 applies n2's writes through
the mesh until it stops. A raw restore takes n1's slots with it and so breaks n2's stream from
n1, which an api restore of n1 first waits for: with two nodes every api run comes before the
raw ones (after each raw one, n1's slot for n2 is made again by hand, as an operator would).
The tps printed per run is pgbench's on n2 during that run; the ratio targets are for an
idle machine and are not printed under load.

Prints the medians, the ratio api / raw (target: <= 1.25 at scale 50 for immediate, <= 1.15
for latest, idle) and the median duration of every step of the api's tasks.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import (
    PG_BIN,
    BenchServer,
    PgbenchLoad,
    compare,
    print_step_medians,
    run_as_postgres,
)

TARGETS = {"immediate": {"type": "immediate"}, "latest": None}
RATIO_TARGETS = {"immediate": 1.25, "latest": 1.15}


_REMAKE_SLOTS = """
SELECT count(pg_create_logical_replication_slot(slot, 'pglogical_output'))
  FROM (SELECT pglogical.pglogical_gen_slot_name(current_database(), 'n1',
                                                 'cp_sub_n1_to_' || node_name) AS slot
          FROM pglogical.node WHERE node_name <> 'n1') AS wanted
 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.slot_name = wanted.slot)
"""


class RestoreBench:
    """The database under test and the two ways of restoring its node n1."""

    def __init__(self, server: BenchServer, repo: dict[str, Any], node: dict[str, Any]) -> None:
        self.nodes = 1
        self.server = server
        self.repo = repo
        self.node = node
        self.instance = server.data_dir / "instances" / "bench-n1"
        self.parents: list[dict[str, Any]] = []
        self.children: list[dict[str, Any]] = []
        self.raw_parts: list[dict[str, float]] = []
        self.marker = 0

    def body(self, target: str) -> dict[str, Any]:
        config: dict[str, Any] = {
            "source_database_id": "bench",
            "source_node_name": "n1",
            "repository": self.repo,
        }
        if TARGETS[target] is not None:
            config["restore_options"] = TARGETS[target]
        return {"target_nodes": ["n1"], "restore_config": config}

    def api(self, target: str, *, record: bool = True) -> None:
        started = self.server.post("/v1/databases/bench/restore", self.body(target))
        parent = self.server.wait_task("bench", started["task"]["task_id"], poll=0.02)
        if record:
            self.parents.append(parent)
            for child in started["node_tasks"]:
                self.children.append(self.server.task("bench", child["task_id"]))

    def raw(self, target: str) -> None:
        pgdata = str(self.instance / "pgdata")
        began = time.perf_counter()
        run_as_postgres([str(PG_BIN / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", pgdata])
        stopped = time.perf_counter()
        options = TARGETS[target] or {}
        argv = [
            "pgbackrest",
            f"--config={self.instance / 'pgbackrest-restore.conf'}",
            "--stanza=db",
            "--delta",
        ]
        if options:
            argv += [f"--type={options['type']}", "--target-action=promote"]
        run_as_postgres([*argv, "restore"])
        restored = time.perf_counter()
        run_as_postgres(
            [
                str(PG_BIN / "pg_ctl"),
                "start",
                "-w",
                "-D",
                pgdata,
                "-l",
                str(self.instance / "postgres.log"),
            ]
        )
        started = time.perf_counter()
        self.server.wait_writable(self.node)
        self.raw_parts.append(
            {
                "stop": stopped - began,
                "restore": restored - stopped,
                "pg_ctl start": started - restored,
                "until writable": time.perf_counter() - started,
            }
        )
        # Untimed, what an operator must do by hand after it: the restore took n1's slots, so
        # make n1's stream to each other node again (from now: what was in between is lost).
        self.server.psql_superuser(self.node, _REMAKE_SLOTS)

    def fresh_backup(self) -> None:
        backup = self.server.post("/v1/databases/bench/nodes/n1/backups", {"type": "full"})
        self.server.wait_task("bench", backup["task"]["task_id"], poll=0.05)

    def prepare(self, target: str) -> None:
        """Before a `latest` run: a fresh set, then a committed row only replay brings back."""
        if target != "latest":
            return
        self.fresh_backup()
        self.marker += 1
        self.server.psql(self.node, f"INSERT INTO bench_marker VALUES ({self.marker})")

    def check(self, target: str) -> None:
        """After a `latest` run: the row committed after the set is there."""
        if target != "latest":
            return
        found = self.server.psql(self.node, "SELECT coalesce(max(id), 0) FROM bench_marker")
        assert int(found) == self.marker, f"row {self.marker} lost: found {found}"

    def print_raw_parts(self) -> None:
        if self.raw_parts:
            parts = [
                f"{name} {statistics.median(p[name] for p in self.raw_parts):.2f}"
                for name in self.raw_parts[0]
            ]
            print("  raw parts (median s): " + ", ".join(parts), flush=True)


def _setup(server: BenchServer, root: Path, args: argparse.Namespace) -> RestoreBench:
    repo = {"type": "posix", "base_path": str(root / "repo")}
    backup_config = {"repositories": [repo]}
    database = server.create_database("bench", backup_config=backup_config)
    node = database["instances"][0]
    print(f"loading pgbench scale {args.scale} …", flush=True)
    server.pgbench_init(node, args.scale)
    marker_table = "CREATE TABLE bench_marker (id integer PRIMARY KEY)"
    server.psql(node, marker_table)
    bench = RestoreBench(server, repo, node)
    bench.fresh_backup()
    if args.nodes == 2:
        print("adding n2 from n1's backup …", flush=True)
        began = time.perf_counter()
        from_backup = {"source_database_id": "bench", "source_node_name": "n1", "repository": repo}
        spec = {
            "database_name": "app",
            "database_users": [
                {"username": "admin", "db_owner": True, "attributes": ["LOGIN"]},
            ],
            "backup_config": backup_config,
            "nodes": [{"name": "n1"}, {"name": "n2", "restore_config": from_backup}],
        }
        server.update_database("bench", spec)
        bench.nodes = 2
        print(f"  n2 joined in {time.perf_counter() - began:.1f}s", flush=True)
        bench.fresh_backup()
    return bench


def _run_target(
    bench: RestoreBench, target: str, runs: int, load: PgbenchLoad | None
) -> dict[str, float]:
    prepared = " (each run: fresh full backup + 1 committed row, untimed)"
    print(f"\n== target {target}" + (prepared if target == "latest" else ""), flush=True)
    bench.api(target, record=False)  # writes the restore config and warms the cache
    bench.parents.clear()
    bench.children.clear()
    bench.raw_parts.clear()
    timings = compare(
        [("api", lambda: bench.api(target)), ("raw", lambda: bench.raw(target))],
        runs,
        load=load,
        before_each=lambda: bench.prepare(target),
        after_each=lambda: bench.check(target),
        # A raw restore breaks the other node's stream from n1 (its slot goes with it), and an
        # api restore of n1 waits for that stream: with two nodes every api run comes first.
        alternate=bench.nodes == 1,
    )
    ratio = timings.median("api") / timings.median("raw")
    print(
        f"ratio api / raw pgbackrest ({target}{', under load' if load else ''}): {ratio:.3f}"
        + ("" if load else f"  (target <= {RATIO_TARGETS[target]:.2f} at scale 50)"),
        flush=True,
    )
    bench.print_raw_parts()
    print_step_medians("node_restore", bench.children)
    print_step_medians("restore", bench.parents)
    result = {"api": timings.median("api"), "raw": timings.median("raw"), "ratio": ratio}
    if load is not None:
        result.update(api_tps=timings.median_tps("api"), raw_tps=timings.median_tps("raw"))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--target", choices=["immediate", "latest", "both"], default="both")
    parser.add_argument("--nodes", type=int, choices=[1, 2], default=1)
    parser.add_argument("--load", action="store_true", help="pgbench on n2 of a 2-node database")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--load-limit", type=float, default=1800, help="longest load, seconds")
    args = parser.parse_args()
    args.nodes = 2 if args.load else args.nodes
    targets = ["immediate", "latest"] if args.target == "both" else [args.target]
    root = Path(tempfile.mkdtemp(prefix="cpbench-", dir="/tmp"))
    server = BenchServer(root)
    load: PgbenchLoad | None = None
    try:
        server.start()
        bench = _setup(server, root, args)
        scale = f"scale {args.scale}, {args.nodes} node{'s' if args.nodes > 1 else ''}"
        if args.load:
            peer = next(i for i in server.database("bench")["instances"] if i["node_name"] == "n2")
            load = PgbenchLoad(
                peer, clients=args.clients, limit=args.load_limit, log_path=root / "pgbench.log"
            ).start()
            print(
                f"load: pgbench -c {args.clients} on n2 (the other node); restoring n1", flush=True
            )
            load.baseline()
        results = {target: _run_target(bench, target, args.runs, load) for target in targets}
        print()
        for target, result in results.items():
            print(
                f"summary {target:>9} ({scale}, {'load on n2' if load else 'idle'}): "
                f"api {result['api']:.2f}s raw {result['raw']:.2f}s ratio {result['ratio']:.3f}"
                + (
                    f" pgbench tps api {result['api_tps']:.0f} raw {result['raw_tps']:.0f}"
                    if load
                    else ""
                )
            )
        return 0
    except (httpx.HTTPError, subprocess.CalledProcessError, AssertionError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        if isinstance(exc, subprocess.CalledProcessError):
            stderr = exc.stderr
            if isinstance(stderr, bytes):
                stderr = stderr.decode(errors="replace")
            print(str(stderr)[-2000:], file=sys.stderr)
        return 1
    finally:
        if load is not None:
            load.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
