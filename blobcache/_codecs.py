"""Typed values to the bytes the store keeps, and back: .npy, safetensors, JSON, pickle.

A record's codec byte (``_format.CODEC_*``) says which of these a value's bytes
are; this module alone writes and parses them, so put_object, the getters and
memoize share one definition. Each is a format its own tools read: ``path(key)``
of an array is a .npy file that ``numpy.load(path, mmap_mode="r")`` maps, of a
dict of arrays a file that ``safetensors.safe_open`` opens.

Nothing is pickled unless the caller names ``serializer="pickle"``, and a pickle
is read back only once ``trusted()`` (``check_private``) has passed: unpickling
runs whatever code the bytes name, so bytes another user could have written must
never reach ``pickle.loads``. An .npy holding Python objects is refused both ways
for the same reason (numpy pickles them).

The .npy and safetensors headers are written and parsed here rather than by
``numpy.save``/``numpy.load`` or the safetensors package: writing takes the
array's own memory as the data part (no copy of a C-contiguous array), and
reading returns read-only arrays over the bytes given (no copy at any size);
numpy's loaders read into new memory unless given a file name to map.

Plain data is JSON: the standard library writes and reads it, and any tool
(``jq``, an editor) shows a stored value. msgpack would need a package, holds
ints of 64 bits at most, and has one array type, so it too gives tuples back as
lists unless an ext type is defined; it would keep bytes apart from str and take
non-str map keys, which JSON cannot, so those are refused here rather than
changed: every value JSON takes comes back equal and of the same types. NaN and
the infinities are written as Python writes them (``NaN``, ``Infinity``): Python
reads them back, a strict JSON parser does not.

numpy is imported only by the functions that need it (and torch only by
``decode_tensors(..., framework="torch")``): JSON works without either.
"""

from __future__ import annotations

import ast
import importlib
import json
import math
import os
import pickle
import re
import stat
import struct
import sys
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, TypeGuard

from ._format import CODEC_JSON, CODEC_NPY, CODEC_PICKLE, CODEC_RAW, CODEC_SAFETENSORS
from .errors import BlobCacheError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


class Encoded(NamedTuple):
    """A value as the store keeps it: ``b"".join(parts)``, of ``length`` bytes."""

    codec: int
    # An array's data part is a view of the array itself: the store must write
    # it before the caller can change the array.
    parts: tuple[memoryview | bytes, ...]
    length: int


# --- Choosing the codec ------------------------------------------------------------


def encode(value: object, serializer: str | None = None) -> Encoded:
    """``value`` in the encoding ``serializer`` names, or by its type when None:
    a numpy array as .npy, a dict holding arrays (or torch tensors) as safetensors,
    plain data (None, bool, int, float, str, list, dict with str keys) as JSON.

    Bytes are no typed value: the store keeps them as they are (``put``).

    :raises TypeError: ``value`` does not fit the encoding (its sentence says why
        and what to pass instead; for a type none fits, ``serializer="pickle"``).
    :raises ValueError: ``serializer`` is not one of None, "json", "npy",
        "safetensors", "pickle"; or a str that UTF-8 cannot encode, a tensor named
        "__metadata__", plain data nested too deep, holding itself, or an int of
        more digits than Python converts to text by default.
    """
    if serializer is None:
        if _is_array(value):
            return _encode_npy(value)
        if isinstance(value, dict) and any(_is_tensor(v) for v in value.values()):
            return _encode_tensors(value)
        return _encode_json(value)
    if serializer == "json":
        return _encode_json(value)
    if serializer == "npy":
        if not _is_array(value):
            raise TypeError(f'serializer="npy" takes a numpy.ndarray, not {_type_name(value)}')
        return _encode_npy(value)
    if serializer == "safetensors":
        if not isinstance(value, dict):
            raise TypeError(
                'serializer="safetensors" takes a dict of str to numpy arrays or torch '
                f"tensors, not {_type_name(value)}"
            )
        return _encode_tensors(value)
    if serializer == "pickle":
        data = pickle.dumps(value, protocol=5)
        return Encoded(CODEC_PICKLE, (data,), len(data))
    raise ValueError(
        f'serializer must be None, "json", "npy", "safetensors" or "pickle", not {serializer!r}'
    )


