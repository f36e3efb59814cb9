"""What a Hyrax data set's store is named by: the data set's identity and the sample fields."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["dataset_identity", "expected_fields", "field_names", "store_name"]


def _location(value: object) -> str | None:
    """A data location as a stable string: paths resolved, URIs (``lsdb://...``) as given."""
    if value is None or value is False or value == "":
        return None
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if isinstance(text, bytes):
            text = os.fsdecode(text)
        return text if "://" in text else os.path.realpath(os.path.expanduser(text))
    return repr(value)


def _class_section(dataset: object) -> object:
    """The data set's own table of its config, ``[data_set.<ClassName>]`` (its parameters)."""
    config = getattr(dataset, "config", None)
    if not isinstance(config, Mapping):
        return None
    section = config.get("data_set")
    return section.get(type(dataset).__name__) if isinstance(section, Mapping) else None


def dataset_identity(dataset: object, *, fingerprint: str | None = None) -> dict[str, Any]:
    """What tells the data of one Hyrax data set from another's.

    The class (module and qualified name), the resolved ``data_location`` when the data set
    has one, ``len(dataset)``, its ``cache_fingerprint()`` when it defines one, its table of the
    config (``[data_set.<ClassName>]``: e.g. the size, shape and seed of a random data set) and
    the config's ``cache_fingerprint``.

    Raises
    ------
    TypeError
        If the data set has no ``len()``.
    """
    cls = type(dataset)
    try:
        length = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"data set {cls.__qualname__} has no len(); Hyrax data sets define __len__"
        ) from None
    own = getattr(dataset, "cache_fingerprint", None)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "data_location": _location(getattr(dataset, "data_location", None)),
        "len": int(length),
        "cache_fingerprint": None if not callable(own) else str(own()),
        "config": _class_section(dataset),
        "config_fingerprint": fingerprint,
    }


def field_names(sample: object) -> tuple[str, ...]:
    """The sorted field names of a Hyrax sample (a dict of field -> value); ``()`` otherwise."""
    if not isinstance(sample, Mapping):
        return ()
    # str.__str__: tomlkit's String may render itself differently.
    return tuple(sorted(str.__str__(k) if isinstance(k, str) else repr(k) for k in sample))


def store_name(identity: Mapping[str, Any], fields: Iterable[str]) -> str:
    """The store's directory name: the class name and a digest of identity and fields."""
    basis = json.dumps([dict(identity), list(fields)], sort_keys=True, default=str)
    digest = hashlib.sha256(basis.encode()).hexdigest()[:24]
    cls = str(identity["class"]).rsplit(".", 1)[-1]
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', cls)[:40]}-{digest}"


def expected_fields(
    config: Mapping[str, Any], friendly_name: str, dataset: object
) -> tuple[str, ...] | None:
    """The fields a provider of this config will request from ``dataset``, if certain.

    Every ``config["data_request"]`` group with an entry for ``friendly_name`` of the data set's
    class and ``data_location`` must name the same fields (no ``fields``: all of the data set's
    ``get_*`` methods, as Hyrax does); ``None`` when there is no such entry or they differ.
    """
    request = config.get("data_request")
    if not isinstance(request, Mapping):
        return None
    where = _location(getattr(dataset, "data_location", None))
    found: set[tuple[str, ...]] = set()
    for group in request.values():
        entry = group.get(friendly_name) if isinstance(group, Mapping) else None
        if not isinstance(entry, Mapping):
            continue
        cls_name = str(entry.get("dataset_class", "")).rsplit(".", 1)[-1]
        if cls_name != type(dataset).__name__ or _location(entry.get("data_location")) != where:
            continue
        fields = entry.get("fields") or [m[4:] for m in dir(dataset) if m.startswith("get_")]
        found.add(tuple(sorted(str.__str__(f) if isinstance(f, str) else repr(f) for f in fields)))
    return found.pop() if len(found) == 1 else None
