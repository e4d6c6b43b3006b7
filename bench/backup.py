"""Full backup through the API vs the same `pgbackrest backup` by hand vs a raw tar.

Usage: .venv/bin/python -m bench.backup [--scale 50] [--runs 5]

Starts a control plane (embedded store, local orchestrator) in a scratch data dir, creates a
one-node database with a posix repository, loads it with `pgbench -i -s SCALE`, then times:
  api   POST .../backups {type: full} until the task is completed (every step included)
  raw   pgbackrest --type=full backup with the instance's own config, run by hand
  tar   tar of the data directory into a file (an anchor for the disk's speed)
and prints the medians and the ratio api / raw (target: <= 1.10 at scale 50).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from bench.harness import BenchServer, compare, run_as_postgres


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cpbench-", dir="/tmp"))
    server = BenchServer(root)
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

        def api_backup() -> None:
            task = server.post("/v1/databases/bench/nodes/n1/backups", {"type": "full"})
            server.wait_task("bench", task["task"]["task_id"], poll=0.02)

        def raw_backup() -> None:
            run_as_postgres(
                ["pgbackrest", f"--config={config}", "--stanza=db", "--type=full", "backup"]
            )

        def tar_copy() -> None:
            target = root / "copy.tar"
            subprocess.run(["tar", "-cf", str(target), "-C", str(pgdata), "."], check=True)
            target.unlink()

        api_backup()  # warm the page cache and the stanza once
        medians = compare(
            [("raw", raw_backup), ("api", api_backup)], args.runs, extra=[("tar", tar_copy)]
        )
        print(
            f"ratio api / raw pgbackrest: {medians['api'] / medians['raw']:.3f}"
            f"  (target <= 1.10 at scale 50; scale {args.scale}, {os.cpu_count()} cores)"
        )
        return 0
    except (httpx.HTTPError, subprocess.CalledProcessError, AssertionError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
