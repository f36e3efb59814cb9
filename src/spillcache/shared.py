"""Counters that DataLoader workers share with the process that started them.

A cache that may start workers owns one small memory-mapped file (in ``/dev/shm`` when there
is one): a slot of counters per worker, each written only by its worker, without a lock or a
system call, and summed by the owner. Only claiming a slot (once per worker) and summing take
the file's lock. The owner unlinks the file when its cache closes or is collected; files
left by killed owners are removed by the next owner that creates one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import secrets
import tempfile
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

__all__ = ["FIELDS", "CounterBlock", "WorkerSlot", "attach"]

logger = logging.getLogger(__name__)

FIELDS = (
    "ram_hits",
    "disk_hits",
    "misses",
    "puts",
    "corrupt",
    "node_hits",
    "rejected",
    "write_errors",
)
_PREFIX = "spillcache-counters-"
_MAGIC = 0x5350494C4C435431  # "SPILLCT1"
_HEADER_WORDS = 4
_SLOT_WORDS = 1 + len(FIELDS)  # the owner's pid, then the counters
# Slot 0 holds the totals of workers whose slots were taken over; 1.. are workers' slots.
_SLOTS = 256
_WORDS = _HEADER_WORDS + _SLOTS * _SLOT_WORDS
_SIZE = 8 * _WORDS


def _directory() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[memoryview]:
    """The block's words, under its record lock.

    A POSIX record lock, not a flock: a flock belongs to the open file, which a fork
    duplicates, so a fork while a thread held it would leave the child holding it for good.
    Record locks belong to a process (threads of one process do not exclude each other:
    :class:`CounterBlock` serializes its own).
    """
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        with mmap.mmap(fd, _SIZE) as mm, memoryview(mm) as raw, raw.cast("q") as words:
            if words[0] != _MAGIC:
                raise OSError(f"{path} is not a spillcache counter block")
            yield words
    finally:
        os.close(fd)  # releases the lock


def _slot_offset(slot: int) -> int:
    return _HEADER_WORDS + slot * _SLOT_WORDS


def _reclaim(directory: Path) -> None:
    """Remove the blocks of owners that died without removing theirs (kill -9, OOM)."""
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            if not entry.name.startswith(_PREFIX):
                continue
            pid = entry.name[len(_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    entry.unlink()
                    logger.debug("removed %s, left by a process that died", entry)


class CounterBlock:
    """The counters of the workers of this process, in a file they map by its path.

    Owned by the process that created it: :meth:`close` (or garbage collection, or the end of
    the process) removes the file there, and does nothing in any other process.
    """

    def __init__(self) -> None:
        directory = _directory()
        _reclaim(directory)
        self.owner_pid = os.getpid()
        self.path = directory / f"{_PREFIX}{self.owner_pid}-{secrets.token_hex(6)}"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, _SIZE)
            with mmap.mmap(fd, _SIZE) as mm, memoryview(mm) as raw, raw.cast("q") as words:
                words[0], words[1] = _MAGIC, _SLOTS
        except BaseException:
            os.close(fd)
            self.path.unlink()
            raise
        os.close(fd)
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _unlink, self.path, self.owner_pid)

    def totals(self) -> dict[str, int]:
        """The counters summed over every worker that ever had a slot (zeros once closed)."""
        sums = dict.fromkeys(FIELDS, 0)
        if not self._finalizer.alive:
            return sums
        try:
            with self._lock, _locked(self.path) as words:
                for slot in range(_SLOTS):
                    base = _slot_offset(slot) + 1
                    for j, name in enumerate(FIELDS):
                        sums[name] += words[base + j]
        except OSError as exc:  # removed under us (e.g. by hand): the workers' counts are lost
            logger.debug("reading %s: %s", self.path, exc)
        return sums

    @property
    def owned(self) -> bool:
        """Whether this process created the block (and may sum and remove it)."""
        return os.getpid() == self.owner_pid and self._finalizer.alive

    def close(self) -> None:
        """Remove the file (in the owning process only). Idempotent."""
        self._finalizer()


def _unlink(path: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        with contextlib.suppress(OSError):
            path.unlink()


class WorkerSlot:
    """A worker's own slot in its parent's block: :meth:`publish` is a few memory stores."""

    def __init__(self, mm: mmap.mmap, slot: int) -> None:
        self._mm = mm
        start = _slot_offset(slot) + 1
        self._views = [memoryview(mm)]
        self._views.append(self._views[0].cast("q"))
        #: The slot's counters, in :data:`FIELDS` order (a worker stores into them directly).
        self.words = self._views[1][start : start + len(FIELDS)]
        self._views.append(self.words)

    def publish(self, values: tuple[int, ...]) -> None:
        """Set the slot's counters to ``values`` (in :data:`FIELDS` order)."""
        words = self.words
        for j, value in enumerate(values):
            words[j] = value

    def close(self) -> None:
        """Unmap the block; the slot keeps its counts for the parent. Idempotent."""
        for view in reversed(self._views):
            view.release()
        self._mm.close()


def attach(path: str | os.PathLike[str]) -> WorkerSlot | None:
    """Claim a slot in the block at ``path`` for this process; None if that is impossible.

    Slots of workers that have exited are folded into slot 0 (their counts stay in the
    totals) and reused.
    """
    try:
        with _locked(Path(path)) as words:
            slot = _claim(words)
        if slot is None:
            logger.warning(
                "no free statistics slot in %s: this worker's requests are not counted in its "
                "parent's stats()",
                path,
            )
            return None
        fd = os.open(path, os.O_RDWR)
        try:
            mm = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)
    except OSError as exc:  # the parent closed its cache meanwhile
        logger.debug("attaching to %s: %s", path, exc)
        return None
    return WorkerSlot(mm, slot)


def _claim(words: memoryview) -> int | None:
    me = os.getpid()
    free = None
    for slot in range(1, _SLOTS):
        base = _slot_offset(slot)
        pid = words[base]
        if pid not in (0, me) and _alive(pid):
            continue
        if pid != 0:  # an exited worker's, or one that had our pid before us
            total = _slot_offset(0) + 1
            for j in range(len(FIELDS)):
                words[total + j] += words[base + 1 + j]
                words[base + 1 + j] = 0
            words[base] = 0
        if free is None:
            free = slot
    if free is not None:
        words[_slot_offset(free)] = me
    return free