# A JSON number, exactly its grammar (RFC 8259): int() or float() of it is what
# json.loads gives, at a third of the time (a memoize hit's result is often one).
_JSON_NUMBER: Final = re.compile(rb"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def _loads(data: bytes | memoryview) -> object:
    """``json.loads`` of a JSON value's bytes."""
    number = _JSON_NUMBER.fullmatch(data)
    if number is not None:
        text = data if isinstance(data, bytes) else bytes(data)  # (a memoryview: a file's)
        return float(text) if number.lastindex else int(text)
    return json.loads(str(data, "utf-8"))


def decode(
    codec: int, data: bytes | memoryview, *, trusted: Callable[[], None] | None = None
) -> object:
    """The value ``encode`` made ``data`` of (RAW: ``data`` itself).

    Arrays come back read-only over ``data``; a pickle is loaded only after
    ``trusted()`` returned (it raises when the store is not private).

    :raises ValueError: the bytes are not what ``codec`` says (see
        :func:`decode_array`, :func:`decode_tensors`, which raise TypeError and
        ImportError too), ``codec`` is unknown, or it is a pickle and ``trusted``
        is None. Whatever ``trusted()`` raises propagates, nothing unpickled.
    """
    if codec == CODEC_JSON:
        return _loads(data)
    if codec == CODEC_NPY:
        return decode_array(data)
    if codec == CODEC_SAFETENSORS:
        return decode_tensors(data)
    if codec == CODEC_RAW:
        return data
    if codec == CODEC_PICKLE:
        if trusted is None:
            raise ValueError(
                "refusing to unpickle: pickle was not asked for (the value was put with "
                'serializer="pickle"; read it with pickling allowed for this store)'
            )
        trusted()
        return pickle.loads(data)
    raise ValueError(f"unknown codec {codec}: written by a newer blobcache?")


# --- .npy --------------------------------------------------------------------------
# magic, major and minor version, header length (u16 in 1.0, u32 in 2.0 and 3.0),
# then the header: a Python dict literal, padded with spaces to end in "\n" where
# the data begins, at a multiple of 64 bytes (numpy/lib/format.py, NEP 1).
_NPY_MAGIC: Final = b"\x93NUMPY"
_NPY_PREFIX_1: Final = struct.Struct("<6sBBH")
_NPY_PREFIX_2: Final = struct.Struct("<6sBBI")
_NPY_ALIGN: Final = 64
_NPY_KEYS: Final = frozenset({"descr", "fortran_order", "shape"})
# The header numpy (and _npy_header) writes for a dtype with a plain descr,
# parsed without ast.literal_eval's 30 µs; anything else goes to literal_eval,
# which reads this the same. A 1-tuple needs its comma, as in Python.
_DIM = r"(?:0|[1-9][0-9]*)"
_NPY_PLAIN_HEADER: Final = re.compile(
    r"\{'descr': '([^'\\]*)', 'fortran_order': (False|True), "
    rf"'shape': \((|{_DIM},|{_DIM}(?:, {_DIM})+,?)\), \}} *\n",
    re.ASCII,
)


def _encode_npy(arr: npt.NDArray[Any]) -> Encoded:
    from numpy.lib.format import descr_to_dtype, dtype_to_descr

    _check_plain_array(arr, "an array")
    if arr.dtype.hasobject:
        raise TypeError(
            f"an array of dtype {arr.dtype} holds Python objects, which .npy keeps only "
            'pickled: convert it to a numeric dtype, or pass serializer="pickle" (unsafe '
            "for a store others can write)"
        )
    descr = dtype_to_descr(arr.dtype)
    if descr_to_dtype(descr) != arr.dtype:
        raise TypeError(f"dtype {arr.dtype} has no .npy form that reads back as itself")
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # fortran_order is always False here: one layout
    header = _npy_header(descr, arr.shape)
    data = _array_bytes(arr)
    return Encoded(CODEC_NPY, (header, data), len(header) + len(data))


def _npy_header(descr: object, shape: tuple[int, ...]) -> bytes:
    """Magic, version and header of a C-ordered array: version 1.0 unless its
    header needs more than a u16 of length."""
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError:
        raise TypeError(
            "the dtype's field names must be Latin-1 for .npy 1.0 and 2.0; rename the fields"
        ) from None
    pad = -(_NPY_PREFIX_1.size + len(raw) + 1) % _NPY_ALIGN
    if len(raw) + pad + 1 <= 0xFFFF:
        prefix = _NPY_PREFIX_1.pack(_NPY_MAGIC, 1, 0, len(raw) + pad + 1)
    else:
        pad = -(_NPY_PREFIX_2.size + len(raw) + 1) % _NPY_ALIGN
        prefix = _NPY_PREFIX_2.pack(_NPY_MAGIC, 2, 0, len(raw) + pad + 1)
    return prefix + raw + b" " * pad + b"\n"


def decode_array(data: bytes | memoryview) -> npt.NDArray[Any]:
    """The array of an .npy value: read-only, over ``data`` itself (no copy).

    A Fortran-ordered file (written by others) comes back Fortran-ordered.

    :raises ValueError: ``data`` is not an .npy value: no magic, an unknown
        version, a header that does not parse or runs past the end, data of
        another length than dtype and shape say, or an object dtype (whose items
        only pickle could read). The store's checksums hold already for bytes
        handed here, so a bad header is a value that was never an .npy (one put
        as raw bytes, say), not damage: a ``ValueError``, not ``CorruptionError``.
    :raises ImportError: numpy is not installed.
    """
    try:
        import numpy as np
    except ImportError:
        raise _no_numpy("decode_array") from None

    view = _byte_view(data)
    dtype, shape, fortran, start = _npy_layout(view)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if len(view) - start != nbytes:
        raise ValueError(
            f"not an .npy value: {len(view) - start} bytes of data, but dtype {dtype} "
            f"and shape {shape} make {nbytes}"
        )
    try:
        if nbytes == 0:  # no bytes to share, and frombuffer takes no item size 0
            empty = np.empty(shape, dtype, order="F" if fortran else "C")
            empty.flags.writeable = False
            return empty
        # frombuffer keeps the read-only view as the array's base, so the array
        # cannot be made writeable (np.ndarray(buffer=) would skip to a bytearray).
        flat = np.frombuffer(view, dtype, count, start)
        return flat.reshape(shape, order="F") if fortran else flat.reshape(shape)
    except ValueError as exc:  # more dimensions, or a larger array, than numpy holds
        raise ValueError(f"not an .npy value numpy can hold: {exc}") from None


def _npy_layout(view: memoryview) -> tuple[np.dtype[Any], tuple[int, ...], bool, int]:
    """dtype, shape, fortran_order and where the data begins, of an .npy value."""
    import numpy as np

    if len(view) < _NPY_PREFIX_1.size or view[:6].tobytes() != _NPY_MAGIC:
        raise ValueError("not an .npy value: it does not begin with b'\\x93NUMPY'")
    version = (view[6], view[7])
    if version == (1, 0):
        (length,) = struct.unpack_from("<H", view, 8)
        start = _NPY_PREFIX_1.size
    elif version in ((2, 0), (3, 0)) and len(view) >= _NPY_PREFIX_2.size:
        (length,) = struct.unpack_from("<I", view, 8)
        start = _NPY_PREFIX_2.size
    else:
        raise ValueError(f"not an .npy value of a known version: {version[0]}.{version[1]}")
    end = start + length
    if end > len(view):
        raise ValueError(f"not an .npy value: its header runs past its end ({end} > {len(view)})")
    try:
        text = str(view[start:end], "utf-8" if version == (3, 0) else "latin-1")
    except UnicodeDecodeError:
        raise ValueError("not an .npy value: its 3.0 header is not UTF-8") from None
    match = _NPY_PLAIN_HEADER.fullmatch(text)
    if match is not None:
        dims = match[3].rstrip(",")
        descr: Any = match[1]
        fortran: bool = match[2] == "True"
        shape: tuple[int, ...] = tuple(map(int, dims.split(", "))) if dims else ()
    else:
        try:
            header = ast.literal_eval(text)
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
            raise ValueError(f"not an .npy value: its header does not parse: {text!r}") from None
        if type(header) is not dict or header.keys() != _NPY_KEYS:
            raise ValueError(
                f"not an .npy value: its header is not the dict of {sorted(_NPY_KEYS)}"
            )
        descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
        if type(fortran) is not bool or type(shape) is not tuple:
            raise ValueError(f"not an .npy value: fortran_order {fortran!r}, shape {shape!r}")
        if not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"not an .npy value: shape {shape!r}")
    try:
        if match is not None:
            dtype = np.dtype(descr)
        else:  # the list form too (structured dtypes, with their padding)
            from numpy.lib.format import descr_to_dtype

            dtype = descr_to_dtype(descr)
    except (TypeError, ValueError, KeyError, RecursionError):
        raise ValueError(f"not an .npy value: descr {descr!r} is no dtype") from None
    if dtype.hasobject:
        raise ValueError(
            f"refusing an .npy of dtype {dtype}: it holds Python objects, which only "
            "pickle reads, and blobcache never unpickles an array"
        )
    return dtype, shape, fortran, end


