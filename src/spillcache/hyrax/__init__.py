"""A drop-in for Hyrax's ``hyrax.datasets.data_cache.DataCache``, both of its interfaces.

``hyrax.datasets.data_cache.DataCache = spillcache.DataCache`` switches it in; see
:class:`DataCache` for how the arguments choose the interface.
"""

from .base import DataCache
from .datasets import DatasetsDataCache
from .provider import ProviderDataCache

__all__ = ["DataCache", "DatasetsDataCache", "ProviderDataCache"]
