"""Synthetic, deterministic workloads shared by the benchmark sections.

Samples look like Hyrax's: a dict of a dict of tensors plus metadata. Scalars are Python
``int``/``float`` (not numpy scalars) so that every contender can store the same samples: MONAI's
``torch.load(weights_only=True)`` rejects numpy scalars since torch 2.6.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Sample = dict[str, Any]


@dataclass(frozen=True)
class Workload:
    """A family of samples: ``make(i)`` builds sample ``i``; ``n`` of them form the data set."""

    name: str
    label: str
    image_shape: tuple[int, ...]
    mask_shape: tuple[int, ...]
    n: int

    def make(self, i: int) -> Sample:
        rng = np.random.default_rng(i)
        flux = rng.random(self.image_shape, dtype=np.float32)
        mask = flux[0] > 0.1 if len(self.image_shape) == 3 else flux > 0.1
        return {
            "image": {
                "flux": torch.from_numpy(flux),
                "mask": torch.from_numpy(np.ascontiguousarray(mask.reshape(self.mask_shape))),
            },
            "object_id": f"{i:012d}",
            "label": i % 10,
            "redshift": 0.01 * (i % 300),
        }

    @property
    def payload_bytes(self) -> int:
        """Tensor bytes of one sample (what GB/s figures count)."""
        return 4 * int(np.prod(self.image_shape)) + int(np.prod(self.mask_shape))

    def sized(self, n: int) -> Workload:
        return Workload(self.name, self.label, self.image_shape, self.mask_shape, n)


CUTOUT = Workload("1mib", "1 MiB cut-outs", (4, 256, 256), (256, 256), 400)
SMALL = Workload("4kib", "4 KiB samples", (1, 32, 32), (32, 32), 20_000)
WORKLOADS = (CUTOUT, SMALL)


def quick(workload: Workload) -> Workload:
    """A tiny version of a workload for the smoke test."""
    return workload.sized(12 if workload is CUTOUT else 300)


def tree_clone(x: Any) -> Any:
    """Deep copy with one ``clone()`` per tensor and nothing else: the RAM-tier floor."""
    if type(x) is dict:
        return {k: tree_clone(v) for k, v in x.items()}
    if type(x) is torch.Tensor:
        return x.clone()
    return x


def numpy_tree_copy(x: Any) -> Any:
    """Deep copy with one numpy copy per tensor (single-threaded, unlike a large ``clone()``)."""
    if type(x) is dict:
        return {k: numpy_tree_copy(v) for k, v in x.items()}
    if type(x) is torch.Tensor:
        return torch.from_numpy(x.numpy().copy())
    return x


def tensors(x: Any) -> list[torch.Tensor]:
    """Tensors of a sample, depth first."""
    if type(x) is dict:
        return [t for v in x.values() for t in tensors(v)]
    return [x] if type(x) is torch.Tensor else []


def tensor_bytes(x: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors(x))


class TimedSource(torch.utils.data.Dataset[Sample]):
    """A source whose every load costs ``seconds`` (building the sample included, then a sleep).

    The sleep stands for I/O: it releases the GIL like a read from a file system would.
    """

    def __init__(self, workload: Workload, seconds: float) -> None:
        self.workload = workload
        self.seconds = seconds
        self.template = [workload.make(i) for i in range(min(workload.n, 8))]

    def __len__(self) -> int:
        return self.workload.n

    def __getitem__(self, i: int) -> Sample:
        start = time.perf_counter()
        sample = numpy_tree_copy(self.template[i % len(self.template)])
        sample["object_id"] = f"{i:012d}"
        rest = self.seconds - (time.perf_counter() - start)
        if rest > 0:
            time.sleep(rest)
        return sample


def monai_transform(make: Callable[[int], Sample]) -> Any:
    """A MONAI ``Transform`` building sample ``item["i"]``: MONAI caches only transform outputs."""
    from monai.transforms import Transform

    class MakeSample(Transform):  # type: ignore[misc]
        def __call__(self, item: dict[str, int]) -> Sample:
            return make(item["i"])

    return MakeSample()


def monai_identity_random() -> Any:
    """A random (no-op) MONAI transform: placed after the cache, it makes CacheDataset copy."""
    from monai.transforms import RandomizableTransform

    class Augment(RandomizableTransform):  # type: ignore[misc]
        def __call__(self, data: Sample) -> Sample:
            self.randomize(None)
            return data

    return Augment(prob=1.0)
