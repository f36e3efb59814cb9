"""A compiled structure spec: its table, its leaf ops, its container makers and its builders.

A plan starts with interpreted builders and swaps in generated ones once its spec comes up again.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from functools import partial
from operator import itemgetter
from typing import Any, Final

import xxhash

from .builders import COPY, SIZED, VIEW, Builder, Op, generate, interpret
from .footprint import Decoded, Footprint
from .format import ALIGN

__all__ = ["Node", "Plan"]

# A spec's decoder is generated when the spec comes up for its second decode: straight-line
# code is faster, but generating it costs what samples whose structure never repeats would pay
# in vain (docs/design.rst, "The codec's costs"). Specs with more nodes than this stay
# interpreted: the code would grow with them.
_GENERATE_AT_USE: Final = 2
_GENERATE_MAX_NODES: Final = 256

_Maker = Callable[[list[object]], object]

_Leaf = int | None
Node = _Leaf | tuple[bytes, "tuple[object, ...] | None", "list[Node]"]


class Plan:
    """What encoding and decoding need to know about one structure spec."""

    __slots__ = (
        "align",
        "build",
        "copiers",
        "data_start",
        "footprint",
        "makers",
        "nodes",
        "ops",
        "root",
        "sized_build",
        "table",
        "table_start",
        "tree",
        "uses",
        "view_build",
    )

    def __init__(
        self,
        table: struct.Struct,
        table_start: int,
        ops: tuple[Op, ...],
        tree: Node,
        nodes: int,
    ) -> None:
        self.table = table
        # Arrays' payloads start at multiples of this (64 in a value, 8 in a pack's record).
        self.align = ALIGN
        self.table_start = table_start
        self.data_start = table_start + table.size
        self.ops = ops
        self.tree = tree
        self.nodes = nodes
        self.makers, self.root = assemble(tree, len(table.format) - 1, len(ops))
        self.uses = 0
        # Made on first use by decode_sized and by Decoded.copy.
        self.footprint: Footprint | None = None
        self.copiers: tuple[Callable[[Any], object], ...] | None = None
        # What decode(), view() and decode_sized() call: interpreted until the spec has been
        # used twice.
        self.build: Builder = partial(self._count_and_interpret, COPY)
        self.view_build: Builder = partial(self._count_and_interpret, VIEW)
        self.sized_build: Builder = partial(self._count_and_interpret, SIZED)

    def _count_and_interpret(
        self, mode: int, value: Any, limit: int, hasher: xxhash.xxh3_64 | None
    ) -> Any:
        self.uses += 1
        if self.uses >= _GENERATE_AT_USE and self.nodes <= _GENERATE_MAX_NODES:
            setattr(self, _BUILDERS[mode], generate(self, mode))
        return interpret(self, value, limit, hasher, mode)

    def decoded(self, sample: object, nums: tuple[Any, ...], leaves: Sequence[object]) -> Decoded:
        """The :class:`~.footprint.Decoded` of a sample built with ``nums`` and ``leaves``."""
        footprint = self.footprint
        if footprint is None:
            footprint = self.footprint = Footprint(self)
        return Decoded(sample, footprint.nbytes(sample, nums, leaves), self, nums, leaves)


_BUILDERS: Final = {COPY: "build", VIEW: "view_build", SIZED: "sized_build"}


def assemble(root: Node, n_slots: int, n_ops: int) -> tuple[tuple[_Maker, ...], int]:
    """Return the container makers in build order and the index of the sample in vals."""
    # vals holds the table slots, None, the payload leaves, then the containers.
    n_leaves = n_slots + 1 + n_ops
    makers: list[_Maker] = []

    def place(node: Node) -> int:
        if node is None:
            return n_slots
        if isinstance(node, int):
            return node if node >= 0 else n_slots + 1 + ~node
        tag, keys, children = node
        makers.append(maker(tag, keys, [place(child) for child in children]))
        return n_leaves + len(makers) - 1

    root_index = place(root)
    return tuple(makers), root_index


def maker(tag: bytes, keys: tuple[object, ...] | None, indices: list[int]) -> _Maker:
    """Return a function building one container from the values at ``indices`` in vals."""
    # The fastest ways on CPython 3.11 (docs/design.rst, "The codec's costs"): a plain loop
    # for dicts, itemgetter to gather sequences.
    if keys is not None:
        pairs = tuple(zip(keys, indices, strict=True))

        def make_dict(vals: list[object]) -> object:
            built = {}
            for key, index in pairs:
                built[key] = vals[index]
            return built

        return make_dict
    if len(indices) >= 2:
        gather: Callable[[list[object]], Sequence[object]] = itemgetter(*indices)
    else:
        picks = slice(indices[0], indices[0] + 1) if indices else slice(0, 0)

        def gather(vals: list[object]) -> Sequence[object]:
            return vals[picks]

    def make_list(vals: list[object]) -> object:
        return list(gather(vals))

    def make_tuple(vals: list[object]) -> object:
        return tuple(gather(vals))

    return make_list if tag == b"L" else make_tuple
