"""Copies of samples as the RAM tier keeps them: :func:`clone` (checked) and :func:`replicate`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import numpy as np
import torch

from .builders import ARRAY, Op
from .format import MAX_DEPTH
from .rules import (
    IMMUTABLE,
    TORCH_TYPES,
    Array,
    PathError,
    array_head,
    as_base,
    dense,
    key_token,
    too_deep,
    torch_type,
    unsupported,
)

if TYPE_CHECKING:
    from .plan import Plan

__all__ = [
    "PARALLEL_NUMEL",
    "clone",
    "copy_plain_tensor",
    "replicate",
    "replicate_built",
    "replicate_tensor",
]

_T = TypeVar("_T")


def clone(sample: _T) -> _T:
    """Deep-copy a sample as the RAM tier keeps it.

    Containers are rebuilt, every tensor and array is copied once (contiguous, writable,
    detached, native byte order, as :func:`decode` would return it; a tensor that requires grad
    becomes a leaf that requires grad) and immutable leaves are shared.

    Parameters
    ----------
    sample : object
        Nested dict/list/tuple of supported leaves.

    Returns
    -------
    object
        The copy, of the same type as ``sample``.

    Raises
    ------
    TypeError, ValueError
        As :func:`encode` does for the same sample.
    """
    try:
        return cast(_T, _clone(sample, 0))
    except PathError as exc:
        raise exc.located("clone") from None


def _clone(x: Any, depth: int) -> Any:
    kind = type(x)
    copier = _COPIERS.get(kind)
    if copier is None and kind is not dict and kind is not list and kind is not tuple:
        x = as_base(x)
        copier = _COPIERS.get(type(x))
        if copier is None:
            raise unsupported(x)
    if copier is not None:
        return copier(x)
    if depth >= MAX_DEPTH:
        raise too_deep()
    is_dict = kind is dict
    # Lists and tuples are gathered by index too: one loop for all three container types.
    copies = {}
    for key, value in x.items() if is_dict else enumerate(x):
        if is_dict:
            key = _checked_key(key)  # noqa: PLW2901 (the copy's key is of the base type)
        if type(value) in IMMUTABLE:
            copies[key] = value
            continue
        try:
            copies[key] = _clone(value, depth + 1)
        except PathError as exc:
            exc.path.append(f"[{key!r}]")
            raise
    if is_dict:
        return copies
    return list(copies.values()) if kind is list else tuple(copies.values())


def _checked_key(key: object) -> object:
    """A dict key as the copy keeps it (of its base type), refusing unsupported keys."""
    key_token(key)
    return key if type(key) is str or type(key) is int else as_base(key)


def _copy_tensor(t: torch.Tensor) -> torch.Tensor:
    torch_type(t)
    copied = copy_plain_tensor(dense(t))
    return copied.requires_grad_() if t.requires_grad else copied


# torch copies tensors of this many elements or more with its intra-op thread pool, whose
# barrier stalls when the cores are busy: numpy copies those in the calling thread (see
# docs/design.rst, "The codec's costs").
PARALLEL_NUMEL: Final = 32768


def copy_plain_tensor(t: torch.Tensor) -> torch.Tensor:
    """Copy a dense, detached CPU tensor of a supported dtype into fresh C-ordered memory."""
    if t.numel() < PARALLEL_NUMEL:
        # Faster than clone(memory_format=torch.contiguous_format), which does the same.
        return t.clone() if t.is_contiguous() else t.contiguous()
    carrier = TORCH_TYPES[t.dtype].carrier
    if carrier is None:
        return torch.from_numpy(t.numpy().copy())
    return torch.from_numpy(t.view(carrier).numpy().copy()).view(t.dtype)


def _copy_array(a: Array) -> Array:
    stored, _ = array_head(a.dtype)
    if a.dtype.byteorder == ">" or isinstance(a, np.memmap):
        return a.astype(stored, order="C", subok=False)
    copied: Array = a.copy()  # C order; twice as fast as astype or np.copy
    return copied


def _share(x: object) -> object:
    return x


_COPIERS: Final[dict[type[Any], Callable[[Any], object]]] = {
    torch.Tensor: _copy_tensor,
    np.ndarray: _copy_array,
    np.memmap: _copy_array,
    **dict.fromkeys(IMMUTABLE, _share),
}


def replicate(sample: _T) -> _T:
    """Copy a sample that :func:`decode` or :func:`clone` returned, without checking it again.

    The RAM tier's copy on every hit: :func:`clone` validates and normalizes arbitrary user
    samples, work that samples made by this module do not need.

    Parameters
    ----------
    sample : object
        A sample returned by :func:`decode` or :func:`clone` (or a copy made by this function).

    Returns
    -------
    object
        The copy: containers rebuilt, every tensor and array copied, immutable leaves shared.
    """
    return cast(_T, _replicate(sample))


def _replicate(x: Any) -> Any:
    kind = type(x)
    if kind is dict:
        # Immutable leaves are shared without a call: most keys of a sample hold one.
        return {k: v if type(v) in IMMUTABLE else _replicate(v) for k, v in x.items()}
    if kind is torch.Tensor:
        if x.requires_grad:  # a clone would be a non-leaf with the original in its history
            return copy_plain_tensor(x.detach()).requires_grad_()
        # Samples made here are contiguous: clone() keeps them so.
        return x.clone() if x.numel() < PARALLEL_NUMEL else copy_plain_tensor(x)
    if kind is np.ndarray:
        return x.copy()
    if kind is list:
        return [v if type(v) in IMMUTABLE else _replicate(v) for v in x]
    if kind is tuple:
        return tuple([v if type(v) in IMMUTABLE else _replicate(v) for v in x])
    return x


def replicate_built(plan: Plan, nums: tuple[Any, ...], leaves: Sequence[object]) -> object:
    """Copy a sample its ``plan`` just built from ``nums`` and ``leaves``, as :func:`replicate`.

    The plan's container makers rebuild the structure around copies of its tensors and arrays
    (the other leaves are shared): no walk of the sample, no look at its types.
    """
    copiers = plan.copiers
    if copiers is None:
        copiers = plan.copiers = tuple(map(_leaf_copier, plan.ops))
    vals: list[object] = [*nums, None]
    vals += [copy(leaf) for copy, leaf in zip(copiers, leaves, strict=True)]
    for make in plan.makers:
        vals.append(make(vals))
    return vals[plan.root]


def _leaf_copier(op: Op) -> Callable[[Any], object]:
    """How :func:`replicate_built` copies the leaf of ``op``."""
    if op.kind != ARRAY:  # numpy scalars, str, bytes and big ints are immutable
        return _share
    return np.ndarray.copy if op.convert is None else replicate_tensor


def replicate_tensor(x: torch.Tensor) -> torch.Tensor:
    """Copy a contiguous tensor as :func:`replicate` does."""
    if x.requires_grad:  # a clone would be a non-leaf with the original in its history
        return copy_plain_tensor(x.detach()).requires_grad_()
    return x.clone() if x.numel() < PARALLEL_NUMEL else copy_plain_tensor(x)
