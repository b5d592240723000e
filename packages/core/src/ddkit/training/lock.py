"""An exclusive lock on a run directory, so that two trainers never write into one ``out_dir``.

The lock is ``fcntl.flock`` on ``<out_dir>/.lock``: the kernel drops it when its holder exits,
however it dies (SIGKILL included), so a crashed run never leaves its directory locked. The
holder writes its pid into the file (:meth:`RunDirectoryLock.record_pid`), only so that a
refused trainer can say who holds it; a trainer that takes the lock only to refuse the
directory (it holds another run's checkpoints) writes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import threading
import weakref
from pathlib import Path
from types import TracebackType

from ddkit.errors import ConfigError

__all__ = ["LOCK_FILE", "RunDirectoryLock", "RunLockedError"]

LOCK_FILE = ".lock"


class RunLockedError(ConfigError):
    """Another live process (or another Trainer in this one) holds the run directory.

    .. versionadded:: 0.2.0
    """


class RunDirectoryLock:
    """Holds ``<directory>/.lock`` exclusively from :meth:`acquire` until :meth:`release`.

    .. versionadded:: 0.2.0
    """

    __slots__ = ("__weakref__", "_fd", "_thread", "claimed", "directory", "path")

    def __init__(self, directory: str | Path, *, provisional: bool = False) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None
        self._thread: int | None = None
        #: False (``provisional``) while the owner is still being set up: a Trainer whose
        #: ``__init__`` raised (kept alive by its traceback) must not keep the directory from the
        #: next one made in the same thread. The owner sets it once it is ready.
        self.claimed = not provisional

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self, *, record_pid: bool = True) -> None:
        """Take the lock now or raise :class:`RunLockedError`, naming the directory and the holder's pid."""
        if self._fd is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                holder = _read_pid(fd)
                if holder == os.getpid():
                    _free_abandoned(self.path)
                if holder != os.getpid() or not _try_lock(fd):
                    raise RunLockedError(_busy_message(self.directory, holder))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._thread = threading.get_ident()
        _HELD[str(self.path.resolve())] = weakref.ref(self)
        if record_pid:
            self.record_pid()

    def record_pid(self) -> None:
        """Write this process's pid into the lock file, for the message of a refused trainer."""
        if self._fd is not None:
            data = f"{os.getpid()}\n".encode()
            if os.pread(self._fd, 64, 0) != data:
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Let another trainer use the directory (closing the file drops the lock; the pid stays, unread)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> RunDirectoryLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the kernel drops the lock anyway
            self.release()


#: The locks this process holds, by lock-file path.
_HELD: dict[str, weakref.ref[RunDirectoryLock]] = {}


def _free_abandoned(path: Path) -> None:
    """Release this process's lock on ``path`` if its owner is gone or never finished setting up.

    A Trainer nobody references may hold it until the cycle collector runs; one whose
    ``__init__`` raised in this thread is kept alive by the traceback but can never train.
    """
    gc.collect()
    ref = _HELD.get(str(path.resolve()))
    holder = ref() if ref is not None else None
    if holder is not None and not holder.claimed and holder._thread == threading.get_ident():
        holder.release()


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _busy_message(directory: Path, holder: int | None) -> str:
    who = f"process {holder}" if holder is not None else "another process"
    mine = " (this process: close() the earlier Trainer or let it go first)" if holder == os.getpid() else ""
    return (
        f"the run directory {directory} is in use by {who}{mine}: another trainer is writing its "
        "checkpoints there. Wait for it to finish (a killed run frees the directory at once), "
        "or choose another output directory"
    )
