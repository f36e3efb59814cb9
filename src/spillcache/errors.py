"""Exceptions raised by spillcache."""

from __future__ import annotations

__all__ = ["CodecError", "FingerprintMismatch", "StoreError"]


class FingerprintMismatch(RuntimeError):
    """A store holds data for another data set (or another store format).

    Raised when a store is opened with ``on_mismatch="error"`` and the fingerprint or format
    version recorded in it differs from the one asked for.

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


class StoreError(RuntimeError):
    """A directory cannot be used as a store (not a spillcache store, damaged, or unsuitable)."""


class CodecError(ValueError):
    """An encoded value is invalid (corrupt, truncated, foreign or of another format).

    Internal: the cache turns it into a miss, a warning and a ``corrupt`` count.
    """
