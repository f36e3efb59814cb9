"""Every exception and warning spillcache raises or issues.

:class:`StoreError` and its subclass :class:`FingerprintMismatch` are about a store directory;
:class:`NondeterministicDataError` about the wrapped data set; :class:`HyraxIndexError` about an
index given to a Hyrax ``DataCache``; :class:`CodecError` (internal) about one stored value;
:class:`SpillCacheWarning` about a storage fault survived.
"""

from __future__ import annotations

__all__ = [
    "CodecError",
    "FingerprintMismatch",
    "HyraxIndexError",
    "NodeTierWarning",
    "NondeterministicDataError",
    "SpillCacheWarning",
    "StoreError",
]


class StoreError(RuntimeError):
    """A directory cannot be used as a store (not a spillcache store, damaged, or unsuitable)."""


class FingerprintMismatch(StoreError):
    """A store holds data for another data set (or another store format).

    Raised when a store is opened with ``on_mismatch="error"`` and the fingerprint or format
    version recorded in it differs from the one asked for. A :class:`StoreError` (the store
    cannot be used as asked), so ``except StoreError`` handles it too.

    Parameters
    ----------
    path : str
        Directory of the store.
    stored : str
        What the store records.
    expected : str
        What the caller asked for.
    message : str or None
        The whole message, when the default wording (for fingerprints) does not fit.
    """

    def __init__(
        self, path: str, stored: str, expected: str, *, message: str | None = None
    ) -> None:
        self.path = path
        self.stored = stored
        self.expected = expected
        super().__init__(
            message
            or f"the store at {path!r} was built for {stored!r}, not {expected!r}; "
            "open it with on_mismatch='rebuild' to empty and refill it, pass the matching "
            "fingerprint, or clear it with `spillcache clear PATH`"
        )


class NondeterministicDataError(RuntimeError):
    """The wrapped data set returned different samples for the same index.

    A cache can only serve data sets whose ``dataset[i]`` is the same every time: random
    augmentation belongs in ``CachedDataset(..., transform=...)``, which runs after the cache.
    """


class HyraxIndexError(TypeError, RuntimeError):
    """A non-integer index given to :class:`~spillcache.DataCache`.

    A ``TypeError`` like everywhere else in spillcache, and a ``RuntimeError`` because that is
    what Hyrax's ``DataCache`` raised, so that code written for Hyrax keeps working.
    """


class CodecError(ValueError):
    """An encoded value is invalid (corrupt, truncated, foreign or of another format).

    Internal: the cache turns it into a miss, a warning and a ``corrupt`` count.
    """


class SpillCacheWarning(RuntimeWarning):
    """A storage fault that spillcache survived (corrupt entry, full disk, rebuilt store)."""


class NodeTierWarning(SpillCacheWarning):
    """The node RAM tier is smaller than asked, or off (training goes on without it)."""
