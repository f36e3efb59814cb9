"""The write queue of a tier and its writer thread, which commits the queue in batches.

Writes are queued and committed by one writer thread per process in batched transactions:
when ``BATCH_BYTES`` are queued, at the latest ``COMMIT_INTERVAL`` after a put, and when a
caller asks (:meth:`WriteQueue.commit`, :meth:`WriteQueue.commit_queued`). A put waits while
``MAX_QUEUED_BYTES`` are queued. The queue does not know how a batch is stored: it hands it to
the tier (:class:`Sink`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from .buffers import BufferPool
from .values import Deferred, Stored, readable

__all__ = ["BATCH_BYTES", "MAX_QUEUED_BYTES", "Batch", "Pending", "Sink", "WriteQueue"]

# Commit when this much is queued; put() waits while the queue holds MAX_QUEUED_BYTES, which
# bounds the memory of pending writes (memory the RAM budget does not count). Small batches keep
# that memory low and the writer's copies in warm pages (docs/design.rst, "Batch sizes").
BATCH_BYTES = 1 << 20
MAX_QUEUED_BYTES = 8 * BATCH_BYTES
_COMMIT_INTERVAL = 0.25
# A writer with nothing to do exits: hundreds of idle caches must not mean hundreds of threads.
_WRITER_IDLE_EXIT = 2.0

# A queued value, or a finished one in flight (a view of a pool buffer).
Pending = bytes | memoryview | Deferred
Batch = dict[int, Pending]


class Sink(Protocol):
    """Where a write queue's batches go: the tier."""

    @property
    def generation(self) -> bytes | None:
        """The generation the tier writes to now."""
        ...

    def store_batch(self, batch: Batch, generation: bytes | None) -> None:
        """Commit ``batch``, taken from the queue while the tier was at ``generation``."""
        ...


