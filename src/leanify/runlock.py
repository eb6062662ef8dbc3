"""One run per folder: an exclusive lock file in the run folder, holding the owner's pid.

`fcntl.flock` is released by the kernel when its holder dies, even by `kill -9`, so a lock
left by a dead run is simply taken over; the pid inside only names the live owner in the
refusal. The file is opened close-on-exec: measuring processes never inherit the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from leanify.errors import LeanifyError

LOCK_NAME = ".leanify.lock"


class RunLock:
    """`with RunLock(folder, command):` or `acquire()` / `release()`."""

    def __init__(self, folder: Path, command: str = "leanify"):
        self.path = Path(folder) / LOCK_NAME
        self.command = command
        self.fd: int | None = None
        self.stale_pid: int | None = None  # the dead owner whose lock was taken over

    def acquire(self) -> RunLock:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise _unwritable(self.path.parent, exc) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                owner = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise _unwritable(self.path.parent, exc) from exc
                who = f"pid {owner}" if owner else "another process"
                raise LeanifyError(
                    f"is in use by another leanify run ({who}).", path=self.path.parent,
                    fix=f"Wait for it to finish (or stop it: kill {owner or '<pid>'}); then "
                        "add --resume to continue it, or choose another --out."
                ) from None
            # A releasing owner unlinks the file: if ours was unlinked before we locked it,
            # lock the new one instead.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_pid(fd)
        if previous and previous != os.getpid() and not _alive(previous):
            self.stale_pid = previous
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise _unwritable(self.path.parent, exc) from exc
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # unlinked while still held: see acquire()
        except OSError:
            pass
        os.close(self.fd)  # closing drops the lock
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _unwritable(folder: Path, exc: OSError) -> LeanifyError:
    if exc.errno == errno.ENOSPC:
        return LeanifyError("the disk is full.", path=folder,
                            fix="Free some space, then run the command again.")
    return LeanifyError(f"cannot write to {folder} ({os.strerror(exc.errno or 0)}).",
                        path=folder, fix="Make the folder writable (chmod u+w), or choose "
                                         "another --out.")
