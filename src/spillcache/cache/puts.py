"""Puts of :class:`~spillcache.cache.SpillCache`: to disk, to RAM if it fits; commit, flush."""

from __future__ import annotations

from ..codec import Encoding, replicator, snapshot
from ..counters import PUTS
from ..disk import Value
from ..footprint import ENTRY_OVERHEAD, sample_nbytes
from ..indices import check_key
from .state import CacheState

__all__ = ["Puts"]


class Puts(CacheState):
    """The put, commit and flush methods of :class:`~spillcache.cache.SpillCache`."""

    def put(
        self, key: object, sample: object, *, evict: bool = True, name: str | None = None
    ) -> bool:
        """Store ``sample`` under ``key`` (overwriting), in RAM if it fits and on disk.

        Parameters
        ----------
        key : int, numpy integer or 0-d integer tensor
            A non-negative integer.
        sample : object
            Nested dicts (str or int keys), lists and tuples of torch tensors, numpy arrays and
            scalars, Python int/float/bool/str/bytes and None. Not ``None`` itself (a ``get``
            could not tell it from a miss).
        evict : bool
            ``False``: the RAM tier takes the sample only into free space (what a background
            fill should do: never push out what training uses).
        name : str or None
            What error messages call the sample, e.g. ``"dataset[5]"`` (the message then reads
            ``cannot encode dataset[5]['meta']: ...``); ``None``: ``"sample 5"`` for key 5.

        Returns
        -------
        bool
            Whether the sample is cached: in RAM, or on its way to disk (``False`` when the
            RAM tier declined it and the disk tier is full).

        Raises
        ------
        TypeError
            For an unsupported leaf, naming its path inside the sample.
        """
        k = check_key(key)
        if sample is None:
            raise TypeError(
                f"cannot put None under key {k}: a cache cannot store None, which get() returns "
                "for a miss; store a sample (an empty dict if there is nothing to store)"
            )
        self._current()  # raises if closed, warns once if stale (then write() refuses)
        encoding = Encoding(sample, name=f"sample {k}" if name is None else name)
        admits = self._may_admit()
        fits = False
        if admits:
            # The tier holds at least the tensors' bytes: a compact copy, or with copy=False the
            # sample itself, views and what they keep alive (a view into a data-set-wide array
            # counts that whole array). Enough for would_admit to turn most candidates down
            # before they are copied and measured (with copy=False a tensor the sample holds
            # twice counts twice here, once when measured: such a sample may be turned down
            # near the margin; it is still stored on disk).
            least = encoding.array_bytes + ENTRY_OVERHEAD
            with self._lock:
                fits = self._ram.would_admit(k, least, evict=evict)
        copied = fits and self._copy
        value: Value
        if self._copy:
            # The caller may change the sample once put returns: store and keep a snapshot.
            buffer = self._disk.buffer(encoding.size, keep=copied)
            value, kept = snapshot(encoding, sample, buffer, keep=copied)
        else:
            # The caller leaves the sample unchanged: the writer thread copies a large one,
            # off the training thread (docs/design.rst, "copy=False").
            value, kept = encoding, sample
        # Unless the writer needs it, the layout (numpy views of the sample's tensors) goes
        # before the write, not after: faster (docs/design.rst, "Buffer pool").
        copier = replicator(encoding.plan, encoding.array_bytes) if copied else None
        del encoding
        nbytes = sample_nbytes(kept) + ENTRY_OVERHEAD if fits else 0
        pending = self._node.before_put(k, value, stored=self._disk.contains)
        on_disk = self._disk.write(k, value, self._generation)
        in_node = self._node.after_put(k, pending, evict=evict, sample=None if self._copy else kept)
        counters = self._counters  # incremented inline: two calls less per put
        with self._lock:
            counters.values[PUTS] += 1
            if counters.watching:
                counters.publish()  # every counter: the disk tier's too (a put may be rejected)
            if admits:
                self._reads.put(k)  # only a process that admits has reads to overtake
                if fits:
                    return self._ram.admit(k, kept, nbytes, evict=evict, copier=copier) or on_disk
                # The private copy would be thrown away; an older value must go all the same.
                self._ram.discard(k)
        return on_disk or in_node

    def commit(self) -> None:
        """Make every put so far visible to other processes (committed, not synced).

        What :meth:`flush` does without waiting for the disk: a DataLoader worker calls it
        before handing out a batch it loaded, so that no sibling loads those samples again.
        """
        self._disk.commit()
        with self._lock:
            self._counters.publish()  # a failed commit counts write errors

    def flush(self) -> None:
        """Commit every queued write and sync the store to disk."""
        if not self._closed:
            self._disk.flush()