class WriteQueue:
    """Queued writes by key, the batch in flight, and the thread that commits them.

    Parameters
    ----------
    lock : threading.Condition
        The tier's lock, which guards the queue (methods ending in ``_locked`` need it held).
    pool : BufferPool
        Takes back the buffers of committed and dropped values.
    sink : Sink
        Commits each batch (outside the lock), and names the generation a batch belongs to
        (read under the lock).
    name : str
        The writer thread's name.
    on_start : callable
        Called before the first writer thread starts (the registry's exit hook).

    Attributes
    ----------
    queue : dict
        Queued values by key, oldest first.
    inflight : dict
        The batch being committed (by the writer or by :meth:`commit`).
    closed, forking : bool
        Set by the tier: no writes are committed once closed; puts wait while forking.
    """

    def __init__(
        self,
        lock: threading.Condition,
        pool: BufferPool,
        sink: Sink,
        *,
        name: str,
        on_start: Callable[[], None],
    ) -> None:
        self.lock = lock
        self._pool = pool
        self._sink = sink
        self._name = name
        self._on_start = on_start
        self.queue: Batch = {}
        self.queued_bytes = 0
        self.enqueued = 0
        self.done = 0
        self.inflight: Batch = {}
        self.writer: threading.Thread | None = None
        self.stopping = False
        self.urgent = False
        self.forking = False
        self.closed = False

    # -- queueing ----------------------------------------------------------------------------------

    def add_locked(self, key: int, value: Pending) -> None:
        """Queue ``value`` for ``key`` (replacing a queued one); waits while the queue is full."""
        lock = self.lock
        while self.queued_bytes >= MAX_QUEUED_BYTES and not self.closed:
            self.urgent = True
            self.ensure_writer_locked()
            lock.wait()
        queue = self.queue
        old = queue.pop(key, None)
        if old is not None:
            self.queued_bytes -= len(old)
            self._pool.recycle_locked((old,))
        queue[key] = value
        self.queued_bytes += len(value)
        self.enqueued += 1
        self.ensure_writer_locked()
        if len(queue) == 1 or self.queued_bytes >= BATCH_BYTES:
            lock.notify_all()

    def drop_locked(self) -> int:
        """Drop every queued write (not the batch in flight); how many were queued."""
        dropped = len(self.queue)
        self._pool.recycle_locked(self.queue.values())
        self.queue.clear()
        self.queued_bytes = 0
        return dropped

    def pending(self, key: int) -> Stored | None:
        """A copy of the queued or in-flight value of ``key``, if any (takes the lock).

        Copied under the lock: once the lock is released the writer may commit the value and
        recycle the pool buffer it lies in.
        """
        with self.lock:
            value = self.queue.get(key)
            if value is None:
                value = self.inflight.get(key)
            return None if value is None else readable(value)

    def keys(self) -> set[int]:
        """The keys queued or in flight."""
        with self.lock:
            return set(self.queue) | set(self.inflight)

    # -- the writer thread -------------------------------------------------------------------------

    def ensure_writer_locked(self) -> None:
        """Start the writer thread unless it runs."""
        if self.writer is None:
            self._on_start()
            self.writer = threading.Thread(target=self._run, name=self._name, daemon=True)
            self.writer.start()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self.lock:
                # Only reached with the writer still set if the loop died of an unexpected
                # error: let the next write start a new writer instead of queueing forever.
                if self.writer is threading.current_thread():
                    self.writer = None
                    self.stopping = False
                self.lock.notify_all()

    def _loop(self) -> None:
        while True:
            with self.lock:
                if not self._await_batch_locked():
                    self.writer = None
                    self.stopping = False
                    # Idle: no puts are coming, so the spare buffers are memory for nothing.
                    self._pool.clear_locked()
                    self.lock.notify_all()
                    return
                taken = self._take_locked()
                self.urgent = bool(self.queue)
                self.lock.notify_all()
            self._commit_taken(*taken)
            self._pool.restock(self._busy_locked)

    def _await_batch_locked(self) -> bool:
        """Wait until a batch is due; False once the writer should exit (idle, or stopping)."""
        deadline: float | None = None
        while True:
            if self.inflight:  # commit() commits a batch in its own thread
                self.lock.wait()
            elif not self.queue:
                if (self.stopping or not self.lock.wait(_WRITER_IDLE_EXIT)) and not self.queue:
                    return False
            else:
                now = time.monotonic()
                deadline = deadline or now + _COMMIT_INTERVAL
                if self._due_locked() or now >= deadline:
                    return True
                self.lock.wait(deadline - now)

    def _due_locked(self) -> bool:
        return self.stopping or self.urgent or self.queued_bytes >= BATCH_BYTES

    def _busy_locked(self) -> bool:
        """Whether writes wait (or the writer stops): no time to restock the pool."""
        return self.stopping or bool(self.queue)

    def _take_locked(self) -> tuple[Batch, bytes | None, int | None]:
        """Take a batch in flight: it, the generation it belongs to, and the writes it ends.

        The last is None while writes queued before this batch remain: they are committed
        next without waiting for more (they have waited already).
        """
        self.inflight = batch = self._take_batch_locked()
        return batch, self._sink.generation, None if self.queue else self.enqueued

    def _take_batch_locked(self) -> Batch:
        """The oldest queued writes, about ``BATCH_BYTES`` of them, out of the queue.

        Never much more, even when more is queued: larger commits fault LMDB's page buffers in
        anew every time, and a writer that fell behind would slow down further
        (docs/design.rst, "Batch sizes").
        """
        queue = self.queue
        if self.queued_bytes <= BATCH_BYTES:
            self.queue = {}
            self.queued_bytes = 0
            return queue
        keys = []
        size = 0
        for key, value in queue.items():
            if size >= BATCH_BYTES:
                break
            keys.append(key)
            size += len(value)
        self.queued_bytes -= size
        return {key: queue.pop(key) for key in keys}

    def _commit_taken(self, batch: Batch, generation: bytes | None, taken: int | None) -> None:
        """Commit a batch from :meth:`_take_locked`, then recycle it and count it done."""
        try:
            self._sink.store_batch(batch, generation)
        finally:
            with self.lock:
                self.inflight = {}
                self._pool.recycle_locked(batch.values())
                if taken is not None:
                    self.done = max(self.done, taken)
                self.lock.notify_all()

    # -- waiting for commits -----------------------------------------------------------------------

    def commit(self) -> None:
        """Commit everything queued; return when done.

        The calling thread commits the batches the writer thread is not busy with itself: a
        DataLoader worker that commits before it hands out each batch then waits for no
        other thread (under CPU contention a hand-off can cost a scheduler slice).
        """
        with self.lock:
            target = self.enqueued
        while True:
            with self.lock:
                if self.done >= target or not (self.queue or self.inflight) or self.closed:
                    return
                if self.inflight or self.forking:
                    self.urgent = True
                    self.lock.notify_all()
                    self.lock.wait()
                    continue
                taken = self._take_locked()
            self._commit_taken(*taken)

    def commit_queued(self) -> None:
        """Return once the writes queued so far are committed (or the queue is closed)."""
        with self.lock:
            target = self.enqueued
            while self.done < target and (self.queue or self.inflight) and not self.closed:
                self.urgent = True
                self.ensure_writer_locked()
                self.lock.notify_all()
                self.lock.wait()

    def wait_idle_locked(self) -> None:
        """Return once no batch is in flight."""
        while self.inflight:
            self.lock.wait()

    def stop(self) -> None:
        """Let the writer commit what is queued and exit; return once it did."""
        with self.lock:
            if self.queue:
                self.ensure_writer_locked()
            self.stopping = True
            self.lock.notify_all()
            writer = self.writer
        if writer is not None and writer is not threading.current_thread():
            writer.join()
        with self.lock:
            self.stopping = False
