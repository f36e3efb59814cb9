"""Safe, versioned serialization of one sample into one value, and into a pack's record.

A *sample* is a nested structure of ``dict`` (keys ``str`` or ``int``, insertion order kept),
``list`` and ``tuple`` whose leaves are torch tensors, numpy arrays, numpy scalars (including
``np.str_`` and ``np.bytes_``), Python ``int`` (any size), ``float``, ``bool``, ``str``, ``bytes``
or ``None``. Nothing is pickled and decoding never executes code: a value only ever turns into
those types. Anything else is refused by :func:`encode` with a ``TypeError`` naming its path.

Byte format of a value (store format 2, value version 1)
--------------------------------------------------------
All integers are little-endian; offsets count from the first byte of the value::

    offset 0            prefix, 12 bytes, struct "<4sHHI":
                          magic      4 bytes  b"SPLC"
                          version    u16      VALUE_VERSION (1; FORMAT_VERSION, 2, is the store's)
                          flags      u16      0 (reserved; any other value is invalid)
                          spec_len   u32      length of the structure spec
    offset 12           structure spec, spec_len bytes (grammar below)
    12 + spec_len       table: one packed struct (no padding) of the slots the spec asks for
    after the table     data region: one payload per leaf that has one, in spec order
    n - 8               checksum: u64 xxh3_64 (seed 0) of bytes [0, n - 8)

The *structure spec* describes containers, dict keys, leaf kinds, dtypes and numbers of
dimensions, but no lengths or values, so samples of the same shape share the same spec bytes
(and the decoder compiled for it). It is written depth first, children in order::

    node   := dict | list | tuple | leaf
    dict   := "D" u32:count (key node){count}
    key    := "s" u32:len utf8[len]          a str key
            | "i" i64                        an int key (int64 range)
    list   := "L" u32:count node{count}
    tuple  := "T" u32:count node{count}
    leaf   := "N"                            None
            | "b" | "i" | "f"                bool, int (int64 range), float
            | "j"                            int outside the int64 range
            | "s" | "y" | "S" | "Y"          str, bytes, numpy.str_, numpy.bytes_
            | "g" dtype                      numpy scalar
            | "a" dtype u8:ndim              numpy array
            | "t" tname u8:ndim              torch tensor
            | "r" tname u8:ndim              torch tensor with requires_grad=True (floating
                                             point and complex dtypes only)
    dtype  := u8:len ascii[len]    numpy ``dtype.str``: "<f4", "|b1", "<M8[ns]", "<U3", ...
    tname  := u8:len ascii[len]    torch dtype name without "torch.": "float32", "bfloat16", ...

Containers nest at most 100 deep; arrays and tensors have at most 64 dimensions. Array dtypes
are of the kinds ``b i u f c m M S U`` and scalar dtypes of ``b i u f c m M``, never long double
(its layout differs between platforms), object, structured or zero-sized.

Table slots, in leaf order (struct codes): ``b`` → ``?``; ``i`` → ``q``; ``f`` → ``d`` (the
float's exact 64 bits); ``j s y S Y`` → ``Q``, the payload's byte length; ``a t`` → ``ndim``
times ``Q``, the shape; ``N g`` → none.

Data region payloads, in leaf order: ``a`` and ``t`` hold the C-order element bytes, starting at
the next offset that is a multiple of 64 (zero padding before); the other payloads follow
without padding: ``s S`` UTF-8 (lone surrogates kept via ``surrogatepass``), ``y Y`` the bytes,
``j`` the two's complement, little-endian, in ``bit_length // 8 + 1`` bytes, ``g`` the scalar's
``itemsize`` bytes. The last payload ends exactly at ``n - 8``. Element bytes are little-endian:
big-endian numpy input is converted; tensors and numpy scalars are written in host order, hosts
being assumed little-endian. Tensors of dtypes numpy lacks are stored as a same-size integer
carrier (``bfloat16`` as ``<i2``, ``complex32`` as ``<i4``, ``float8_*`` as ``|u1``) and viewed
back on decode. Encoding is deterministic: equal samples give equal bytes, so :func:`digest`
(xxh3_128 of the whole value) tells whether two values hold the same data.

Decoding checks the magic and version, then the checksum (before trusting any length in the
value), then parses the spec, validating every tag, count, length and dtype against the spec's
size, and checks each payload's end against the value's size before allocating anything for it:
a hostile value cannot make it allocate much more than its own size. Values of 256 KiB and more
are checksummed while they are copied instead (each array is hashed from its fresh copy, so the
value is read from memory once); the same bounds hold, and a mismatch discards the copies. Any
invalid value raises :class:`~spillcache.errors.CodecError`. Parsed specs are compiled into
plans kept in a bounded cache keyed by the spec bytes; from its second decode on, a spec of at
most 256 nodes gets a generated decoder, straight-line Python built only from the plan's
numbers and names (no value byte is ever parsed as code), so decoding a sample of a known shape
only unpacks the prefix and the table, checks the checksum and copies the payloads.

Records (store format 2)
------------------------
The disk tier stores values re-laid as records (module ``records``), their spec kept once per
store::

    offset 0            prefix, 12 bytes, struct "<4sQ": magic b"SPLR", spec id (the xxh3_64
                        of the spec's bytes)
    offset 12           table, as in the value
    after the table     payloads as in the value, but arrays start at multiples of 8
    n - 8               checksum: u64 xxh3_64 (seed 0) of bytes [0, n - 8)

:func:`decode` and :func:`decode_sized` read values and records alike; a record whose spec
this process has not learnt (:func:`learn`, which checks the spec against its id) raises
:class:`UnknownSpec`, a ``CodecError``.

Modules
-------
``format``
    The format's constants (prefix, checksum, alignment, bounds) and :func:`digest`.
``rules``
    Supported types and dtypes, and errors that name the path to a part of a sample.
``encoding``
    :class:`Encoding`, :func:`encode` and :func:`seal`.
``compiler``, ``plan``, ``builders``
    A spec parsed into a plan, the bounded plan cache, and the interpreted and generated
    builders that turn a value into a sample.
``decoding``
    :func:`decode`, :func:`decode_sized` (with the footprint and copier a cache needs) and
    :func:`view`.
``footprint``
    What :func:`~spillcache.footprint.sample_nbytes` says of a decoded sample, from its plan, and
    :class:`Decoded`, what :func:`decode_sized` returns.
``copying``
    :func:`clone` and :func:`replicate`, the RAM tier's copies of samples.
``records``
    :func:`relaid`, :func:`learn`, :class:`UnknownSpec`: values as a pack's records.
``snapshots``
    :func:`snapshot`: what a put with ``copy=True`` stores and keeps, from one encoding.
``replicators``
    :func:`~.replicators.replicator`: for a plan, the code copying its samples on a RAM-tier
    hit, generated once the plan is asked for twice and kept in a bounded cache.
"""

from .copying import clone, replicate
from .decoding import decode, decode_sized, view
from .encoding import Buffer, Encoding, Unsealed, encode, seal
from .footprint import Decoded
from .format import FORMAT_VERSION, digest
from .records import Relaid, UnknownSpec, learn, relaid
from .replicators import replicator
from .snapshots import snapshot

__all__ = [
    "FORMAT_VERSION",
    "Buffer",
    "Decoded",
    "Encoding",
    "Relaid",
    "UnknownSpec",
    "Unsealed",
    "clone",
    "decode",
    "decode_sized",
    "digest",
    "encode",
    "learn",
    "relaid",
    "replicate",
    "replicator",
    "seal",
    "snapshot",
    "view",
]
