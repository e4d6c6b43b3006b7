"""Private files written atomically (readers see the old content or the new, never a part),
owned by the OS user that runs the instances."""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path


def write_private_file(
    path: Path, text: str, *, uid: int | None, gid: int | None, mode: int = 0o600
) -> bool:
    """Write `text` to `path` (mode 0600, or 0700 for a script, owned by uid/gid) atomically;
    False if already there.

    "Already there" means same content, mode and the requested owner, so a file whose owner or
    mode drifted is rewritten too.
    """
    data = text.encode("utf-8")
    if _already_written(path, data, uid=uid, gid=gid, mode=mode):
        return False
    # A temp file in the same directory, renamed over the target: readers (pgBackRest started
    # by the archiver at any moment) see the old file or the new one, never a partial one.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            os.fchmod(tmp.fileno(), mode)
            if uid is not None or gid is not None:
                os.fchown(tmp.fileno(), -1 if uid is None else uid, -1 if gid is None else gid)
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)
    return True


def _already_written(
    path: Path, data: bytes, *, uid: int | None, gid: int | None, mode: int
) -> bool:
    try:
        stat = path.stat()
        current = path.read_bytes()
    except FileNotFoundError:
        return False
    return (
        current == data
        and stat.st_mode & 0o777 == mode
        and (uid is None or stat.st_uid == uid)
        and (gid is None or stat.st_gid == gid)
    )


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry itself is on disk.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OwnedFiles:
    """Files and directories made for the instances' OS user: owned by it when the control
    plane runs as root (Postgres and pgBackRest refuse root), private, written atomically."""

    def __init__(self, os_user: str) -> None:
        self._os_user = os_user

    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) to give new files, or None when we are not root (they are ours)."""
        if os.geteuid() != 0:
            return None
        entry = pwd.getpwnam(self._os_user)
        return entry.pw_uid, entry.pw_gid

    def owner_ids(self) -> str:
        """`uid:gid` of whoever runs the instances (the OS user, or us when not root)."""
        owner = self.owner()
        return f"{owner[0]}:{owner[1]}" if owner else f"{os.geteuid()}:{os.getegid()}"

    def private_dir(self, path: Path, mode: int) -> None:
        """Make `path` a directory of ours (or the OS user's) with `mode`, given to the OS user.

        Directories under /tmp have predictable names: one someone else made first (or a
        symlink planted in its place) is refused rather than chowned, so root never hands a
        path of an attacker's choosing to the OS user.
        """
        path.mkdir(mode=mode, exist_ok=True)
        info = path.lstat()
        owners = {os.geteuid(), *(o[0] for o in [self.owner()] if o)}
        if not stat.S_ISDIR(info.st_mode) or info.st_uid not in owners:
            raise PermissionError(
                f"{path} is not a directory of this control plane's (a symlink, or owned by "
                f"uid {info.st_uid}); remove it and start again"
            )
        owner = self.owner()
        if owner is not None:
            os.chown(path, *owner, follow_symlinks=False)
        os.chmod(path, mode)

    def chown(self, path: Path) -> None:
        owner = self.owner()
        if owner is not None:
            os.chown(path, *owner)

    def write(self, path: Path, text: str, *, executable: bool = False) -> bool:
        """Atomic write, mode 0600 (0700 when executable), owned by the OS user; False when
        already there."""
        uid, gid = self.owner() or (None, None)
        mode = 0o700 if executable else 0o600
        return write_private_file(path, text, uid=uid, gid=gid, mode=mode)

    def read(self, path: Path) -> str | None:
        return path.read_text() if path.exists() else None

    def make_dirs(self, paths: Sequence[str]) -> None:
        """Create each directory and its missing parents (0750), all owned by the OS user."""
        for raw in paths:
            path = Path(raw)
            missing = [p for p in (path, *path.parents) if not p.exists()]
            path.mkdir(parents=True, exist_ok=True, mode=0o750)
            for created in missing:
                self.chown(created)
