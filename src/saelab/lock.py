"""One writer per output folder: an exclusive lock that names its holder.

``folder_lock(folder, "training run")`` takes an advisory ``flock`` on ``folder/.saelab.lock``
and writes the holder's pid into it. A second saelab process on the same folder fails at once,
naming that pid. The kernel drops the lock when its holder dies (even by SIGKILL), so a lock
left by a killed run is stale by construction and simply taken over by the next run.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".saelab.lock"


class FolderBusyError(RuntimeError):
    """Another saelab process holds the output folder's lock."""


@contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` (created if missing) for the ``with`` block."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise FolderBusyError(
                f"{folder} is in use by another saelab process (pid {holder}); wait for it to "
                f"finish or choose another output folder for this {what}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the file stays (unlinking it would race with a waiting run)
    finally:
        os.close(fd)  # closing releases the flock
