"""The sample probes: a few sample digests that tell data sets of one class and length apart.

A :class:`~spillcache.CachedDataset` opened without an explicit fingerprint is identified by its
data set's class and length (:func:`~spillcache.dataset.default_fingerprint`), which two subsets
of one size share. So it also digests a few samples spread over the index range and records the
digests in the store's meta. On reopening they are loaded and digested again: a changed sample
empties the store (or raises, with ``on_mismatch="error"``), a probe that cannot be loaded at all
serves the store unchecked with a warning, and a sample that loads differently twice raises.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .cache import SpillCache
from .codec import digest, encode
from .errors import FingerprintMismatch, NondeterministicDataError, SpillCacheWarning
from .settings import OnMismatch
from .userwarn import warn

__all__ = ["SampleProbes", "probe_digest"]

_PROBES_META = "probes"


@dataclasses.dataclass(frozen=True)
class SampleProbes:
    """The probes of one data set in one store.

    Parameters
    ----------
    cache : SpillCache
        The store: the digests are its meta record ``"probes"``, the probed samples its entries.
    load : callable
        ``load(i)``: sample ``i`` of the data set (``None`` refused).
    name : str
        What messages call the data set (its class name).
    length : int
        The data set's length (a recorded probe at or past it counts as changed).
    on_mismatch : {"rebuild", "error"}
        What a changed or unloadable probe does, as for :class:`~spillcache.SpillCache`.
    """

    cache: SpillCache
    load: Callable[[int], Any]
    name: str
    length: int
    on_mismatch: OnMismatch

    def check(self, count: int) -> int:
        """Check the recorded probes, or record ``count`` new ones; the probe errors (0 or 1).

        Raises
        ------
        FingerprintMismatch
            With ``on_mismatch="error"``, when a probe changed or could not be loaded.
        NondeterministicDataError
            When a probed index loads differently twice.
        """
        recorded = self.cache.get_meta(_PROBES_META)
        if recorded is not None:
            stored = {int(k): v for k, v in json.loads(recorded).items()}
            changed = self._changed(stored)
            if changed is None:
                return 1  # served unchecked
            if not changed:
                return 0
            self._mismatch(stored, changed)
        self._record(_probe_indices(self.length, count))
        return 0

    def _changed(self, stored: dict[int, str]) -> list[int] | None:
        """The probes whose digest changed; ``None`` if one could not be loaded (warned)."""
        changed = []
        for i, recorded_digest in stored.items():
            try:
                found = self._probe(i, recorded_digest)
            except NondeterministicDataError:
                raise
            except Exception as exc:
                # The source is down: the store cannot be checked, but it may well be right.
                self._unchecked(i, exc)
                return None
            if found != recorded_digest:
                changed.append(i)
        return changed

    def _mismatch(self, stored: dict[int, str], changed: list[int]) -> None:
        """Empty the store filled with other data; or raise, if asked to."""
        which = (
            f"sample {changed[0]} of {self.name} differs"
            if len(changed) == 1
            else (f"samples {changed} of {self.name} differ")
        )
        reason = f"{which} from what this store was filled with (the data changed)"
        if self.on_mismatch == "error":
            path = str(self.cache.path)
            raise FingerprintMismatch(
                path,
                f"sample digests {stored}",
                reason,
                message=(
                    f"the store at {path!r} was filled with other data: {reason}; open it "
                    "with on_mismatch='rebuild' to empty and refill it, or clear it with "
                    f"`spillcache clear {path}`"
                ),
            )
        self.cache.reset(reason)

    def _record(self, indices: Sequence[int]) -> None:
        """Load, cache and digest the samples of ``indices``; record the digests."""
        digests = {}
        for i in indices:
            sample = self.load(i)
            self.cache.put(i, sample, name=f"dataset[{i}]")
            digests[str(i)] = probe_digest(sample)
        self.cache.set_meta(_PROBES_META, json.dumps(digests).encode())

    def _unchecked(self, index: int, exc: Exception) -> None:
        """Serve a store whose probe ``index`` could not be loaded; or raise, if asked to."""
        path = str(self.cache.path)
        failure = (
            f"the store at {path!r} could not be checked against its data set: loading probe "
            f"sample {self.name}[{index}] raised {type(exc).__name__}: {exc}"
        )
        if self.on_mismatch == "error":
            raise FingerprintMismatch(
                path,
                "sample digests",
                "unknown (a probe sample could not be loaded)",
                message=(
                    f"{failure}; with on_mismatch='error' an unchecked store is not served: pass "
                    "fingerprint=... to vouch for the data (no probe is loaded), or probes=0 to "
                    "skip this check"
                ),
            ) from exc
        warn(
            f"{failure}; serving the store as it is (counted in stats().probe_errors); pass "
            "fingerprint=... or probes=0 to skip this check, or on_mismatch='error' to refuse "
            "an unchecked store",
            SpillCacheWarning,
        )

    def _probe(self, index: int, recorded: str) -> str | None:
        """Digest of sample ``index`` (None past the end), loading twice if it differs."""
        if index >= self.length:
            return None
        first = probe_digest(self.load(index))
        if first == recorded:
            return first
        if probe_digest(self.load(index)) != first:
            raise NondeterministicDataError(
                f"{self.name}[{index}] returned different samples on two "
                "loads; a cache needs a deterministic data set: move random augmentation into "
                "CachedDataset(..., transform=...), which runs after the cache"
            )
        return first


def _probe_indices(n: int, count: int) -> list[int]:
    """``count`` indices spread over ``range(n)``, ends included."""
    if count == 1 or n == 1:
        return [0]
    return sorted({round(j * (n - 1) / (count - 1)) for j in range(min(count, n))})


def probe_digest(sample: object) -> str:
    """The digest of a probe sample, as stores made before tensors kept requires_grad hold it."""
    return digest(encode(_without_grad(sample)))


def _without_grad(x: object) -> object:
    # Only the flag: values whose tensors require grad are encoded differently since #14.
    if type(x) is torch.Tensor:
        return x.detach() if x.requires_grad else x
    if type(x) is dict:
        return {k: _without_grad(v) for k, v in x.items()}
    if type(x) is list:
        return [_without_grad(v) for v in x]
    if type(x) is tuple:
        return tuple(_without_grad(v) for v in x)
    return x
