"""A put's snapshot: the value to store, and the copy the RAM tier keeps, from one encoding."""

from __future__ import annotations

from typing import Any

from .copying import clone
from .decoding import view
from .encoding import Buffer, Encoding, Unsealed

__all__ = ["snapshot"]


def snapshot(
    encoding: Encoding, sample: Any, buffer: Buffer | None, *, keep: bool
) -> tuple[bytes | Unsealed, Any]:
    """The sealed or deferred value of ``encoding``, and ``sample``'s copy for the RAM tier.

    Parameters
    ----------
    encoding : Encoding
        The encoding of ``sample``.
    sample : object
        The sample put; the caller may change it once this returns.
    buffer : Buffer or None
        A buffer of at least ``encoding.size`` bytes from the disk tier's pool, or None (a
        small value: it is sealed into new bytes).
    keep : bool
        Whether the RAM tier keeps a copy. With a buffer the copy is views of the value in it:
        one copy of a large sample, not two.

    Returns
    -------
    (value, kept)
        ``value`` for the disk tier's ``write``; ``kept`` the RAM tier's copy, or ``sample``
        itself when ``keep`` is false. Both must be taken before the write: from then on the
        writer may recycle a buffer nothing views.
    """
    shared = None if buffer is None else encoding.into(buffer)
    value = encoding.to_bytes() if shared is None else Unsealed(shared)
    if not keep:
        return value, sample
    return value, clone(sample) if shared is None else view(shared)
