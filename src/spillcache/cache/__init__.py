"""SpillCache, one concern per module.

- :mod:`.spillcache`: the class: opening, pickling, fork, statistics, commit and close;
- :mod:`.reads`: ``get`` (a RAM hit, a disk hit, admitting a disk hit), ``where``, ``promote``;
- :mod:`.misses`: ``get_or_load`` and its batched and reserving forms, the single miss hook;
- :mod:`.puts`: ``put``;
- :mod:`.state`: the state the others share, and the checks they share.
"""

from .spillcache import SpillCache

__all__ = ["SpillCache"]
