"""Safe, versioned serialization of one sample into one LMDB value (see :mod:`.encoding`)."""

from .encoding import (
    FORMAT_VERSION,
    Buffer,
    Encoding,
    clone,
    decode,
    digest,
    encode,
    replicate,
    seal,
    view,
)

__all__ = [
    "FORMAT_VERSION",
    "Buffer",
    "Encoding",
    "clone",
    "decode",
    "digest",
    "encode",
    "replicate",
    "seal",
    "view",
]
