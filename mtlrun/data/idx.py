"""Read and write IDX files, the format of MNIST and Fashion-MNIST, plain or gzip-compressed.

An IDX file is a 4-byte magic number, one big-endian uint32 per dimension, then the values, big-endian,
row-major. The magic number is two zero bytes, a type code (0x08 = uint8, ...) and the number of
dimensions: 0x00000803 is a stack of images [N, rows, cols] of uint8, 0x00000801 a vector of N uint8
labels. Files are parsed with ``numpy.frombuffer`` (no per-value Python); every check that fails raises a
`DataError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from mtlrun.errors import DataError

# IDX type code -> numpy dtype (big-endian, as the format stores values).
DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
CODES = {dtype.newbyteorder("="): code for code, dtype in DTYPES.items()}
GZIP_MAGIC = b"\x1f\x8b"
IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions: [N, rows, cols]
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension: [N]


def _file_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it starts with the gzip magic bytes."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the IDX file ({err.strerror or err})") from None
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{path}: a damaged gzip file ({err}); download it again, or give the uncompressed file"
        ) from None


def read_idx(path: str | Path, ndim: int | None = None, dtype_code: int | None = 0x08) -> np.ndarray:
    """The array stored in the IDX file ``path`` (plain or ``.gz``), shaped as its header says.

    ``ndim`` and ``dtype_code`` (None = any) are what the caller expects: 3 and 0x08 for MNIST images, 1 and
    0x08 for labels. The result has native byte order; uint8 data comes back as a read-only view of the
    file's bytes (copy it before writing into it).
    """
    path = Path(path)
    data = _file_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes, too short for an IDX header (4-byte magic number)")
    zero, code, dims = struct.unpack(">HBB", data[:4])
    magic = f"0x{int.from_bytes(data[:4], 'big'):08X}"
    if zero != 0 or code not in DTYPES:
        raise DataError(
            f"{path}: magic number {magic} is not an IDX header (0x0000TTDD, TT a type code such as 08 = "
            "uint8); is it the right file?"
        )
    if dtype_code is not None and code != dtype_code:
        raise DataError(
            f"{path}: magic number {magic} declares type code 0x{code:02X} ({DTYPES[code].name}); "
            f"expected 0x{dtype_code:02X} ({DTYPES[dtype_code].name})"
        )
    if ndim is not None and dims != ndim:
        raise DataError(
            f"{path}: magic number {magic} declares {dims} dimension(s); expected {ndim} "
            f"(0x0000{dtype_code or code:02X}{ndim:02X}); images and labels swapped?"
        )
    header = 4 + 4 * dims
    if len(data) < header:
        raise DataError(
            f"{path}: truncated header: {dims} dimension sizes need {header} bytes, got {len(data)}"
        )
    shape = struct.unpack(f">{dims}I", data[4:header])
    dtype = DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        problem = "truncated" if len(data) - header < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {problem}: the header declares shape {list(shape)} ({expected:,} bytes of "
            f"{dtype.name}) but the file holds {len(data) - header:,} bytes after the header"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``); returns ``path``.

    Used by the tests to make files in the real format, and by anyone who wants MNIST-format files.
    """
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in CODES:
        raise DataError(f"{path}: IDX cannot store dtype {array.dtype}; use one of {sorted(map(str, CODES))}")
    code = CODES[native]
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    content = header + np.ascontiguousarray(array, dtype=DTYPES[code]).tobytes()
    path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)
    return path
