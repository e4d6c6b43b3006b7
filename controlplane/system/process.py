"""Subprocesses: run an argv (never a shell string), stream its output line by line, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence

from controlplane.errors import ExternalCommandError

LineSink = Callable[[str], Awaitable[None]]


def as_user(argv: Sequence[str], os_user: str) -> list[str]:
    """Prefix argv with `runuser` when we are root: Postgres and pgBackRest refuse or misbehave as
    root (pgBackRest leaves root-owned files in the repository that break later runs)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", os_user, "--", *argv]
    return list(argv)


class CommandResult:
    """Exit code and the output tail of a finished command."""

    def __init__(self, exit_code: int, lines: list[str]) -> None:
        self.exit_code = exit_code
        self.lines = lines

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def tail(self, count: int = 20) -> str:
        return "\n".join(self.lines[-count:])


async def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    on_line: LineSink | None = None,
    grace_seconds: float = 10.0,
    keep_lines: int = 200,
    stdin: int | None = None,
    inherit_env: bool = True,
) -> CommandResult:
    """Run argv, merging stderr into stdout, passing each line to `on_line` as it arrives.

    `stdin` is a descriptor the child reads (default: /dev/null). With `inherit_env=False` the
    child gets `env` alone, none of ours.

    If the calling task is cancelled the child gets SIGTERM, then SIGKILL after `grace_seconds`,
    and the cancellation propagates once the child is gone (no orphan keeps running).
    """
    full_env = dict(os.environ) if inherit_env else {}
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            lines.append(line)
            if len(lines) > keep_lines:
                del lines[0]
            if on_line is not None:
                await on_line(line)
        exit_code = await proc.wait()
    except BaseException:
        await asyncio.shield(_terminate(proc, grace_seconds))
        raise
    return CommandResult(exit_code, lines)


async def _terminate(proc: asyncio.subprocess.Process, grace_seconds: float) -> None:
    """SIGTERM the child's process group, then SIGKILL if it does not exit in time."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_seconds)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def check_command(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    on_line: LineSink | None = None,
    grace_seconds: float = 10.0,
) -> CommandResult:
    """Run argv and raise ExternalCommandError naming `what` when it exits non-zero."""
    result = await run_command(argv, env=env, on_line=on_line, grace_seconds=grace_seconds)
    if result.exit_code != 0:
        raise ExternalCommandError(
            f"{what} failed: {program_name(argv)} exited {result.exit_code}: {result.tail(5)}",
            exit_code=result.exit_code,
        )
    return result


def program_name(argv: Sequence[str]) -> str:
    """The program an argv runs, looking through a `runuser -u USER --` prefix."""
    if argv and argv[0] == "runuser" and "--" in argv:
        rest = list(argv)[list(argv).index("--") + 1 :]
        return os.path.basename(rest[0]) if rest else "runuser"
    return os.path.basename(argv[0]) if argv else "?"
