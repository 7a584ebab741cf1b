"""Unit tests of _codecs: typed values to stored bytes and back, without pickle.

Each encoding is checked against its own format's reader (numpy.load, safetensors)
both ways; blobcache's readers return read-only arrays over the bytes (no copy);
damaged headers are ValueErrors; pickle is used only when asked for, and read
only after the privacy check.
"""

from __future__ import annotations

import _pickle
import copyreg
import enum
import importlib.util
import io
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
import safetensors.numpy

from blobcache import _codecs as C
from blobcache import _format as F
from blobcache.errors import BlobCacheError

MIB = 1024 * 1024


def joined(encoded: C.Encoded) -> bytes:
    data = b"".join(encoded.parts)
    assert len(data) == encoded.length
    return data


def same_array(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> None:
    """Equal dtype, shape and bits (NaN included); a structured dtype's padding
    is left out, which numpy.load does not keep."""
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    if want.dtype.names:
        for name in want.dtype.names:
            same_array(got[name], want[name])
        return
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()


def shares(arr: np.ndarray[Any, Any], data: bytes | bytearray | memoryview) -> bool:
    return bool(np.shares_memory(arr, np.frombuffer(data, np.uint8)))


def npy_of(arr: np.ndarray[Any, Any], allow_pickle: bool = False) -> bytes:
    """``arr`` as numpy.save writes it."""
    out = io.BytesIO()
    np.save(out, arr, allow_pickle=allow_pickle)
    return out.getvalue()


# --- .npy ---------------------------------------------------------------------------

ARRAYS = {
    "float": np.linspace(0, 1, 12).reshape(3, 4),
    "0-d": np.array(2.5),
    "empty": np.zeros((0, 3), np.int16),
    "bool": np.array([True, False, True]),
    "complex": np.array([1 + 2j, -0.0 - 1j, complex("nan+infj")]),
    "structured": np.zeros(
        4, np.dtype([("a", "<i4"), ("b", "<f8", (2,)), ("c", "S3")], align=True)
    ),
    "big-endian": np.arange(5, dtype=">i8"),
    "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "3-d view": np.arange(120, dtype=np.float32).reshape(4, 5, 6)[::2, ::-1, 1:5],
    "datetime": np.array(["2024-01-01", "NaT"], dtype="M8[D]"),
    "unicode": np.array(["a", "ünï"]),
    "item size 0": np.zeros(3, dtype="V0"),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_npy_opens_with_numpy_and_decodes_to_an_equal_array(name: str, tmp_path: Path) -> None:
    arr = ARRAYS[name]
    encoded = C.encode(arr)
    assert encoded.codec == F.CODEC_NPY
    data = joined(encoded)
    assert len(encoded.parts[0]) % 64 == 0  # the data starts 64-byte aligned, as numpy's
    same_array(np.load(io.BytesIO(data), allow_pickle=False), arr)
    path = tmp_path / "a.npy"
    path.write_bytes(data)
    same_array(np.load(path, mmap_mode="r"), arr)
    back = C.decode(F.CODEC_NPY, data)
    assert isinstance(back, np.ndarray)
    same_array(back, arr)
    assert not back.flags.writeable
    assert back.nbytes == 0 or shares(back, data)


def test_a_header_over_64_kib_is_version_2() -> None:
    dtype = np.dtype([(f"field_{i:05d}_" + "x" * 40, "<i2") for i in range(1500)])
    arr = np.zeros(2, dtype)
    data = joined(C.encode(arr))
    assert data[6:8] == b"\x02\x00"
    assert len(data) - arr.nbytes > 65535
    same_array(np.load(io.BytesIO(data), allow_pickle=False, max_header_size=10**6), arr)
    same_array(C.decode_array(data), arr)


def test_small_arrays_are_version_1() -> None:
    assert joined(C.encode(np.zeros(3)))[6:8] == b"\x01\x00"


def test_a_c_contiguous_array_is_not_copied_to_encode() -> None:
    arr = np.ones(64 * MIB // 8)
    tracemalloc.start()
    try:
        encoded = C.encode(arr)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MIB
    assert isinstance(encoded.parts[1], memoryview)
    assert shares(arr, encoded.parts[1])


def test_a_large_array_is_not_copied_to_decode() -> None:
    arr = np.arange(64 * MIB // 8, dtype=np.int64)
    data = joined(C.encode(arr))
    tracemalloc.start()
    try:
        back = C.decode_array(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MIB
    assert shares(back, data)
    assert back[-1] == arr[-1]


def test_decoded_array_stays_read_only_over_a_writable_buffer() -> None:
    buffer = bytearray(joined(C.encode(np.arange(4.0))))
    back = C.decode_array(memoryview(buffer))
    assert not back.flags.writeable
    with pytest.raises(ValueError):
        back.flags.writeable = True
    assert shares(back, buffer)


def test_decodes_what_numpy_saves_fortran_order_included() -> None:
    arr = np.asfortranarray(np.arange(24, dtype=np.int32).reshape(2, 3, 4))
    data = npy_of(arr)
    back = C.decode_array(data)
    same_array(back, arr)
    assert back.flags.f_contiguous
    assert shares(back, data)


def test_numpys_own_headers_are_parsed_without_literal_eval() -> None:
    for arr in [
        np.zeros(()),
        np.zeros(3, ">c8"),
        np.zeros((2, 0, 12345), "M8[ns]"),
        np.zeros(2, "U7"),
    ]:
        data = npy_of(np.asfortranarray(arr))
        (length,) = struct.unpack_from("<H", data, 8)
        assert C._NPY_PLAIN_HEADER.fullmatch(data[10 : 10 + length].decode("latin-1"))


def test_reads_version_3_and_refuses_to_write_it() -> None:
    arr = np.zeros(2, [("ω", "<i4")])
    with pytest.warns(UserWarning, match="format 3.0"):
        data = npy_of(arr)
    assert data[6:8] == b"\x03\x00"
    same_array(C.decode_array(data), arr)
    with pytest.raises(TypeError, match="Latin-1"):
        C.encode(arr)


def test_a_header_in_another_layout_is_read_too() -> None:
    # Keys in another order and spacing: not numpy's layout, but the same literal.
    text = b"{'shape':(2,3),'fortran_order':False,'descr':'<u2'}\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + bytes(range(12))
    back = C.decode_array(data)
    same_array(back, np.frombuffer(bytes(range(12)), "<u2").reshape(2, 3))
    structured = np.zeros(2, [("a", "<i4"), ("b", "<f4")])
    same_array(C.decode_array(npy_of(structured)), structured)


OBJECT_NPY = npy_of(np.array([1, "a"], dtype=object), allow_pickle=True)


def test_object_arrays_are_refused_both_ways() -> None:
    with pytest.raises(TypeError, match="Python objects"):
        C.encode(np.array([1, "a"], dtype=object))
    with pytest.raises(TypeError, match="Python objects"):
        C.encode(np.zeros(2, [("a", "<i4"), ("b", "O")]))
    with pytest.raises(ValueError, match="never unpickles"):
        C.decode_array(OBJECT_NPY)


def test_ndarray_subclasses_are_refused_but_memmap(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="ndarray subclass"):
        C.encode(np.ma.masked_array([1, 2], mask=[False, True]))
    mapped = np.memmap(tmp_path / "m", dtype=np.float32, mode="w+", shape=(3,))
    mapped[:] = [1, 2, 3]
    same_array(C.decode_array(joined(C.encode(mapped))), np.array([1, 2, 3], np.float32))


@pytest.mark.parametrize("scalar", [np.float64(1.5), np.int32(3), np.bool_(True)])
def test_numpy_scalars_are_refused_with_both_ways_out(scalar: object) -> None:
    with pytest.raises(TypeError, match=r"numpy scalar .*numpy\.asarray\(x\).*x\.item\(\)"):
        C.encode(scalar)


def npy_with_header(text: bytes, data: bytes = b"") -> bytes:
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


GOOD_NPY = joined(C.encode(np.arange(3, dtype="<i4")))
DAMAGED_NPY = {
    "empty": b"",
    "no magic": b"\x93NUMPX" + GOOD_NPY[6:],
    "version 4.0": GOOD_NPY[:6] + b"\x04\x00" + GOOD_NPY[8:],
    "header past the end": GOOD_NPY[:8] + struct.pack("<H", 60000) + GOOD_NPY[10:],
    "data short": GOOD_NPY[:-1],
    "data long": GOOD_NPY + b"\x00",
    "no literal": npy_with_header(b"{'descr': <i4, \n"),
    "not a dict": npy_with_header(b"[1, 2]\n"),
    "extra key": npy_with_header(
        b"{'descr': '<i4', 'fortran_order': False, 'shape': (0,), 'x': 1}\n"
    ),
    "negative dimension": npy_with_header(
        b"{'descr': '<i4', 'fortran_order': False, 'shape': (-1,)}\n"
    ),
    "shape not a tuple": npy_with_header(b"{'descr': '<i4', 'fortran_order': False, 'shape': 3}\n"),
    "fortran_order not a bool": npy_with_header(
        b"{'descr': '<i4', 'fortran_order': 0, 'shape': (0,)}\n"
    ),
    "no dtype": npy_with_header(b"{'descr': '<q9', 'fortran_order': False, 'shape': (0,), }\n"),
    "too many dimensions": npy_with_header(
        b"{'descr': '<i4', 'fortran_order': False, 'shape': (" + b"0, " * 70 + b")}\n"
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGED_NPY))
def test_a_damaged_npy_header_is_a_value_error(damage: str) -> None:
    with pytest.raises(ValueError, match=r"not an \.npy value"):
        C.decode_array(DAMAGED_NPY[damage])


def test_forced_npy_takes_arrays_only() -> None:
    assert C.encode(np.zeros(2), serializer="npy").codec == F.CODEC_NPY
    with pytest.raises(TypeError, match=r'serializer="npy" takes a numpy\.ndarray, not list'):
        C.encode([1.0, 2.0], serializer="npy")


# --- safetensors ---------------------------------------------------------------------

TENSORS = {
    "bool": np.array([True, False]),
    "u8": np.arange(3, dtype=np.uint8),
    "i8": np.arange(-2, 2, dtype=np.int8),
    "u16": np.arange(3, dtype=np.uint16),
    "i16": np.arange(3, dtype=np.int16),
    "u32": np.arange(3, dtype=np.uint32),
    "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
    "u64": np.arange(3, dtype=np.uint64),
    "i64 big-endian": np.arange(3, dtype=">i8"),
    "f16": np.linspace(0, 1, 5, dtype=np.float16),
    "f32 view": np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::-1, ::2],
    "f64 0-d": np.array(math.pi),
    "empty": np.zeros((0, 4), np.float32),
    "ünï": np.ones(2, np.float32),
}


def test_safetensors_open_with_safetensors_and_decode_to_equal_arrays(tmp_path: Path) -> None:
    encoded = C.encode(TENSORS)
    assert encoded.codec == F.CODEC_SAFETENSORS
    data = joined(encoded)
    (length,) = struct.unpack_from("<Q", data)
    assert length % 8 == 0
    want = {name: arr.astype(arr.dtype.newbyteorder("<")) for name, arr in TENSORS.items()}
    loaded = safetensors.numpy.load(data)
    assert loaded.keys() == want.keys()
    for name, arr in want.items():
        same_array(loaded[name], arr)
    path = tmp_path / "t.safetensors"
    path.write_bytes(data)
    with safetensors.safe_open(str(path), framework="np") as f:
        for name, arr in want.items():
            same_array(f.get_tensor(name), arr)
    back = C.decode(F.CODEC_SAFETENSORS, data)
    assert isinstance(back, dict) and back.keys() == want.keys()
    for name, arr in want.items():
        same_array(back[name], arr)
        assert not back[name].flags.writeable
        assert back[name].nbytes == 0 or shares(back[name], data)


def test_every_tensor_starts_aligned_to_its_item_size() -> None:
    data = joined(C.encode(TENSORS))
    header_end = 8 + struct.unpack_from("<Q", data)[0]
    for name, arr in C.decode_tensors(data).items():
        assert (arr.ctypes.data - np.frombuffer(data, np.uint8).ctypes.data - header_end) % (
            arr.itemsize
        ) == 0, name
        assert arr.flags.aligned, name


def test_safetensors_bytes_do_not_depend_on_dict_order() -> None:
    reversed_ = dict(reversed(list(TENSORS.items())))
    assert joined(C.encode(reversed_)) == joined(C.encode(TENSORS))


def test_a_contiguous_little_endian_tensor_is_not_copied_to_encode() -> None:
    arr = np.ones(MIB, np.float32)
    parts = C.encode({"w": arr}).parts
    assert len(parts) == 2 and shares(arr, parts[1])


def test_decodes_what_safetensors_saves() -> None:
    tensors: dict[str, np.ndarray[Any, Any]] = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.zeros(3, np.int64),
    }
    data = safetensors.numpy.save(tensors, metadata={"format": "np"})
    back = C.decode_tensors(data)
    assert back.keys() == tensors.keys()
    for name, arr in tensors.items():
        same_array(back[name], arr)
        assert shares(back[name], data)


def test_a_state_dict_ordered_dict_is_stored_and_comes_back_a_dict() -> None:
    back = C.decode_tensors(joined(C.encode(OrderedDict(w=np.zeros(2)))))
    assert type(back) is dict and list(back) == ["w"]


def test_forced_safetensors_takes_an_empty_dict_and_refuses_other_values() -> None:
    assert C.decode_tensors(joined(C.encode({}, serializer="safetensors"))) == {}
    with pytest.raises(TypeError, match="takes a dict"):
        C.encode(np.zeros(2), serializer="safetensors")


@pytest.mark.parametrize(
    ("tensors", "error", "match"),
    [
        ({1: np.zeros(2)}, TypeError, "tensor names must be str, not int"),
        ({"c": np.zeros(2, np.complex64)}, TypeError, "safetensors has no name for"),
        ({"s": np.zeros(2, [("a", "<i4")])}, TypeError, "safetensors has no name for"),
        ({"t": np.array(["a"], np.dtypes.StringDType())}, TypeError, "has no name for"),
        ({"o": np.array([None])}, TypeError, "has no name for"),
        ({"w": np.zeros(2), "n": 3}, TypeError, "tensor 'n' is int, not a numpy array"),
        ({"__metadata__": np.zeros(2)}, ValueError, "metadata"),
        ({"\ud800": np.zeros(2)}, ValueError, "UTF-8"),
    ],
)
def test_tensors_that_do_not_fit_are_refused(
    tensors: dict[Any, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        C.encode(tensors)


def safetensors_bytes(header: object, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


DAMAGED_SAFETENSORS = {
    "short": b"\x01\x00",
    "header past the end": struct.pack("<Q", 100) + b"{}",
    "no JSON": struct.pack("<Q", 2) + b"{,",
    "not UTF-8": struct.pack("<Q", 2) + b"\xff\xfe",
    "not an object": safetensors_bytes([1]),
    "entry not an object": safetensors_bytes({"a": 3}),
    "no offsets": safetensors_bytes({"a": {"dtype": "U8", "shape": [1]}}),
    "negative dimension": safetensors_bytes({"a": entry("U8", [-1], 0, 0)}),
    "past the data": safetensors_bytes({"a": entry("U8", [4], 0, 4)}, b"abc"),
    "end before begin": safetensors_bytes({"a": entry("U8", [0], 2, 1)}, b"abc"),
    "shape does not fill": safetensors_bytes({"a": entry("F32", [2], 0, 4)}, b"abcd"),
    "overlapping": safetensors_bytes(
        {"a": entry("U8", [3], 0, 3), "b": entry("U8", [2], 2, 4)}, b"abcd"
    ),
    "a name twice": struct.pack("<Q", 106)
    + b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
    + b'"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}'
    + b"ab",
    "metadata not str to str": safetensors_bytes({"__metadata__": {"k": 1}}),
}


@pytest.mark.parametrize("damage", list(DAMAGED_SAFETENSORS))
def test_a_damaged_safetensors_header_is_a_value_error(damage: str) -> None:
    with pytest.raises(ValueError, match="not a safetensors value"):
        C.decode_tensors(DAMAGED_SAFETENSORS[damage])


def test_holes_and_trailing_bytes_are_allowed_but_not_overlaps() -> None:
    data = safetensors_bytes({"a": entry("U8", [1], 1, 2), "z": entry("U8", [0], 0, 0)}, b"xyz")
    back = C.decode_tensors(data)
    assert back["a"].tolist() == [ord("y")] and back["z"].shape == (0,)


def test_an_unknown_dtype_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="F8_E4M3, a dtype blobcache does not read"):
        C.decode_tensors(safetensors_bytes({"a": entry("F8_E4M3", [1], 0, 1)}, b"x"))


def test_bf16_needs_torch() -> None:
    data = safetensors_bytes({"a": entry("BF16", [2], 0, 4)}, b"\x80\x3f\x00\x40")
    with pytest.raises(TypeError, match='framework="torch"'):
        C.decode_tensors(data)
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(ImportError, match="needs torch"):
            C.decode_tensors(data, framework="torch")
    else:
        assert C.decode_tensors(data, framework="torch")["a"].tolist() == [1.0, 2.0]


def test_an_unknown_framework_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="framework"):
        C.decode_tensors(joined(C.encode({"a": np.zeros(1)})), framework="jax")  # type: ignore[arg-type]


def test_torch_tensors_round_trip() -> None:
    torch = pytest.importorskip("torch")
    tensors = {
        "bf16": torch.arange(4, dtype=torch.bfloat16),
        "f32": torch.ones(2, 3).t(),
        "empty": torch.zeros(0, 2, dtype=torch.int64),
        "0-d": torch.tensor(True),
    }
    data = joined(C.encode(tensors))
    import safetensors.torch

    for name, tensor in safetensors.torch.load(data).items():
        assert torch.equal(tensor, tensors[name])
    for name, tensor in C.decode_tensors(data, framework="torch").items():
        assert torch.equal(tensor, tensors[name])
    with pytest.raises(TypeError, match="safetensors lacks"):
        C.encode({"c": torch.zeros(2, dtype=torch.complex64)})


# --- JSON ------------------------------------------------------------------------------


def same_types(got: Any, want: Any) -> bool:
    if type(got) is not type(want):
        return False
    if isinstance(want, list):
        return all(same_types(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, dict):
        return all(same_types(got[k], w) for k, w in want.items())
    return True


PLAIN: list[object] = [
    None,
    True,
    0,
    -(2**70),
    int("9" * 4300),
    1.5,
    -0.0,
    1e-310,
    math.inf,
    "",
    "ünïcödé \x00 \u2028",
    [],
    {},
    {"a": [1, 2.0, "3", None, False, {"b": []}], "": {"": [[]]}},
]


@pytest.mark.parametrize("value", PLAIN, ids=lambda v: repr(v)[:20])
def test_plain_data_round_trips_equal_and_of_the_same_types(value: object) -> None:
    encoded = C.encode(value)
    assert encoded.codec == F.CODEC_JSON
    back = C.decode(F.CODEC_JSON, joined(encoded))
    assert back == value and same_types(back, value)


def test_nan_round_trips_and_is_not_strict_json() -> None:
    data = joined(C.encode([math.nan]))
    assert data == b"[NaN]"
    back = C.decode(F.CODEC_JSON, memoryview(data))
    assert isinstance(back, list) and math.isnan(back[0])


def test_json_is_compact_utf8() -> None:
    assert joined(C.encode({"k": ["ü", 1]})) == '{"k":["ü",1]}'.encode()


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ((1, 2), "the value is a tuple, which JSON gives back as a list"),
        ({"a": [1, (2,)]}, r"value\['a'\]\[1\] is a tuple"),
        ({1, 2}, "is a set"),
        (frozenset(), "is a set"),
        ({1: "a"}, "has the key 1, int: JSON keys are str"),
        ([b"x"], r"value\[0\] is bytes, which JSON has no form for: put bytes as they are"),
        (bytearray(b"x"), "is bytearray"),
        (Color.RED, "a subclass of int, which JSON gives back as a plain int"),
        ([Name("x")], "a subclass of str"),
        (OrderedDict(), "a subclass of dict"),
        (object(), 'is object: .*Pass serializer="pickle".*nobody else can write'),
        (np.zeros(2), "numpy.ndarray"),
    ],
)
def test_values_json_would_change_are_refused(value: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        C.encode(value, serializer="json")
    if not isinstance(value, np.ndarray):
        with pytest.raises(TypeError, match=match):
            C.encode(value)


def test_cycles_depth_huge_ints_and_surrogates_are_value_errors() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="holds itself"):
        C.encode(cycle)
    shared = [1]
    assert C.decode(F.CODEC_JSON, joined(C.encode([shared, shared]))) == [[1], [1]]
    deep: list[object] = []
    for _ in range(255):
        deep = [deep]
    assert C.decode(F.CODEC_JSON, joined(C.encode(deep))) == deep
    with pytest.raises(ValueError, match="nested deeper than 256"):
        C.encode([deep])
    with pytest.raises(ValueError, match="4300 digits"):
        C.encode([-(10**4300)])
    with pytest.raises(ValueError, match="UTF-8"):
        C.encode("\ud800")


def test_an_unknown_serializer_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="serializer must be"):
        C.encode(1, serializer="msgpack")


# --- pickle, and none elsewhere ---------------------------------------------------


def test_pickle_only_when_asked_and_read_only_once_trusted() -> None:
    value = {"set": {1, 2}, "tuple": (1, 2)}
    encoded = C.encode(value, serializer="pickle")
    assert encoded.codec == F.CODEC_PICKLE
    data = joined(encoded)
    assert data[:2] == b"\x80\x05"  # protocol 5
    calls: list[int] = []
    assert C.decode(F.CODEC_PICKLE, data, trusted=lambda: calls.append(1)) == value
    assert calls == [1]


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every way into pickle raise, and record who tried."""
    tried: list[str] = []

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: object, **kwargs: object) -> Any:
            tried.append(name)
            raise AssertionError(f"{name} called")

        return refused

    for module in (pickle, _pickle):
        for name in ("dumps", "loads", "dump", "load", "Pickler", "Unpickler"):
            monkeypatch.setattr(module, name, refuse(f"{module.__name__}.{name}"))
    for name in ("__newobj__", "__newobj_ex__", "_reconstructor", "_reduce_ex"):
        monkeypatch.setattr(copyreg, name, refuse(f"copyreg.{name}"))
    return tried


def test_no_codec_but_pickle_touches_pickle(no_pickle: list[str]) -> None:
    for value in [*ARRAYS.values(), TENSORS, *PLAIN]:
        encoded = C.encode(value)
        C.decode(encoded.codec, joined(encoded))
    C.decode_tensors(safetensors.numpy.save({"a": np.zeros(2)}))
    assert C.decode(F.CODEC_RAW, b"raw") == b"raw"
    for refused in [np.array([None]), object()]:
        with pytest.raises(TypeError):
            C.encode(refused)
    with pytest.raises(ValueError, match="never unpickles"):
        C.decode_array(OBJECT_NPY)
    with pytest.raises(ValueError, match="pickle was not asked for"):
        C.decode(F.CODEC_PICKLE, b"\x80\x05N.")

    def untrusted() -> None:
        raise BlobCacheError("refusing to unpickle: /x is writable by others")

    with pytest.raises(BlobCacheError, match="writable"):
        C.decode(F.CODEC_PICKLE, b"\x80\x05N.", trusted=untrusted)
    assert no_pickle == []


def test_raw_is_the_data_itself_and_an_unknown_codec_is_refused() -> None:
    data = memoryview(b"abc")
    assert C.decode(F.CODEC_RAW, data) is data
    with pytest.raises(ValueError, match="unknown codec 9"):
        C.decode(9, b"")


# --- check_private ---------------------------------------------------------------------


def private_dir(tmp_path: Path, name: str, mode: int) -> str:
    path = tmp_path / name
    path.mkdir()
    path.chmod(mode)
    return str(path)


def test_private_paths_pass(tmp_path: Path) -> None:
    store = private_dir(tmp_path, "store", 0o755)
    value = os.path.join(store, "v")
    Path(value).write_bytes(b"")
    os.chmod(value, 0o644)
    link = tmp_path / "link"
    link.symlink_to(store)
    C.check_private([str(tmp_path), store, value, str(link)])


@pytest.mark.parametrize(
    ("mode", "who"), [(0o777, "group and others"), (0o775, "group"), (0o757, "others")]
)
def test_a_path_others_can_write_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    store = private_dir(tmp_path, "store", mode)
    with pytest.raises(BlobCacheError, match=rf"writable by {who} \(mode {mode:#o}\).*chmod go-w"):
        C.check_private([store])


def test_a_file_others_can_write_is_refused(tmp_path: Path) -> None:
    value = tmp_path / "v"
    value.write_bytes(b"")
    value.chmod(0o666)
    with pytest.raises(BlobCacheError, match=r"refusing to unpickle: .*/v is writable"):
        C.check_private([str(tmp_path), str(value)])


def test_a_symlink_is_judged_by_what_it_leads_to(tmp_path: Path) -> None:
    shared = private_dir(tmp_path, "shared", 0o777)
    link = tmp_path / "link"
    link.symlink_to(shared)
    with pytest.raises(BlobCacheError, match=rf"{link} \(really {shared}\) is writable"):
        C.check_private([str(link)])


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_path_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = private_dir(tmp_path, "theirs", 0o755)
    os.chown(theirs, 12345, 12345)
    with pytest.raises(BlobCacheError, match=r"owned by uid 12345, not you \(uid 0\) or root"):
        C.check_private([theirs])


def test_a_missing_path_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        C.check_private([str(tmp_path / "missing")])


# --- imports ---------------------------------------------------------------------------

_WITHOUT_NUMPY = """
import sys
sys.modules["numpy"] = None
from blobcache import _codecs as C
encoded = C.encode({"a": [1, 2.5, None]})
assert C.decode(encoded.codec, b"".join(encoded.parts)) == {"a": [1, 2.5, None]}
try:
    C.decode_array(b"")
except ImportError as exc:
    print(exc)
"""

_IMPORT_ONLY = """
import sys
import blobcache._codecs
print("numpy" in sys.modules, "torch" in sys.modules)
"""


@pytest.mark.parametrize(
    ("code", "out"),
    [
        (_WITHOUT_NUMPY, "decode_array needs numpy: pip install numpy"),
        (_IMPORT_ONLY, "False False"),
    ],
)
def test_the_module_needs_no_numpy_to_import_or_for_json(code: str, out: str) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == out
