"""Sample indices: what counts as an integer index, the same in every entry point."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_index", "in_range"]


def as_index(index: object, what: str) -> int:
    """``index`` as a Python int: an int, a numpy integer or a 0-d integer tensor.

    Parameters
    ----------
    index : object
        The index given.
    what : str
        Who takes it, for the message (``"CachedDataset"``).

    Raises
    ------
    TypeError
        For anything else: ``bool`` (``ds[True]`` is not sample 1), floats, strings, and
        tensors of a non-integer dtype or with dimensions (``torch.tensor([4])``).
    """
    if type(index) is int:
        return index
    if isinstance(index, np.integer):
        return int(index)
    if isinstance(index, torch.Tensor):
        if index.ndim == 0 and not (
            index.is_floating_point() or index.is_complex() or index.dtype is torch.bool
        ):
            return int(index.item())
    elif isinstance(index, int) and not isinstance(index, bool):
        return int(index)
    raise TypeError(
        f"{what} indices must be integers (int, numpy integer or 0-d integer tensor), not "
        f"{_describe(index)}"
    )


def in_range(index: int, length: int, given: object, *, negative: bool = True) -> int:
    """``index`` in ``[0, length)``, counting from the end when negative (if ``negative``).

    Raises
    ------
    IndexError
        Naming the index given and the length.
    """
    i = index + length if negative and index < 0 else index
    if not 0 <= i < length:
        raise IndexError(f"index {given} is out of range for a data set of length {length}")
    return i


def _describe(index: object) -> str:
    if isinstance(index, torch.Tensor):
        return f"a tensor of shape {tuple(index.shape)} and dtype {index.dtype}"
    return type(index).__name__
