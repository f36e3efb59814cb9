"""Shared test helpers (importable as ``from helpers import ...`` from any test file)."""

from __future__ import annotations

import socket
import struct
from typing import Any

import numpy as np
import torch


def assert_sample_equal(actual: Any, expected: Any, path: str = "sample") -> None:
    """Assert two samples are equal exactly: structure, container, key and leaf types, dtypes,
    shapes and values, bit for bit (NaN payloads and signed zeros included).

    Tensor ``requires_grad``, memory layout and ownership are not compared.
    """
    assert type(actual) is type(expected), f"{path}: {type(actual)} != {type(expected)}"
    if isinstance(expected, dict):
        # Types too: 1, 1.0 and True are equal keys but different samples.
        assert [(type(k), k) for k in actual] == [(type(k), k) for k in expected], (
            f"{path}: keys {list(actual)} != {list(expected)}"
        )
        for key in expected:
            assert_sample_equal(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_sample_equal(a, e, f"{path}[{i}]")
    elif isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype, f"{path}: {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{path}: {actual.shape} != {expected.shape}"
        assert actual.device == expected.device, f"{path}: {actual.device} != {expected.device}"
        assert torch.equal(_tensor_bits(actual), _tensor_bits(expected)), f"{path}: values differ"
    elif isinstance(expected, (np.ndarray, np.generic)):
        assert actual.dtype == expected.dtype, f"{path}: {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{path}: {actual.shape} != {expected.shape}"
        assert _array_bits(actual) == _array_bits(expected), (
            f"{path}: values differ: {actual!r} != {expected!r}"
        )
    elif isinstance(expected, float):
        assert struct.pack("<d", actual) == struct.pack("<d", expected), (
            f"{path}: {actual!r} != {expected!r} (bitwise)"
        )
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def _tensor_bits(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().resolve_conj().resolve_neg().contiguous().reshape(-1)
    # A dtype view needs a unit stride, which empty tensors may lack.
    return flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)


def _array_bits(a: np.ndarray | np.generic) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def hyrax_loop(cache: Any, provider: Any, idx: int) -> Any:
    """What Hyrax's DataProvider does around its ``DataCache``: fetch, else resolve and insert."""
    data = cache.try_fetch(idx)
    if data is None:
        data = provider.resolve_data(idx)
        cache.insert_into_cache(idx, data)
    return data


def spy(monkeypatch: Any, owner: object, name: str) -> list[Any]:
    """Record the first argument of every call of ``owner.name``, which still runs."""
    calls: list[Any] = []
    real = getattr(owner, name)

    def recording(first: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(first)
        return real(first, *args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return calls


def free_port() -> int:
    """A TCP port free on localhost now (for a gloo process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
