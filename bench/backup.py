"""Full backup through the API vs the same `pgbackrest backup` by hand vs a raw tar.

Usage: .venv/bin/python -m bench.backup [--scale 50] [--runs 5] [--load] [--clients 4]

Starts a control plane (embedded store, local orchestrator) in a scratch data dir, creates a
one-node database with a posix repository, loads it with `pgbench -i -s SCALE`, then times:
  api   POST .../backups {type: full} until the task is completed (every step included)
  raw   pgbackrest --type=full backup with the instance's own config, run by hand
  tar   tar of the data directory into a file (an anchor for the disk's speed; idle only)
and prints the medians and the ratio api / raw (target: <= 1.10 at scale 50, idle).

With --load, pgbench (`--clients` clients, TPC-B-like, as the Postgres OS user) writes to the
node being backed up for the whole benchmark; api and raw run under the same load, and each
run prints pgbench's tps during it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.harness import BenchServer, PgbenchLoad, compare, print_step_medians, run_as_postgres


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--load", action="store_true", help="pgbench on the node during backups")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--load-limit", type=float, default=1200, help="longest load, seconds")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cpbench-", dir="/tmp"))
    server = BenchServer(root)
    load: PgbenchLoad | None = None
    try:
        server.start()
        database = server.create_database(
            "bench",
            backup_config={
                "repositories": [
                    {"type": "posix", "base_path": str(root / "repo"), "retention_full": 9999}
                ]
            },
        )
        node = database["instances"][0]
        print(f"loading pgbench scale {args.scale} …", flush=True)
        server.pgbench_init(node, args.scale)
        config = server.data_dir / "instances" / "bench-n1" / "pgbackrest.conf"
        pgdata = server.data_dir / "instances" / "bench-n1" / "pgdata"
        tasks: list[dict[str, Any]] = []

        def api_backup() -> None:
            task = server.post("/v1/databases/bench/nodes/n1/backups", {"type": "full"})
            tasks.append(server.wait_task("bench", task["task"]["task_id"], poll=0.02))

        def raw_backup() -> None:
            run_as_postgres(
                ["pgbackrest", f"--config={config}", "--stanza=db", "--type=full", "backup"]
            )

        def tar_copy() -> None:
            target = root / "copy.tar"
            subprocess.run(["tar", "-cf", str(target), "-C", str(pgdata), "."], check=True)
            target.unlink()

        api_backup()  # warm the page cache and the stanza once
        tasks.clear()
        if args.load:
            load = PgbenchLoad(
                node, clients=args.clients, limit=args.load_limit, log_path=root / "pgbench.log"
            ).start()
            print(f"load: pgbench -c {args.clients} on n1, the node being backed up", flush=True)
            load.baseline()
        timings = compare(
            [("raw", raw_backup), ("api", api_backup)],
            args.runs,
            extra=None if load else [("tar", tar_copy)],
            load=load,
        )
        ratio = timings.median("api") / timings.median("raw")
        print(
            f"ratio api / raw pgbackrest{' (under load)' if load else ''}: {ratio:.3f}"
            + ("" if load else "  (target <= 1.10 at scale 50)")
            + f"  (scale {args.scale}, {os.cpu_count()} cores)"
        )
        print_step_medians("node_backup", tasks)
        print(
            f"summary backup (scale {args.scale}{', load on n1' if load else ', idle'}): "
            f"api {timings.median('api'):.2f}s raw {timings.median('raw'):.2f}s "
            f"ratio {ratio:.3f}"
            + (
                f" pgbench tps api {timings.median_tps('api'):.0f}"
                f" raw {timings.median_tps('raw'):.0f}"
                if load
                else ""
            )
        )
        return 0
    except (httpx.HTTPError, subprocess.CalledProcessError, AssertionError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if load is not None:
            load.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
