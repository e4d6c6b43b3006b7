"""How fast the `controlplane` command starts: `--help`, and `database list` against a real
server (the budget is 0.25 s for each).

Usage: .venv/bin/python -m bench.cli_startup [--runs 10]

Starts `controlplane serve` (embedded store) with one database row, then runs each command
`--runs` times as a fresh process and prints the median and best wall time, and, from one
`python -X importtime` run, the total import time and the modules that cost the most. The
interpreter's own start (`python -c pass`) is printed as the floor nothing here can go under.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import BenchServer

_TOP = 8


def _wall(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, check=False)
        times.append(time.perf_counter() - began)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv[1:])} exited {done.returncode}: {done.stderr!r}")
    return times


def _imports(argv: list[str], env: dict[str, str]) -> tuple[float, list[tuple[float, str]]]:
    """(total seconds of imports, the costliest top-level imports) of one run."""
    done = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True
    )
    total, top = 0.0, []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative_us, name = line.removeprefix("import time:").split("|")
        if len(name) - len(name.lstrip()) == 1:  # imported at the top (not by another module)
            total += int(cumulative_us) / 1e6
            top.append((int(cumulative_us) / 1e6, name.strip()))
    return total, sorted(top, reverse=True)[:_TOP]


def _report(label: str, argv: list[str], env: dict[str, str], runs: int) -> None:
    times = _wall(argv, env, runs)
    total, top = _imports(argv, env)
    print(
        f"{label:<28} median {statistics.median(times) * 1000:6.0f} ms"
        f"   best {min(times) * 1000:6.0f} ms   imports {total * 1000:5.0f} ms"
    )
    for seconds, name in top:
        print(f"{'':<30}{seconds * 1000:6.1f} ms  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cp-bench-cli-", dir="/tmp"))
    server = BenchServer(root)
    try:
        server.start()
        token = (server.data_dir / "admin-token").read_text().strip()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
        env |= {"CONTROLPLANE_URL": server.url, "CONTROLPLANE_TOKEN": token}
        python = sys.executable
        print(f"cpu count {os.cpu_count()}, load {os.getloadavg()[0]:.2f}, runs {args.runs}")
        floor = _wall([python, "-c", "pass"], env, args.runs)
        print(f"{'python -c pass':<28} median {statistics.median(floor) * 1000:6.0f} ms")
        _report("controlplane --help", [python, "-m", "controlplane", "--help"], env, args.runs)
        _report(
            "controlplane database list",
            [python, "-m", "controlplane", "database", "list"],
            env,
            args.runs,
        )
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
