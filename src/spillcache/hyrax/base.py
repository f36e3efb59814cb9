"""``DataCache``: one class for both of Hyrax's cache interfaces, told apart by the arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..closing import Closing

__all__ = ["FORMS", "DataCache"]

FORMS = (
    "DataCache takes Hyrax's arguments in one of two forms: DataCache(config, data_provider) "
    "(Hyrax up to 0.8; the provider has len() and resolve_data(idx)) or DataCache(config, "
    "datasets, augment_active) (Hyrax 0.9 and later; datasets maps friendly name -> data set, "
    "augment_active maps friendly name -> bool)"
)


class DataCache(Closing):
    """A drop-in for ``hyrax.datasets.data_cache.DataCache``, for every Hyrax version.

    ``hyrax.datasets.data_cache.DataCache = spillcache.DataCache`` switches it in. The
    arguments choose the interface (each form builds an instance of a subclass):

    * ``DataCache(config, data_provider)``, Hyrax up to 0.8:
      :class:`~spillcache.hyrax.ProviderDataCache` (``try_fetch(idx)``,
      ``insert_into_cache(idx, data)``, ``start_preload_thread()``).
    * ``DataCache(config, datasets, augment_active)``, Hyrax 0.9 and later:
      :class:`~spillcache.hyrax.DatasetsDataCache` (``try_fetch(friendly_name, real_idx,
      rng_seed=None)``, ``insert_base``, ``insert_augmented``, ``disable()``).

    Raises
    ------
    TypeError
        For arguments that fit neither form, naming both.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> DataCache:
        """An instance of the form's subclass (its ``__init__`` then takes the arguments)."""
        return super().__new__(_form(args, kwargs) if cls is DataCache else cls)

    def close(self) -> None:
        """Release the cache's stores (implemented by each form)."""
        raise NotImplementedError


def _form(args: tuple[Any, ...], kwargs: dict[str, Any]) -> type[DataCache]:
    """The subclass for the arguments given to ``DataCache(...)``."""
    # Imported here: both forms subclass DataCache.
    from .datasets import DatasetsDataCache  # noqa: PLC0415
    from .provider import ProviderDataCache  # noqa: PLC0415

    if len(args) >= 3 or "augment_active" in kwargs or "datasets" in kwargs:
        return DatasetsDataCache
    second = args[1] if len(args) >= 2 else kwargs.get("data_provider")
    # resolve_data is needed only to preload; a mapping is a 0.9+ call without augment_active.
    if hasattr(second, "__len__") and not isinstance(second, Mapping):
        return ProviderDataCache
    got = ", ".join([type(a).__name__ for a in args] + [f"{k}=" for k in kwargs])
    raise TypeError(f"{FORMS}; got DataCache({got})")
