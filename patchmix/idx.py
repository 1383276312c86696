"""The idx file format of MNIST, Fashion-MNIST, KMNIST and EMNIST, read with numpy (no pickle, no torchvision).

An idx file is a header, then the data, all big-endian::

    bytes 0-1   0x00 0x00
    byte  2     the element type: 0x08 unsigned byte (the only one these datasets use, and the only one read here)
    byte  3     the number of dimensions d (3 for images: n, rows, columns; 1 for labels: n)
    bytes 4..   d unsigned 32-bit big-endian sizes
    then        prod(sizes) elements, row-major

So the image file's magic number is ``0x00000803`` and the label file's ``0x00000801``. The files may be
gzipped (``.gz``, as distributed); :func:`read_idx` decompresses them in memory.

Reading never trusts the header: the sizes are checked against the bytes actually present before anything is
allocated from them (a plain file's size comes from the file system; a gzip stream is decompressed in chunks
and abandoned as soon as it runs past what the header announced), so a truncated, padded or corrupt file is a
:class:`DatasetError` naming the file and what was expected, never an out-of-bounds read or a huge allocation.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from .errors import DatasetError

#: the element type byte of unsigned bytes, the type of every MNIST-family image and label file
UBYTE = 0x08
#: the magic numbers of an image file (3 dimensions) and a label file (1 dimension)
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
#: decompression chunk: a gzip stream is read this many bytes at a time, never more than the header announced
_CHUNK = 1 << 20


def _header(path: str, head: bytes, ndim: int, what: str) -> tuple[int, ...]:
    """The sizes the header of ``path`` announces, after checking its magic number (``head``: its first bytes)."""
    magic = (UBYTE << 8) | ndim
    if len(head) < 4:
        raise DatasetError(f"idx: {path} is {len(head)} bytes long: too short for an idx header (expected {what}, "
                           f"magic number 0x{magic:08x})")
    got = int.from_bytes(head[:4], "big")
    if got != magic:
        raise DatasetError(f"idx: {path} has magic number 0x{got:08x}, expected 0x{magic:08x} ({what}: unsigned "
                           f"bytes, {ndim} dimension{'s' if ndim > 1 else ''})"
                           + (f"; its header says {head[3]} dimensions" if head[:3] == bytes([0, 0, UBYTE]) else ""))
    if len(head) < 4 + 4 * ndim:
        raise DatasetError(f"idx: {path} is truncated inside its header ({len(head)} bytes; expected {4 + 4 * ndim} "
                           f"for {what})")
    return tuple(int(v) for v in np.frombuffer(head, dtype=">u4", count=ndim, offset=4))


def _read_limited(f, limit: int) -> bytes:
    """At most ``limit`` bytes of ``f`` (read in chunks, so a stream longer than announced costs no more)."""
    parts, n = [], 0
    while n < limit:
        chunk = f.read(min(_CHUNK, limit - n))
        if not chunk:
            break
        parts.append(chunk)
        n += len(chunk)
    return b"".join(parts)


def read_idx(path: str, ndim: int, what: str) -> np.ndarray:
    """The unsigned-byte array of the idx file ``path`` (gzipped when its name ends in ``.gz``): ``(n, rows,
    cols)`` for ``ndim = 3``, ``(n,)`` for ``ndim = 1``. ``what`` names the file's role in messages ("images",
    "labels"). Raises :class:`DatasetError` (one line: the file and what was expected) for a missing file, a
    wrong magic number or dimension count, a header that announces more or fewer bytes than the file holds, or a
    corrupt gzip stream."""
    if not os.path.isfile(path):
        raise DatasetError(f"idx: missing file {path} ({what})")
    head_len = 4 + 4 * ndim
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                head = _read_limited(f, head_len)
                sizes = _header(path, head, ndim, what)
                need = int(np.prod(sizes, dtype=object))  # Python ints: a hostile header cannot overflow
                body = _read_limited(f, need + 1)  # one byte more tells a padded stream from an exact one
                actual = len(body) if len(body) <= need else None
        else:
            with open(path, "rb") as f:
                head = f.read(head_len)
                sizes = _header(path, head, ndim, what)
                need = int(np.prod(sizes, dtype=object))
                size = os.fstat(f.fileno()).st_size - head_len  # checked before reading (allocating) the body
                actual = size if size <= need else None
                body = f.read(need) if size == need else b""
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"idx: cannot read {path} ({what}): {exc}") from None
    shape = " x ".join(map(str, sizes))
    if actual is None:
        raise DatasetError(f"idx: {path} holds more than the {need} bytes of data its header announces ({what}, "
                           f"{shape}): not an idx file, or two files joined")
    if actual < need:
        raise DatasetError(f"idx: {path} is truncated: its header announces {shape} = {need} bytes of {what}, the "
                           f"file holds {actual}")
    return np.frombuffer(body, dtype=np.uint8).reshape(sizes)


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 array as an idx file (gzipped when ``path`` ends in ``.gz``): the inverse of
    :func:`read_idx`, for tests and for exporting a subset."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    head = bytes([0, 0, UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(head + array.tobytes())


__all__ = ["IMAGES_MAGIC", "LABELS_MAGIC", "UBYTE", "read_idx", "write_idx"]