# --- safetensors -------------------------------------------------------------------
# u64 little-endian header length N; N bytes of UTF-8 JSON, {name: {"dtype",
# "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, padded with
# spaces; then the data, offsets counted from its start, little-endian, C order.
_ST_LENGTH: Final = struct.Struct("<Q")
_ST_ALIGN: Final = 8
_ST_METADATA: Final = "__metadata__"
# safetensors name: (item size, numpy dtype string or "" (none), torch dtype name)
_ST_DTYPES: Final = {
    "BOOL": (1, "|b1", "bool"),
    "U8": (1, "|u1", "uint8"),
    "I8": (1, "|i1", "int8"),
    "U16": (2, "<u2", "uint16"),
    "I16": (2, "<i2", "int16"),
    "U32": (4, "<u4", "uint32"),
    "I32": (4, "<i4", "int32"),
    "U64": (8, "<u8", "uint64"),
    "I64": (8, "<i8", "int64"),
    "F16": (2, "<f2", "float16"),
    "BF16": (2, "", "bfloat16"),
    "F32": (4, "<f4", "float32"),
    "F64": (8, "<f8", "float64"),
}
# By numpy's kind and item size ("f4"), whatever the byte order.
_ST_OF_NUMPY: Final = {np_str[1:]: name for name, (_, np_str, _) in _ST_DTYPES.items() if np_str}
_ST_OF_TORCH: Final = {torch_name: name for name, (_, _, torch_name) in _ST_DTYPES.items()}


