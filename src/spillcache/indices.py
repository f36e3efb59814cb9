"""Sample indices and cache keys: what counts as an integer, the same in every entry point."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MAX_KEY", "check_index", "check_key"]

#: The largest cache key a store can hold (keys are 8-byte unsigned integers).
MAX_KEY = (1 << 64) - 1


def check_index(
    index: object,
    length: int,
    what: str,
    *,
    negative: bool = True,
    type_error: type[TypeError] = TypeError,
) -> int:
    """``index`` as an int in ``[0, length)``: the index check of every entry point.

    Parameters
    ----------
    index : object
        The index given: an int, a numpy integer or a 0-d integer tensor.
    length : int
        Length of the data set.
    what : str
        Who takes it, for the message (``"CachedDataset"``).
    negative : bool
        Count negative indices from the end (``ds[-1]``); ``False``: they are out of range.
    type_error : type
        What to raise for a non-integer (:class:`~spillcache.errors.HyraxIndexError` for Hyrax).

    Raises
    ------
    TypeError
        (``type_error``) For anything else: ``bool`` (``ds[True]`` is not sample 1), floats,
        strings, and tensors of a non-integer dtype or with dimensions (``torch.tensor([4])``).
    IndexError
        Naming the index given and the length.
    """
    i = index if type(index) is int else _integer(index)
    if i is None:
        raise type_error(
            f"{what} indices must be integers (int, numpy integer or 0-d integer tensor), not "
            f"{_describe(index)}"
        )
    if negative and i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError(f"index {index} is out of range for a data set of length {length}")
    return i


def check_key(key: object) -> int:
    """``key`` as a Python int, or raise for keys a store cannot hold.

    Parameters
    ----------
    key : int, numpy integer or 0-d integer tensor
        Non-negative and below 2**64.

    Raises
    ------
    TypeError
        For any other type (floats, strings, bools, tensors with more than one element, ...).
    ValueError
        For negative keys or keys of 2**64 and more.
    """
    k = key if type(key) is int else _integer(key)
    if k is None:
        raise TypeError(
            f"cache keys must be non-negative integers (int, numpy integer or 0-d integer "
            f"tensor), not {type(key).__name__}"
        )
    if not 0 <= k <= MAX_KEY:
        raise ValueError(f"cache keys must be in [0, 2**64), got {k}")
    return k


def _integer(value: object) -> int | None:
    """``value`` as a Python int if it is an integer (not a bool), else None."""
    if type(value) is int:
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, torch.Tensor):
        if value.ndim == 0 and not (
            value.is_floating_point() or value.is_complex() or value.dtype is torch.bool
        ):
            return int(value.item())
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return None


def _describe(index: object) -> str:
    if isinstance(index, torch.Tensor):
        return f"a tensor of shape {tuple(index.shape)} and dtype {index.dtype}"
    return type(index).__name__
