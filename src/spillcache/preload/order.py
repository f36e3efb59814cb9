"""The order a preload follows: a sampler previewed without disturbing it.

A random sampler is previewed from a *copy* of its generator state, taken when the preload
starts, so that training drawing from the sampler afterwards gets exactly the previewed
permutation. Samplers whose iteration might have side effects are not iterated: they get a
warning and index order.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sized
from typing import Any, cast

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from ..userwarn import warn

__all__ = ["preview_order"]

# Samplers whose iteration draws only from ``self.generator``: a shallow copy holding a clone
# of that generator yields exactly what the original will.
_GENERATOR_SAMPLERS = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)
# Samplers whose iteration has no side effects at all.
_PURE_SAMPLERS = (SequentialSampler, DistributedSampler)


def preview_order(order: object, length: int) -> tuple[Iterator[object], int | None]:
    """The indices ``order`` will yield, obtained without changing what it will yield.

    Call it at the moment the preload starts: a random sampler's generator state is copied
    *now*, so training that draws from the sampler afterwards gets exactly the previewed
    permutation.

    Parameters
    ----------
    order : None, iterable of int, sampler or DataLoader
        ``None``: ``0 .. length - 1``. An iterable (list, range, array, ...) is iterated lazily,
        in the preload's thread. Samplers that can be previewed: ``SequentialSampler``,
        ``DistributedSampler`` (its order depends only on seed and epoch: call ``set_epoch``
        first), ``RandomSampler``, ``SubsetRandomSampler`` and ``WeightedRandomSampler`` with an
        explicit ``generator``, and a ``BatchSampler`` of any of them. A ``DataLoader`` is
        previewed through its batch sampler (or sampler), for the next iterator it creates
        (a ``DataLoader`` with ``persistent_workers=True`` matches only in its first epoch).
        Any other sampler cannot be previewed without risking a side effect: it gets a
        warning and ``0 .. length - 1``.
    length : int
        Length of the data set.

    Returns
    -------
    indices : iterator
        The indices (not yet checked: the preload counts invalid ones as errors).
    total : int or None
        How many indices there are, when known.

    Raises
    ------
    TypeError
        If ``order`` is neither ``None``, an iterable, a sampler nor a ``DataLoader``.
    """
    if order is None:
        return iter(range(length)), length
    if isinstance(order, DataLoader):
        indices, total, advice = _preview_loader(order)
    elif isinstance(order, Sampler):
        indices, total, advice = _preview_sampler(order, None)
    elif isinstance(order, (str, bytes)) or not isinstance(order, Iterable):
        raise TypeError(
            f"order must be None, an iterable of indices, a sampler or a DataLoader, not "
            f"{type(order).__name__}"
        )
    else:
        return iter(order), len(order) if isinstance(order, Sized) else None
    if indices is None:
        warn(
            f"the preload cannot follow this sampler's order: {advice}; preloading in index "
            f"order 0..{length - 1} instead",
            UserWarning,
        )
        return iter(range(length)), length
    return indices, total


_Preview = tuple[Iterator[object] | None, int | None, str]


def _preview_loader(loader: DataLoader[Any]) -> _Preview:
    # With batching the loader draws from its batch sampler alone: given as
    # ``batch_sampler=``, it leaves ``loader.sampler`` an unused SequentialSampler.
    drawn = loader.sampler if loader.batch_sampler is None else loader.batch_sampler
    sampler = cast(Sampler[Any], drawn)
    inner = sampler.sampler if type(sampler) is BatchSampler else sampler
    shared = (
        loader.generator is not None
        and type(inner) in _GENERATOR_SAMPLERS
        and getattr(inner, "generator", None) is loader.generator
    )
    if not shared:
        return _preview_sampler(sampler, None)
    # A new DataLoader iterator draws its workers' base seed from ``loader.generator`` before
    # the sampler's first draw from the same generator (``DataLoader(shuffle=True,
    # generator=g)``): replay that draw on the copy.
    generator = _clone_generator(loader.generator)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return _preview_sampler(sampler, generator)


def _preview_sampler(sampler: Sampler[Any], generator: torch.Generator | None) -> _Preview:
    """``(indices, total, "")``, or ``(None, None, advice)`` if it cannot be previewed."""
    kind = type(sampler)
    if kind is BatchSampler:
        # The batches hold the inner sampler's indices in its order (a dropped last batch
        # is merely preloaded for nothing).
        return _preview_sampler(sampler.sampler, generator)  # type: ignore[attr-defined]
    total = len(sampler) if isinstance(sampler, Sized) else None
    if kind in _PURE_SAMPLERS:
        return iter(sampler), total, ""
    if kind in _GENERATOR_SAMPLERS:
        own = getattr(sampler, "generator", None)
        if own is not None:
            twin = copy.copy(sampler)
            twin.generator = generator if generator is not None else _clone_generator(own)  # type: ignore[attr-defined]
            return iter(twin), total, ""
        return (
            None,
            None,
            f"the {kind.__name__} has no generator, so its order is drawn from torch's global "
            f"random state when training iterates it and cannot be known in advance; give it "
            f"one: {kind.__name__}(..., generator=torch.Generator().manual_seed(seed)), or "
            f"DataLoader(..., shuffle=True, generator=torch.Generator().manual_seed(seed))",
        )
    return (
        None,
        None,
        f"spillcache cannot tell whether iterating a {kind.__name__} has side effects; pass "
        f"order= an iterable of the indices training will draw, or one of the samplers "
        f"spillcache can preview (SequentialSampler, DistributedSampler, or RandomSampler, "
        f"SubsetRandomSampler, WeightedRandomSampler with a generator)",
    )


def _clone_generator(generator: torch.Generator) -> torch.Generator:
    twin = torch.Generator(device=generator.device)
    twin.set_state(generator.get_state())
    return twin