def _encode_tensors(tensors: dict[Any, Any]) -> Encoded:
    for name in tensors:
        if type(name) is not str:
            raise TypeError(f"tensor names must be str, not {_type_name(name)} ({name!r})")
    if _ST_METADATA in tensors:
        raise ValueError(f"{_ST_METADATA!r} names the header's metadata, not a tensor")
    # Widest items first, then by name: the same dict gives the same bytes, and
    # (the data starting 8-aligned) every tensor starts aligned to its item size,
    # as safetensors' own writer orders them.
    entries = [(name, *_tensor_bytes(name, tensor)) for name, tensor in tensors.items()]
    entries.sort(key=lambda e: (-_ST_DTYPES[e[1]][0], e[0]))
    header: dict[str, object] = {}
    data: list[memoryview | bytes] = []
    offset = 0
    for name, dtype, shape, part in entries:
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + len(part)],
        }
        offset += len(part)
        if part:
            data.append(part)
    try:
        raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("tensor names must be encodable as UTF-8 (no lone surrogates)") from None
    raw += b" " * (-len(raw) % _ST_ALIGN)
    head = _ST_LENGTH.pack(len(raw)) + raw
    return Encoded(CODEC_SAFETENSORS, (head, *data), len(head) + offset)


def _tensor_bytes(name: str, value: object) -> tuple[str, list[int], memoryview | bytes]:
    """safetensors dtype, shape and C-ordered little-endian bytes of one tensor."""
    if _is_array(value):
        import numpy as np

        _check_plain_array(value, f"tensor {name!r}")
        dtype = _ST_OF_NUMPY.get(f"{value.dtype.kind}{value.dtype.itemsize}")
        if dtype is None:
            raise TypeError(
                f"tensor {name!r} has dtype {value.dtype}, which safetensors has no name "
                "for: it takes bool, int8 to int64, uint8 to uint64, float16, float32, "
                "float64 (bfloat16 from torch)"
            )
        arr = np.asarray(value, _ST_DTYPES[dtype][1], order="C")  # a copy only if it must
        return dtype, list(arr.shape), _array_bytes(arr)
    if _is_tensor(value):
        return _torch_tensor_bytes(name, value)
    torch_too = " or torch tensor" if "torch" in sys.modules else ""
    raise TypeError(
        f"tensor {name!r} is {_type_name(value)}, not a numpy array{torch_too}: a dict is "
        "stored as safetensors when its values are arrays, all of them"
    )


