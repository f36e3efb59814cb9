"""RAM tier: decoded samples under a byte budget, with frequency-aware admission."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Final

from .sketch import BUFFER, FrequencySketch

__all__ = ["Copier", "RamTier"]

Copier = Callable[[Any], Any]
"""What :meth:`RamTier.admit` may keep beside a value: how its caller copies it on a hit."""

_ABSENT: Final = (None, None)

# Sketch memory is capped at min(_SKETCH_CAP, _SKETCH_FLOOR + budget // _SKETCH_BUDGET_DIV):
# the policy's own memory stays a small share of the budget (2 % past a 1 MiB floor that any
# tier can afford), and never exceeds the 16 MiB that the sketch's widest rows can use.
_SKETCH_CAP = 16 << 20
_SKETCH_FLOOR = 1 << 20
_SKETCH_BUDGET_DIV = 50

# A candidate replaces a victim only if its estimated frequency exceeds the victim's by at
# least this much.  Under a uniform pass the candidate was just counted (k) while a resident
# that has not come up yet this epoch sits at k - 1.  Halving in mid-epoch adds one more: keys
# counted after it are one ahead of keys counted (and then halved) before it.  So equal-
# frequency data shows gaps of up to 2 (a margin of 2 lost 20 % of the hits in the epoch
# after a halving); at 3 the simulations showed no churn, and skewed keys still get in
# within their first hot epoch.
_MARGIN = 3
# Residents looked at per victim: the least frequent of a small random sample stands in for
# the true minimum at O(1) cost.  Every miss in a full tier with a warm candidate pays for
# the sample, and in the skew simulation 3 came within 0.02 of 5 (and 1 within 0.1) in every
# warm epoch.
_SAMPLE = 3


class RamTier:
    """Decoded samples in RAM under a byte budget, kept by a scan-resistant TinyLFU policy.

    Maps int keys (sparse, negative or past 64 bits is fine) to opaque values, kept
    and returned by reference, and accounts the size the caller states for each value.  Not
    thread-safe: the cache calls it under its own lock.

    Parameters
    ----------
    budget : int
        Byte budget for the resident values; 0 turns the tier off (nothing is stored and every
        call is a cheap no-op).

    Attributes
    ----------
    budget : int
        The byte budget.
    nbytes : int
        Sum of the stated sizes of the resident values, always ``<= budget``.

    Notes
    -----
    Every :meth:`get` records an access of its key, hit or miss, in a frequency sketch in the
    spirit of W-TinyLFU (Einziger, Friedman and Manes, "TinyLFU: a highly efficient cache
    admission policy"): a count-min sketch of 4 rows of 8-bit counters, all halved after 10
    recorded accesses per resident entry, so that counts measure *recent* frequency.  An access
    is appended to the sketch's read buffer and counted with up to 1,023 others at once, always
    before the sketch is read: every decision sees every access before it.
    :meth:`admit` then decides:

    * **Free space is always taken.**  The first epoch fills the tier with the first samples
      it sees, in whatever order.  ``admit(..., evict=False)`` (preload) only ever does this.
    * **A full tier admits a candidate only if it is clearly more frequent than its
      victims.**  A victim is the least frequent of 3 residents drawn at random (O(1), no
      ordering to maintain); the candidate must beat each victim it needs by at least 3
      counts, else it is dropped and the residents stay as they are.

    Consequences when the data set is larger than the budget:

    * **Sequential passes** (0..N-1 every epoch): LRU evicts every sample just before its
      next use and hits 0 %.  Here all samples are equally frequent, no candidate beats a
      resident, the first ``budget`` worth of samples stays, and every later epoch hits
      ``budget / data``, the best any policy can do on a cyclic scan.
    * **Shuffled passes**: the same; one resident set is as good as another, so it stays.
      The margin matters here: a candidate already counted this epoch leads a resident not
      yet drawn this epoch by 1, and by 2 in the epoch after a halving (keys counted after
      it are one ahead of keys halved).  Swapping on such a lead trades a sample that is
      about to be hit for one that will not return this epoch.
    * **Skewed reuse** (weighted sampling, oversampled classes, curricula): samples drawn
      more often than the coldest residents build up counts within their first epoch or
      two, displace those residents, and are then protected by their own counts.  With 20 %
      of the samples drawing 80 % of the accesses and a budget of a third of the data, warm
      epochs hit about 2.5 times ``budget / data`` (keeping what came first: 1.0 times).
    * **Drift**: halving erodes the counts of a hot set that is no longer drawn, so a new
      hot set takes over within a few epochs.

    Evicted are thus the least frequent residents of a small sample; a value larger than the
    whole budget is never admitted.  The policy's own memory is the sketch: 32-64 bytes per
    resident entry, sized at the first admission for the entries the budget will hold at
    that mean size, capped at ``min(16 MiB, 1 MiB + budget / 50)``, and independent of how
    many distinct keys go by (keys are hashed, never stored).  With more entries than the cap
    can track, the sketch ages faster, so admission falls back towards "keep what is
    resident", which never thrashes.  Each resident also costs 208-257 bytes of dict and list
    slots; :class:`~spillcache.SpillCache` adds ``footprint.ENTRY_OVERHEAD`` to every size it
    states, so its ``nbytes`` includes them.
    """

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError(f"budget must be >= 0 bytes, got {budget}")
        self.budget = budget
        self.nbytes = 0
        self._values: dict[int, object] = {}
        # Residents in arbitrary order with their sizes, so a random victim sample is O(1);
        # ``_slot`` maps a key to its index so removal is a swap with the last entry.
        self._keys: list[int] = []
        self._sizes: list[int] = []
        # The copier admitted with each resident (or None), in the order of ``_keys``: a list
        # slot per entry, not a dict entry or a tuple (ENTRY_OVERHEAD stays true).
        self._copiers: list[Copier | None] = []
        self._slot: dict[int, int] = {}
        self._sketch = self._new_sketch()
        # Fixed seed: the same access sequence always yields the same residents.
        self._random = random.Random(0x5EED).random

    def _new_sketch(self) -> FrequencySketch | None:
        if self.budget == 0:
            return None
        return FrequencySketch(min(_SKETCH_CAP, _SKETCH_FLOOR + self.budget // _SKETCH_BUDGET_DIV))

    @property
    def policy_nbytes(self) -> int:
        """Bytes held by the admission policy's frequency sketch (bounded, see class doc)."""
        return 0 if self._sketch is None else self._sketch.nbytes

    def get(self, key: int) -> object | None:
        """Return the value stored for ``key`` (not a copy), or None; records an access.

        Parameters
        ----------
        key : int
            Sample index.

        Returns
        -------
        object or None
            The resident value, or None if ``key`` is not resident.
        """
        sketch = self._sketch
        if sketch is None:
            return None
        sketch.record(key)
        return self._values.get(key)

    def lookup(self, key: int) -> tuple[object, Copier | None] | tuple[None, None]:
        """The value stored for ``key`` with its copier, or ``(None, None)``; records an access.

        As :meth:`get`, for a caller that copies what it gets: the copier is the one given to
        :meth:`admit` with the value (None if none was).

        Parameters
        ----------
        key : int
            Sample index.

        Returns
        -------
        tuple
            ``(value, copier)``, or ``(None, None)`` if ``key`` is not resident.
        """
        sketch = self._sketch
        if sketch is None:
            return _ABSENT
        # sketch.record inlined (a call is 1/30 of a 4 KiB hit): a hit hashes nothing.
        pending = sketch.pending
        try:
            pending.append(key)
        except OverflowError:  # below 0 or past 64 bits: counted now
            sketch.frequency(key, True)
        if len(pending) >= BUFFER:
            sketch.drain()
        slot = self._slot.get(key)
        if slot is None:
            return _ABSENT
        return self._values[key], self._copiers[slot]

    def peek(self, key: int) -> object | None:
        """Return the value stored for ``key`` (not a copy), or None, recording no access.

        For a second look that is not a request of its own (the access was recorded once).

        Parameters
        ----------
        key : int
            Sample index.
        """
        return self._values.get(key)

    def admit(
        self,
        key: int,
        value: object,
        nbytes: int,
        *,
        evict: bool = True,
        copier: Copier | None = None,
    ) -> bool:
        """Offer ``value`` for ``key``; it replaces any value already stored for ``key``.

        Does not record an access: call :meth:`get` for that.

        Parameters
        ----------
        key : int
            Sample index.
        value : object
            Value to keep (by reference).
        nbytes : int
            Size to account for ``value``.
        evict : bool
            If False, only take free space (preload fill); never evict another entry.
        copier : callable, optional
            Kept beside ``value`` for :meth:`lookup` (e.g. a replicator generated for the
            value's structure): the tier never calls it.

        Returns
        -------
        bool
            Whether ``key`` is resident afterwards.  False means any older value for ``key``
            is gone too, so a stale value never outlives a put.

        Raises
        ------
        ValueError
            If ``nbytes`` is negative.
        """
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        if key in self._slot:
            self._remove(key)
        # A tier that is off stores nothing, not even zero-byte values.
        if nbytes > self.budget or self._sketch is None:
            return False
        excess = self.nbytes + nbytes - self.budget
        if excess > 0 and not (evict and self._evict_for(key, excess)):
            return False
        self._slot[key] = len(self._keys)
        self._keys.append(key)
        self._sizes.append(nbytes)
        self._copiers.append(copier)
        self._values[key] = value
        self.nbytes += nbytes
        sketch = self._sketch
        if sketch is not None and len(self._keys) > sketch.capacity:
            # Entries expected once the budget is full, at the mean size seen so far.
            sketch.reserve(len(self._keys) * self.budget // max(self.nbytes, 1))
        return True

    def would_admit(self, key: int, nbytes: int, *, evict: bool = True) -> bool:
        """Whether :meth:`admit` may keep a value of ``nbytes`` for ``key``; changes nothing.

        ``False`` is certain: :meth:`admit` would decline, so the caller can skip building the
        value (a private copy of a sample costs as much as the rest of a put).  ``True`` means
        :meth:`admit` decides: free space is taken for sure, eviction depends on the victims.

        Parameters
        ----------
        key : int
            Sample index.
        nbytes : int
            Size the value would be accounted at.
        evict : bool
            As for :meth:`admit`.

        Returns
        -------
        bool
            False if the value cannot become resident.
        """
        sketch = self._sketch
        if nbytes > self.budget or sketch is None:
            return False
        slot = self._slot.get(key)
        replaced = 0 if slot is None else self._sizes[slot]
        if self.nbytes - replaced + nbytes <= self.budget:
            return True
        # Mirrors ``_evict_for``: a candidate below the margin cannot beat any victim.
        return evict and sketch.frequency(key, False) >= _MARGIN

    def may_take(self, key: int) -> bool:
        """Whether a value of unknown size for ``key`` is worth measuring for :meth:`admit`.

        Measuring a sample costs about as much as reading it from the store, so a full tier
        asks this before measuring what it read, rather than measure every disk hit in vain.
        True while free space of the mean entry's size remains. Otherwise the key must be
        at least the admission margin more frequent than one resident drawn at random: a
        pre-test of the one :meth:`admit` makes with the least frequent of three residents per
        victim, at a third of its cost; a key much more frequent than the residents,
        which is what admission is for, passes both. With samples of one size free space
        decides as in :meth:`would_admit`; with mixed sizes a cold sample smaller than the
        mean is not fitted into a gap, which leaves less than one mean entry of the budget idle.

        Parameters
        ----------
        key : int
            Sample index.
        """
        sketch = self._sketch
        if sketch is None:
            return False
        entries = len(self._keys)
        # Free space of at least the mean entry: (budget - nbytes) >= nbytes / entries.
        if (self.budget - self.nbytes) * entries >= self.nbytes:
            return True
        threshold = sketch.frequency(key, False) - _MARGIN
        return threshold >= 0 and self._weakest(sketch, threshold, entries, 1) >= 0

    def discard(self, key: int) -> None:
        """Remove ``key`` if it is resident.

        Parameters
        ----------
        key : int
            Sample index.
        """
        if key in self._slot:
            self._remove(key)

    def clear(self) -> None:
        """Remove every entry and forget the recorded access frequencies."""
        self._values.clear()
        self._keys.clear()
        self._sizes.clear()
        self._copiers.clear()
        self._slot.clear()
        self.nbytes = 0
        self._sketch = self._new_sketch()

    def keys(self) -> list[int]:
        """The resident keys, in arbitrary order."""
        return list(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._keys)

    def _swap(self, i: int, j: int) -> None:
        keys, sizes, copiers, slot = self._keys, self._sizes, self._copiers, self._slot
        ki, kj = keys[i], keys[j]
        keys[i], keys[j] = kj, ki
        sizes[i], sizes[j] = sizes[j], sizes[i]
        copiers[i], copiers[j] = copiers[j], copiers[i]
        slot[ki], slot[kj] = j, i

    def _remove(self, key: int) -> None:
        self._swap(self._slot[key], len(self._keys) - 1)
        self._keys.pop()
        self._copiers.pop()
        self.nbytes -= self._sizes.pop()
        del self._slot[key]
        del self._values[key]

    def _weakest(
        self, sketch: FrequencySketch, threshold: int, open_: int, draws: int = _SAMPLE
    ) -> int:
        """A victim for a candidate of frequency ``threshold + _MARGIN``, or -1.

        The index of the least frequent of ``draws`` residents drawn from ``keys[:open_]``,
        if its frequency is at most ``threshold``.
        """
        frequency, keys, rand = sketch.frequency, self._keys, self._random
        best, best_freq = -1, threshold + 1
        for _ in range(draws):
            i = int(rand() * open_)
            f = frequency(keys[i], False)
            if f < best_freq:
                best, best_freq = i, f
        return best

    def _evict_for(self, key: int, excess: int) -> bool:
        """Evict residents worth at least ``excess`` bytes if ``key`` beats each; else none."""
        sketch = self._sketch
        assert sketch is not None  # a tier with budget 0 admits nothing, so never gets here
        threshold = sketch.frequency(key, False) - _MARGIN
        if threshold < 0:
            return False
        keys, sizes = self._keys, self._sizes
        # Chosen victims are swapped behind ``open`` so they are not drawn twice; if the
        # candidate loses, the residents are merely reordered, and their order means nothing.
        # ``excess <= self.nbytes`` (the candidate fits the budget), so residents never run out.
        open_ = len(keys)
        freed = 0
        while freed < excess:
            best = self._weakest(sketch, threshold, open_)
            if best < 0:
                return False
            open_ -= 1
            self._swap(best, open_)
            freed += sizes[open_]
        for victim in keys[open_:]:
            del self._slot[victim]
            del self._values[victim]
        del keys[open_:]
        self.nbytes -= freed
        del sizes[open_:]
        del self._copiers[open_:]
        return True
