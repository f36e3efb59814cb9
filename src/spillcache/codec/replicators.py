"""Replicators generated per structure: what copies a RAM-tier resident on every hit.

:func:`replicator` returns, for the plan of a sample's structure spec, a function copying any
sample of that structure as :func:`~spillcache.codec.replicate` does (containers rebuilt, tensors
and arrays copied, the other leaves shared) in straight-line code: no walk, no look at types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

import numpy as np

from .builders import ARRAY, Op
from .copying import PARALLEL_NUMEL, copy_plain_tensor, replicate, replicate_tensor
from .format import CACHE_LIMIT

if TYPE_CHECKING:
    from .plan import Node, Plan

__all__ = ["REPLICATORS", "Replicator", "replicator"]

Replicator = Callable[[Any], Any]

# As for decoders (docs/design.rst, "The codec's costs"): a plan's replicator is generated when
# it is asked for a second time (generating costs what a structure seen once would pay in vain),
# and plans of more nodes than this keep the generic walk.
_GENERATE_AT_USE: Final = 2
_GENERATE_MAX_NODES: Final = 256

# Generated replicators by plan and whether all its tensors are small (see ``replicator``),
# and those asked for once; both emptied when full.
REPLICATORS: dict[tuple[Plan, bool], Replicator] = {}
_ASKED: set[tuple[Plan, bool]] = set()


def replicator(plan: Plan, at_most: int | None = None) -> Replicator:
    """The copier of samples of ``plan``'s structure (as decoded, cloned or viewed).

    Parameters
    ----------
    plan : Plan
        The plan of the spec the samples were encoded with.
    at_most : int, optional
        No tensor of the samples it copies holds more bytes than this (a sample's array bytes
        or its footprint bound each of its tensors). Below ``PARALLEL_NUMEL`` every tensor is
        cloned without asking its size: a ``numel()`` call less per tensor and hit.

    Returns
    -------
    callable
        A function of a sample of that structure returning its copy, equal to what
        :func:`~spillcache.codec.replicate` returns: :func:`replicate` itself the first time a
        plan is asked for (and for plans of over 256 nodes), generated code from then on.
    """
    key = (plan, at_most is not None and at_most < PARALLEL_NUMEL)
    found = REPLICATORS.get(key)
    if found is not None:
        return found
    if key not in _ASKED or plan.nodes > _GENERATE_MAX_NODES:
        if len(_ASKED) >= CACHE_LIMIT:
            _ASKED.clear()
        _ASKED.add(key)
        return replicate
    if len(REPLICATORS) >= CACHE_LIMIT:
        REPLICATORS.clear()
    made = REPLICATORS[key] = generate(*key)
    return made


def generate(plan: Plan, small: bool = False) -> Replicator:
    """Generate the replicator of ``plan``: :func:`replicate` unrolled for its tree.

    Only names chosen here enter the source; dict keys are passed in as constants, so no byte
    of any value is ever parsed as code. ``small``: every tensor has fewer than
    ``PARALLEL_NUMEL`` elements (it is cloned without a look at its size).
    """
    source = _Source(plan, small)
    root = source.node(plan.tree, "s")
    lines = ["def replicate(s):", *source.lines, f"    return {root}"]
    exec(compile("\n".join(lines), "<spillcache replicator>", "exec"), source.consts)
    return cast(Replicator, source.consts["replicate"])


class _Source:
    """The statements of one replicator, built by walking its plan's tree."""

    def __init__(self, plan: Plan, small: bool) -> None:
        self.ops = plan.ops
        self.small = small
        self.lines: list[str] = []
        self.consts: dict[str, object] = {
            "big": copy_plain_tensor,
            "grad": replicate_tensor,
        }
        self.names = 0

    def name(self, prefix: str) -> str:
        self.names += 1
        return f"{prefix}{self.names}"

    def node(self, node: Node, source: str) -> str:
        """The expression of the copy of ``node``, read from the expression ``source``."""
        if not isinstance(node, tuple):
            return self.leaf(node, source)
        tag, keys, children = node
        here = source
        if source != "s" and children:  # read the container once
            here = self.name("s")
            self.lines.append(f"    {here} = {source}")
        if keys is None:
            parts = [self.node(c, f"{here}[{i}]") for i, c in enumerate(children)]
            return self.sequence(tag, parts)
        pairs = []
        for key, child in zip(keys, children, strict=True):
            constant = self.name("k")
            self.consts[constant] = key
            pairs.append((constant, self.node(child, f"{here}[{constant}]")))
        return self.mapping(pairs)

    def leaf(self, node: int | None, source: str) -> str:
        """A shared leaf is its own source; tensors and arrays are copied."""
        if node is None or node >= 0:  # None, or a table slot: a bool, int or float
            return source
        op = self.ops[~node]
        if op.kind != ARRAY:  # numpy scalars, str, bytes and big ints are immutable
            return source
        if op.convert is None:
            return f"{source}.copy()"
        if _requires_grad(op):
            return f"grad({source})"
        # Samples made by the codec are contiguous: clone() keeps them so.
        if self.small:
            return f"{source}.clone()"
        value = self.name("t")
        self.lines.append(f"    {value} = {source}")
        return f"({value}.clone() if {value}.numel() < {PARALLEL_NUMEL} else big({value}))"

    def sequence(self, tag: bytes, parts: list[str]) -> str:
        """A list or tuple display (a tuple display of expressions is a fresh tuple)."""
        items = "".join(f"{p}, " for p in parts)
        built = self.name("c")
        self.lines.append(f"    {built} = [{items}]" if tag == b"L" else f"    {built} = ({items})")
        return built

    def mapping(self, pairs: list[tuple[str, str]]) -> str:
        """A dict display: it takes the memory of :func:`replicate`'s, filled key by key.

        (Measured: equal ``sys.getsizeof`` for 0 to 260 str keys, and for int keys mixed with
        a str key first or last, 1 to 40.)
        """
        built = self.name("c")
        self.lines.append(f"    {built} = {{{', '.join(f'{k}: {v}' for k, v in pairs)}}}")
        return built


def _requires_grad(op: Op) -> bool:
    """Whether the tensors of ``op`` require grad (its converter says: ``r`` in the spec)."""
    assert op.convert is not None and op.dtype is not None  # a tensor op
    proto = op.convert(np.zeros(0, op.dtype))
    return bool(getattr(proto, "requires_grad", False))