def _torch_tensor_bytes(name: str, tensor: Any) -> tuple[str, list[int], memoryview | bytes]:
    torch: Any = sys.modules["torch"]
    dtype = _ST_OF_TORCH.get(str(tensor.dtype).removeprefix("torch."))
    if dtype is None:
        raise TypeError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors lacks")
    if tensor.device.type != "cpu" or tensor.layout != torch.strided:
        raise TypeError(
            f"tensor {name!r} is on {tensor.device} with layout {tensor.layout}: only dense "
            "CPU tensors are stored; pass tensor.cpu() (or .to_dense())"
        )
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return dtype, list(tensor.shape), b""
    return dtype, list(tensor.shape), memoryview(flat.view(torch.uint8).numpy())


def decode_tensors(
    data: bytes | memoryview, framework: Literal["numpy", "torch"] = "numpy"
) -> dict[str, Any]:
    """The tensors of a safetensors value (written by blobcache or by safetensors),
    by name; the header's ``__metadata__`` is checked and left out.

    ``framework="numpy"``: read-only numpy arrays over ``data`` itself (no copy).
    ``framework="torch"``: torch tensors, each a copy: torch has no read-only
    tensors, and one over the store's read-only pages would crash the process at
    its first in-place write (``torch.from_numpy`` of a numpy result shares
    memory, with that risk, for who wants it).

    :raises ValueError: ``data`` is not a safetensors value: a header length past
        its end, a header that is not a JSON object of tensor entries, offsets
        outside the data or overlapping, a shape that does not fill its offsets
        (the store's checksums hold for bytes handed here, so this is a value never
        written as safetensors, not damage); or ``framework`` is unknown.
    :raises TypeError: a dtype blobcache does not read (F8_*, say), or BF16 with
        ``framework="numpy"``, which has no bfloat16.
    :raises ImportError: numpy, or for "torch" torch, is not installed.
    """
    if framework not in ("numpy", "torch"):
        raise ValueError(f'framework must be "numpy" or "torch", not {framework!r}')
    view = _byte_view(data)
    entries, start = _safetensors_layout(view)
    if framework == "torch":
        return _torch_tensors(view, entries, start)
    try:
        import numpy as np
    except ImportError:
        raise _no_numpy('decode_tensors(..., framework="numpy")') from None

    tensors: dict[str, Any] = {}
    for name, dtype, shape, begin, end in entries:
        np_str = _ST_DTYPES[dtype][1]
        if not np_str:
            raise TypeError(
                f'tensor {name!r} is {dtype}, which numpy has no dtype for: pass framework="torch"'
            )
        if begin == end:
            empty = np.empty(shape, np_str)
            empty.flags.writeable = False
            tensors[name] = empty
        else:
            count = (end - begin) // _ST_DTYPES[dtype][0]
            tensors[name] = np.frombuffer(view, np_str, count, start + begin).reshape(shape)
    return tensors


