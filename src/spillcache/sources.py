"""The data set a :class:`~spillcache.CachedDataset` wraps: what it must offer, and its identity.

A map-style data set (``dataset[i]`` and ``len(dataset)``); its default fingerprint, from its
class, its length and its own ``cache_fingerprint()``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

import torch.utils.data

__all__ = ["MapDataset", "check_dataset", "default_fingerprint"]


class MapDataset(Protocol):
    """What :class:`~spillcache.CachedDataset` needs of its data set."""

    def __getitem__(self, index: int) -> Any: ...

    def __len__(self) -> int: ...


def default_fingerprint(dataset: object) -> str:
    """A stable identity of ``dataset``: class, length and ``dataset.cache_fingerprint()``.

    Stable across processes and runs (unlike ``hash()``). Class and length cannot tell two
    subsets of the same size apart, which is why :class:`~spillcache.CachedDataset` also checks
    a few sample digests when no explicit fingerprint is given (:mod:`spillcache.probes`).

    Parameters
    ----------
    dataset : object
        A map-style data set; ``cache_fingerprint()``, if defined, should return a ``str`` that
        changes whenever its samples change (a file list digest, a config hash, a version).
    """
    cls = type(dataset)
    parts: list[object] = [f"{cls.__module__}.{cls.__qualname__}", len(dataset)]  # type: ignore[arg-type]
    custom = getattr(dataset, "cache_fingerprint", None)
    if callable(custom):
        parts.append(str(custom()))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def check_dataset(dataset: object) -> None:
    """Raise ``TypeError`` unless ``dataset`` is a map-style data set."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        raise TypeError(
            f"dataset ({type(dataset).__name__}) is an IterableDataset: CachedDataset "
            "supports only map-style data sets (dataset[i] and len(dataset)), because a cache "
            "looks samples up by index and an IterableDataset's samples have none; cache "
            "the map-style data set the stream reads from, or make one"
        )
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise TypeError(
            f"dataset must be a map-style data set (with __getitem__ and __len__), not "
            f"{type(dataset).__name__}"
        )
