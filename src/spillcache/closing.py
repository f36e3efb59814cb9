"""The one way spillcache objects are context managers: ``with`` closes them."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["Closing"]

_T = TypeVar("_T", bound="Closing")


class Closing:
    """Mixin for objects with a ``close()``: ``with obj:`` returns ``obj`` and closes it on exit."""

    __slots__ = ()

    def close(self) -> None:
        """Release the object's resources (implemented by each class)."""
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