def _torch_tensors(
    view: memoryview, entries: list[tuple[str, str, list[int], int, int]], start: int
) -> dict[str, Any]:
    try:
        torch: Any = importlib.import_module("torch")
    except ImportError:
        raise ImportError(
            'decode_tensors(..., framework="torch") needs torch: install it, or read '
            'numpy arrays with framework="numpy"'
        ) from None
    tensors: dict[str, Any] = {}
    for name, dtype, shape, begin, end in entries:
        torch_dtype = getattr(torch, _ST_DTYPES[dtype][2])
        if begin == end:
            tensors[name] = torch.empty(shape, dtype=torch_dtype)
        else:
            # A writable copy: torch.frombuffer shares it, and warns of nothing.
            copy = bytearray(view[start + begin : start + end])
            tensors[name] = torch.frombuffer(copy, dtype=torch_dtype).reshape(shape)
    return tensors


def _safetensors_layout(
    view: memoryview,
) -> tuple[list[tuple[str, str, list[int], int, int]], int]:
    """(name, dtype, shape, begin, end) of each tensor, offsets counted from the
    data's start, and where the data starts; everything checked against ``view``."""
    if len(view) < _ST_LENGTH.size:
        raise ValueError(f"not a safetensors value: {len(view)} bytes, shorter than its header")
    (length,) = _ST_LENGTH.unpack_from(view)
    if length > len(view) - _ST_LENGTH.size:
        raise ValueError(
            f"not a safetensors value: a header of {length} bytes in {len(view)} bytes"
        )
    start = _ST_LENGTH.size + length
    try:
        header = json.loads(
            str(view[_ST_LENGTH.size : start], "utf-8"), object_pairs_hook=_no_twins
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"not a safetensors value: its header is no JSON: {exc}") from None
    if type(header) is not dict:
        raise ValueError("not a safetensors value: its header is not a JSON object")
    metadata = header.pop(_ST_METADATA, None)
    if metadata is not None and not (
        type(metadata) is dict and all(type(v) is str for v in metadata.values())
    ):
        raise ValueError(f"not a safetensors value: {_ST_METADATA} is not of str to str")
    size = len(view) - start
    entries: list[tuple[str, str, list[int], int, int]] = []
    for name, info in header.items():
        if type(info) is not dict:
            raise ValueError(f"not a safetensors value: tensor {name!r} is {info!r}")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if (
            type(dtype) is not str
            or type(shape) is not list
            or not all(type(d) is int and d >= 0 for d in shape)
            or type(offsets) is not list
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
        ):
            raise ValueError(f"not a safetensors value: tensor {name!r} is {info!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= size:
            raise ValueError(
                f"not a safetensors value: tensor {name!r} at [{begin}, {end}) of {size} bytes"
            )
        if dtype not in _ST_DTYPES:
            raise TypeError(f"tensor {name!r} is {dtype}, a dtype blobcache does not read")
        if math.prod(shape) * _ST_DTYPES[dtype][0] != end - begin:
            raise ValueError(
                f"not a safetensors value: tensor {name!r}, {dtype} {shape}, in {end - begin} bytes"
            )
        entries.append((name, dtype, shape, begin, end))
    reach = 0
    for name, _, _, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
        if begin < reach:
            raise ValueError(f"not a safetensors value: tensor {name!r} overlaps another")
        reach = end
    return entries, start


def _no_twins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's dict, refusing a name twice (json would keep the last)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("a name appears twice in one object")
    return obj


# --- JSON --------------------------------------------------------------------------
_JSON_SCALARS: Final = (type(None), bool, int, float, str)
_JSON_MAX_DEPTH: Final = 256  # well inside the recursion limit of json.loads and this walk
# Python converts ints of at most 4300 digits to text by default
# (sys.int_info.default_max_str_digits), in whatever process reads the value.
_JSON_INT_LIMIT: Final = 10**4300  # the first int of 4301 digits


def _encode_json(value: object) -> Encoded:
    _check_json(value, [], set())
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("str values must be encodable as UTF-8 (no lone surrogates)") from None
    return Encoded(CODEC_JSON, (data,), len(data))


def _check_json(value: object, path: list[object], open_: set[int]) -> None:
    """Raise unless JSON gives ``value`` back equal and of the same types.

    ``path``: the keys and indexes down to ``value``; ``open_``: the ids of the
    containers being walked, which ``value`` must not be (a cycle).
    """
    if type(value) is int and not -_JSON_INT_LIMIT < value < _JSON_INT_LIMIT:
        raise ValueError(
            f"{_where(path)} is an int of more than 4300 digits, which Python does not "
            'convert to text by default: pass str(x), or serializer="pickle"'
        )
    if type(value) in _JSON_SCALARS:
        return
    if type(value) is not list and type(value) is not dict:
        raise _json_refusal(value, path)
    if len(path) == _JSON_MAX_DEPTH:
        raise ValueError(f"{_where(path)} is nested deeper than {_JSON_MAX_DEPTH} lists and dicts")
    if id(value) in open_:
        raise ValueError(f"{_where(path)} holds itself: JSON has no form for a cycle")
    open_.add(id(value))
    if type(value) is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(
                    f"{_where(path)} has the key {k!r}, {_type_name(k)}: JSON keys are str, "
                    'so it would come back a str; convert the keys, or pass serializer="pickle"'
                )
            path.append(k)
            _check_json(v, path, open_)
            path.pop()
    elif type(value) is list:
        for i, item in enumerate(value):
            path.append(i)
            _check_json(item, path, open_)
            path.pop()
    open_.discard(id(value))


def _json_refusal(value: object, path: list[object]) -> TypeError:
    where = _where(path)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.generic):
        return TypeError(
            f"{where} is a numpy scalar ({_type_name(value)}): pass numpy.asarray(x) for a "
            "0-d array (.npy), or x.item() for the Python number (JSON)"
        )
    if _is_tensor(value):
        return TypeError(
            f"{where} is {_type_name(value)}: store it named, as {{name: tensor}} (safetensors), "
            "or as tensor.numpy() (.npy)"
        )
    if isinstance(value, tuple):
        return TypeError(f"{where} is a tuple, which JSON gives back as a list: pass a list")
    if isinstance(value, (set, frozenset)):
        return TypeError(f"{where} is a set, which JSON has no form for: pass a sorted list")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return TypeError(
            f"{where} is {_type_name(value)}, which JSON has no form for: put bytes as they "
            "are with put(), or base64-encode them into a str"
        )
    for base in (bool, int, float, str, list, dict):
        if isinstance(value, base):
            return TypeError(
                f"{where} is {_type_name(value)}, a subclass of {base.__name__}, which JSON "
                f"gives back as a plain {base.__name__}: pass {base.__name__}(x)"
            )
    return TypeError(
        f"{where} is {_type_name(value)}: blobcache stores without pickle numpy arrays (.npy), "
        "dicts of str to arrays (safetensors) and plain data (None, bool, int, float, str, "
        'list, dict with str keys: JSON). Pass serializer="pickle" to pickle it, but only '
        "for a store nobody else can write: unpickling runs whatever code the bytes name"
    )


def _where(path: list[object]) -> str:
    return "value" + "".join(f"[{k!r}]" for k in path) if path else "the value"


# --- Unpickling ----------------------------------------------------------------------


def check_private(paths: Iterable[str], may_vanish: Collection[str] = ()) -> None:
    """Raise unless each of ``paths`` is owned by this user (or root) and writable
    by nobody else, as ssh's StrictModes refuses a world-writable ``~/.ssh``.

    The caller names them: the store's directories down to the value's file. Each
    is resolved with ``os.path.realpath`` first, so a symlink is judged by what it
    leads to, the object actually read (a link's own mode bits mean nothing on
    Linux); the directory holding a link is checked when it is named too. Mode
    bits only: an ACL granting a write is not seen. A path of ``may_vanish``
    that is gone is passed over (a log segment or temp file a compaction
    removed since the listing: what it held is in a segment listed too).

    :raises BlobCacheError: a path is another user's, or writable by its group or
        by others; the sentence names it and what to do.
    :raises OSError: a path cannot be looked at (``FileNotFoundError``, ...).
    """
    me = os.geteuid()
    for path in paths:
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            if path in may_vanish:
                continue
            raise
        shown = path if real == path else f"{path} (really {real})"
        if st.st_uid not in (me, 0):
            raise BlobCacheError(
                f"refusing to unpickle: {shown} is owned by uid {st.st_uid}, not you (uid "
                f"{me}) or root, so its owner could have written the pickle; keep pickled "
                "values in a store of your own"
            )
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable:
            both = writable == stat.S_IWGRP | stat.S_IWOTH
            who = "group and others" if both else "group" if writable & stat.S_IWGRP else "others"
            raise BlobCacheError(
                f"refusing to unpickle: {shown} is writable by {who} (mode "
                f"{stat.S_IMODE(st.st_mode):#o}), so another user could have written the "
                f"pickle; if the store is yours alone, run chmod go-w {real}"
            )


# --- Helpers -----------------------------------------------------------------------


def _no_numpy(what: str) -> ImportError:
    return ImportError(f"{what} needs numpy: pip install numpy")


def _is_array(value: object) -> TypeGuard[npt.NDArray[Any]]:
    # An ndarray exists only once numpy is imported: no import to find out.
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.ndarray)


def _is_tensor(value: object) -> bool:
    torch = sys.modules.get("torch")
    return _is_array(value) or (torch is not None and isinstance(value, torch.Tensor))


def _check_plain_array(arr: npt.NDArray[Any], what: str) -> None:
    """Refuse an ndarray subclass but memmap: what it adds (a mask, a matrix's
    two dimensions) would not come back."""
    import numpy as np

    if type(arr) is not np.ndarray and not isinstance(arr, np.memmap):
        raise TypeError(
            f"{what} is {_type_name(arr)}, an ndarray subclass, which would come back as a "
            'plain ndarray without what it adds: pass numpy.asarray(x), or serializer="pickle"'
        )


def _array_bytes(arr: npt.NDArray[Any]) -> memoryview | bytes:
    """The bytes of a C-contiguous array: a view of its memory, no copy.

    A uint8 view rather than ``memoryview(arr)``, which refuses some dtypes
    (datetime64); an array of no bytes has no such view.
    """
    if arr.nbytes == 0:
        return b""
    import numpy as np

    return arr.reshape(-1).view(np.uint8).data


def _byte_view(data: bytes | memoryview) -> memoryview:
    """``data`` as a flat read-only byte view: arrays over it cannot be written."""
    view = memoryview(data)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view.toreadonly()


def _type_name(value: object) -> str:
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"
