"""Memoize keys: an xxh3-128 digest of a function and the arguments of one call.

``Fingerprint(fn).key(args, kwargs)`` is 16 bytes that stay the same across
processes and Python runs for the same function and equal arguments, and move
when either changes in a way that could change the result. It owns the two
halves of that, and nothing else (``cache.memoize`` is to be built on it):

* The function part (``function_digest``): the module and ``__qualname__``, and
  a hash of the code object without its line numbers or file name (so a
  comment or blank line keeps the key, a bytecode change moves it), folding in,
  recursively, the code of the same-package functions it names as globals, and
  the values of its closure cells. With ``version=`` it is the module, the
  qualname and that version only: the user says when the meaning changed.
* The arguments: bound to the signature (defaults applied, so ``f(1)``,
  ``f(x=1)`` and ``f()`` with ``x=1`` agree), each value in a canonical encoding
  with a type tag (``1``, ``1.0``, ``True`` and ``"1"`` differ). A value whose
  state the encoding cannot see is refused with a TypeError naming the
  argument; there is no fallback to ``id()``, ``repr()`` or pickle, so a key
  never ignores state. A type (or a function) may say what it is keyed by
  with ``__blobcache_key__``.

numpy and torch are never imported here: an array is recognised only once its
module is in ``sys.modules``, which it must be for the array to exist.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import pathlib
import re
import reprlib
import struct
import sys
import types
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import xxhash

# The start of every function part: a change to the encoding below must change
# this, so that no key of the old encoding can equal one of the new.
_FORMAT = b"blobcache.fingerprint/1\0"

# Bytes and str data at least this long are fed to the hasher as they are
# rather than copied into the encoding buffer; the digest is the same either
# way (xxh3 streamed over pieces is xxh3 of their concatenation).
_BIG = 64 << 10
# A numpy array that is not C-contiguous little-endian is copied to C order in
# blocks of about this many bytes, so memory stays bounded.
_CHUNK = 16 << 20

_HEAD = struct.Struct("<cQ").pack  # a tag and a length (or count)
_INT = struct.Struct("<cq").pack
_FLOAT = struct.Struct("<cd").pack
_COMPLEX = struct.Struct("<cdd").pack
_NAN = struct.unpack("<d", b"\x00\x00\x00\x00\x00\x00\xf8\x7f")[0]  # the one quiet NaN
# The encodings of small ints and the heads of short strs, made once: looking
# one up takes a third of the time of packing it, on the path every key takes.
_SMALL_INTS = {i: _INT(b"i", i) for i in range(-256, 1024)}
_STR_HEADS = [_HEAD(b"s", n) for n in range(256)]

_ENCODER_HINT = "or give its type a __blobcache_key__ method returning an encodable value"


class _Refusal(Exception):
    """A value has no key. ``path`` gathers where it sits, innermost segment first,
    as the containers it is inside let it pass."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []

    def where(self) -> str:
        return "".join(reversed(self.path))


class _Context:
    """What one derivation shares across its sinks: the containers and functions
    being encoded (cycle guards), function parts done, and the device policy."""

    def __init__(self, copy_devices: bool = False) -> None:
        self.active: set[int] = set()  # ids of containers on the encoding stack
        self.walking: set[types.FunctionType] = set()  # functions whose part is being built
        self.done: dict[types.FunctionType, bytes] = {}  # function parts built already
        self.copy_devices = copy_devices


class _Sink(bytearray):
    """The encoding under way: bytes gathered here, large buffers streamed to a
    hasher. ``digest()`` is xxh3-128 of everything fed, in order.

    No ``__slots__``: the class attributes are the defaults, so the hot path
    (one call with small arguments) never sets an attribute.
    """

    hasher: xxhash.xxh3_128 | None = None
    ctx: _Context | None = None

    def stream(self, data: Any) -> None:
        """Feed ``data`` (any C-contiguous buffer) without copying it."""
        if self.hasher is None:
            self.hasher = xxhash.xxh3_128()
        self.hasher.update(self)
        self.clear()
        self.hasher.update(data)

    def digest(self) -> bytes:
        """REQUIRES: nothing is fed after (the buffer goes to the hasher)."""
        if self.hasher is None:
            return xxhash.xxh3_128_digest(self)
        self.hasher.update(self)
        return self.hasher.digest()

    def context(self) -> _Context:
        if self.ctx is None:
            self.ctx = _Context()
        return self.ctx

    def sub(self) -> _Sink:
        """A new sink in the same derivation (a dict item, a function part)."""
        sub = _Sink()
        sub.ctx = self.context()
        return sub


def _put_str(out: _Sink, text: str) -> None:
    try:
        data = text.encode()
    except UnicodeEncodeError:  # lone surrogates: their UTF-8 pattern (the same bytes otherwise)
        data = text.encode("utf-8", "surrogatepass")
    n = len(data)
    if n < 256:
        out += _STR_HEADS[n]
        out += data
    else:
        out += _HEAD(b"s", n)
        if n < _BIG:
            out += data
        else:
            out.stream(data)


def _str_bytes(text: str) -> bytes:
    out = _Sink()
    _put_str(out, text)
    return bytes(out)


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


# --- values ------------------------------------------------------------------

_Encoder = Callable[[Any, _Sink], None]


def _encode(x: Any, out: _Sink) -> None:
    encoder = _ENCODERS.get(type(x)) or _resolve(type(x))
    encoder(x, out)


def _encode_none(x: None, out: _Sink) -> None:
    out += b"0"


def _encode_ellipsis(x: Any, out: _Sink) -> None:
    out += b"."  # only code constants hold it, in practice


def _encode_bool(x: bool, out: _Sink) -> None:
    out += b"?\x01" if x else b"?\x00"


def _encode_int(x: int, out: _Sink) -> None:
    small = _SMALL_INTS.get(x)
    if small is not None:
        out += small
        return
    try:
        out += _INT(b"i", x)
    except struct.error:  # beyond 64 bits: its two's complement bytes, least significant first
        data = x.to_bytes(x.bit_length() // 8 + 1, "little", signed=True)
        out += _HEAD(b"I", len(data))
        out += data


def _float_bits(x: float) -> float:
    # Every NaN (sign, payload) is one value: they compare unequal to everything
    # alike. -0.0 keeps its sign: it equals 0.0 but 1/x and copysign tell them apart.
    return _NAN if x != x else x


def _encode_float(x: float, out: _Sink) -> None:
    out += _FLOAT(b"f", _float_bits(x))


def _encode_complex(x: complex, out: _Sink) -> None:
    out += _COMPLEX(b"c", _float_bits(x.real), _float_bits(x.imag))


def _encode_str(x: str, out: _Sink) -> None:
    _put_str(out, x)


def _bytes_encoder(tag: bytes) -> _Encoder:
    def encode(x: bytes | bytearray, out: _Sink) -> None:
        out += _HEAD(tag, len(x))
        if len(x) < _BIG:
            out += x
        else:
            out.stream(x)

    return encode


# Item formats of a memoryview that are plain numbers or bytes (struct codes,
# optionally with a byte order). Pointers ("P", "O") and records are refused.
_PLAIN_FORMAT = re.compile(r"[@=<>!]?[?cbBhHiIlLqQnNefdg]")


def _encode_memoryview(x: memoryview, out: _Sink) -> None:
    if not _PLAIN_FORMAT.fullmatch(x.format):
        raise _Refusal(f"cannot derive a cache key from a memoryview of items {x.format!r}")
    out += _HEAD(b"m", x.nbytes)
    _put_str(out, x.format)  # the format as given: "<i" and "i" differ (a miss, never a hit)
    _encode_tuple(x.shape or (), out)
    data = x if x.c_contiguous else x.tobytes()  # tobytes: C order
    if x.nbytes < _BIG:
        out += data
    else:
        out.stream(data)


def _encode_tuple(x: tuple[Any, ...], out: _Sink) -> None:
    # No cycle guard: a tuple cannot hold itself but through a list, dict or
    # object, and those guard.
    out += _HEAD(b"t", len(x))
    for i, item in enumerate(x):
        try:
            _encode(item, out)
        except _Refusal as exc:
            exc.path.append(f"[{i}]")
            raise


def _enter(out: _Sink, x: object, what: str) -> _Context:
    """Guard against ``x`` holding itself. REQUIRES: ``_leave`` once ``x`` is done."""
    ctx = out.context()
    if id(x) in ctx.active:
        raise _Refusal(f"a {what} that contains itself: a cycle has no key")
    ctx.active.add(id(x))
    return ctx


def _leave(ctx: _Context, x: object) -> None:
    # A refusal skips this; it abandons the whole derivation, context and all.
    ctx.active.discard(id(x))


def _encode_list(x: list[Any], out: _Sink) -> None:
    ctx = _enter(out, x, "list")
    out += _HEAD(b"l", len(x))
    for i, item in enumerate(x):
        try:
            _encode(item, out)
        except _Refusal as exc:
            exc.path.append(f"[{i}]")
            raise
    _leave(ctx, x)


def _encode_dict(x: dict[Any, Any], out: _Sink) -> None:
    # Order-free: each (key, value) pair is encoded on its own and digested, and
    # the digests are sorted. Digesting (rather than sorting the encodings) lets
    # a dict of large arrays stream them instead of copying them into memory.
    ctx = _enter(out, x, "dict")
    digests = []
    for k, v in x.items():
        pair = out.sub()
        _encode_at(k, pair, f"<key {reprlib.repr(k)}>")
        _encode_at(v, pair, f"[{reprlib.repr(k)}]")
        digests.append(pair.digest())
    _put_sorted(out, b"d", digests)
    _leave(ctx, x)


def _encode_at(x: Any, out: _Sink, where: str) -> None:
    """``_encode``, naming ``where`` in the path of a refusal."""
    try:
        _encode(x, out)
    except _Refusal as exc:
        exc.path.append(where)
        raise


def _put_sorted(out: _Sink, tag: bytes, digests: list[bytes]) -> None:
    """An unordered collection: its tag and count, then its members' digests sorted."""
    digests.sort()
    out += _HEAD(tag, len(digests))
    out += b"".join(digests)


def _set_encoder(tag: bytes) -> _Encoder:
    def encode(x: set[Any] | frozenset[Any], out: _Sink) -> None:
        # A set cannot hold itself (it is not hashable): no cycle guard.
        digests = []
        for item in x:
            one = out.sub()
            _encode_at(item, one, f"{{{reprlib.repr(item)}}}")
            digests.append(one.digest())
        _put_sorted(out, tag, digests)

    return encode


def _encode_path(x: pathlib.PurePath, out: _Sink) -> None:
    # The flavour, not the class: Path("a") and PurePosixPath("a") name the same file.
    out += b"pw" if isinstance(x, pathlib.PureWindowsPath) else b"pp"
    _put_str(out, str(x))


def _encode_function(fn: types.FunctionType, out: _Sink) -> None:
    if getattr(fn, "__blobcache_key__", None) is not None:
        # A function may say what it is keyed by, as an object may: a memoize
        # wrapper reached as a helper, say, by the function it wraps.
        _encode_hooked(fn, out)
        return
    ctx = out.context()
    if fn in ctx.walking:  # recursion (f calls g calls f): name it, do not descend
        out += b"R"
        _put_str(out, f"{fn.__module__}.{fn.__qualname__}")
    else:
        out += b"F"
        out += _function_part(fn, ctx, with_defaults=True)


def _encode_builtin(fn: types.BuiltinFunctionType, out: _Sink) -> None:
    # A C function: its name is all there is to see. Bound to an object (as
    # [].append is), that object is state the name does not show.
    owner = fn.__self__
    if owner is not None and not isinstance(owner, types.ModuleType):
        raise _Refusal(
            f"cannot derive a cache key from a method bound to a {_type_name(type(owner))}"
        )
    out += b"M"
    _put_str(out, f"{fn.__module__}.{fn.__qualname__}")


def _encode_hooked(x: Any, out: _Sink) -> None:
    ctx = _enter(out, x, _type_name(type(x)))
    out += b"k"
    _put_str(out, _type_name(type(x)))
    try:
        _encode(x.__blobcache_key__(), out)
    except _Refusal as exc:
        exc.path.append(".__blobcache_key__()")
        raise
    _leave(ctx, x)


def _encode_enum(x: enum.Enum, out: _Sink) -> None:
    out += b"e"
    _put_str(out, _type_name(type(x)))
    name = x._name_
    if isinstance(name, str):
        _put_str(out, name)
    else:  # a Flag combination without a name of its own: its value
        out += b"v"
        _encode(x._value_, out)


def _encode_namedtuple(x: Any, out: _Sink) -> None:
    if getattr(x, "__dict__", None):  # a subclass without __slots__ holding attributes
        raise _Refusal(
            f"cannot derive a cache key from a {_type_name(type(x))}: it holds attributes "
            "besides its fields"
        )
    out += b"n"
    _put_str(out, _type_name(type(x)))
    _fields(out, zip(type(x)._fields, x, strict=True))


def _encode_dataclass(x: Any, out: _Sink) -> None:
    ctx = _enter(out, x, _type_name(type(x)))
    out += b"D"
    _put_str(out, _type_name(type(x)))
    _fields(out, ((f.name, getattr(x, f.name)) for f in dataclasses.fields(x)))
    _leave(ctx, x)


def _fields(out: _Sink, pairs: Iterable[tuple[str, Any]]) -> None:
    items = list(pairs)
    out += _HEAD(b"t", len(items))
    for name, value in items:
        _put_str(out, name)
        try:
            _encode(value, out)
        except _Refusal as exc:
            exc.path.append(f".{name}")
            raise


# Exact types only: a subclass is looked at by ``_resolve``.
_ENCODERS: dict[type, _Encoder] = {
    type(None): _encode_none,
    type(Ellipsis): _encode_ellipsis,
    bool: _encode_bool,
    int: _encode_int,
    float: _encode_float,
    complex: _encode_complex,
    str: _encode_str,
    bytes: _bytes_encoder(b"b"),
    bytearray: _bytes_encoder(b"B"),  # distinct from bytes: mutable, and f may tell them apart
    memoryview: _encode_memoryview,
    tuple: _encode_tuple,
    list: _encode_list,
    dict: _encode_dict,
    set: _set_encoder(b"S"),
    frozenset: _set_encoder(b"Z"),
    pathlib.PurePosixPath: _encode_path,
    pathlib.PureWindowsPath: _encode_path,
    pathlib.PosixPath: _encode_path,
    pathlib.WindowsPath: _encode_path,
    types.FunctionType: _encode_function,
    types.BuiltinFunctionType: _encode_builtin,
}

_encode_bytes = _ENCODERS[bytes]

# Subclasses of these are refused (unless an enum, a NamedTuple, a numpy scalar
# or hooked): a subclass may hold attributes, a default_factory, or a meaning
# its base's value does not show (an OrderedDict's == heeds order).
_BUILTIN_VALUES = (int, float, complex, str, bytes, bytearray, tuple, list, dict, set, frozenset)


def _resolve(t: type) -> _Encoder:
    """The encoder for instances of ``t``, a type not (yet) in ``_ENCODERS``;
    remembered there when one is found. Raises ``_Refusal`` otherwise."""
    encoder = _find_encoder(t)
    # Invariant: what _find_encoder picks depends on ``t`` alone. (It keeps ``t``
    # alive; types made in a loop are rare among arguments.)
    _ENCODERS[t] = encoder
    return encoder


def _find_encoder(t: type) -> _Encoder:
    if getattr(t, "__blobcache_key__", None) is not None:
        return _encode_hooked
    if issubclass(t, enum.Enum):
        return _encode_enum
    np = sys.modules.get("numpy")
    if np is not None:
        if t is np.ndarray or t is np.memmap:
            return _encode_ndarray
        if issubclass(t, np.generic):
            return _encode_numpy_scalar
        if issubclass(t, np.ndarray):  # masked arrays, matrices: state or meaning beside the data
            raise _Refusal(
                f"cannot derive a cache key from a {_type_name(t)} (only numpy.ndarray and "
                "numpy.memmap are keyed: pass numpy.asarray(value))"
            )
    torch = sys.modules.get("torch")
    if torch is not None and issubclass(t, torch.Tensor):
        if t is torch.Tensor or t is torch.nn.Parameter:
            return _encode_tensor
        raise _Refusal(f"cannot derive a cache key from a tensor subclass {_type_name(t)}")
    if issubclass(t, tuple) and hasattr(t, "_fields"):
        return _encode_namedtuple
    base = next((b for b in _BUILTIN_VALUES if issubclass(t, b)), None)
    if base is not None:
        raise _Refusal(
            f"cannot derive a cache key from a {_type_name(t)}: a subclass of {base.__name__} "
            f"may hold state its {base.__name__} value does not show (convert it first)"
        )
    if dataclasses.is_dataclass(t):
        return _encode_dataclass
    raise _Refusal(f"cannot derive a cache key from a {_type_name(t)}")


# --- numpy and torch -----------------------------------------------------------


def _encode_ndarray(a: Any, out: _Sink) -> None:
    out += b"A"
    _array_body(a, out)


def _encode_numpy_scalar(x: Any, out: _Sink) -> None:
    # Its own tag: numpy.float64(1.0) is not 1.0 (nor a 0-d array) to the function.
    out += b"a"
    _array_body(sys.modules["numpy"].asarray(x), out)


def _array_body(a: Any, out: _Sink) -> None:
    """dtype, shape, then the values in C order, little-endian."""
    np = sys.modules["numpy"]
    dtype = a.dtype
    if dtype.hasobject:
        raise _Refusal("cannot derive a cache key from a numpy array of Python objects")
    # Big-endian (or native on a big-endian host) is keyed as little-endian, so
    # equal values give equal keys whatever the byte order they are stored in.
    little = dtype.newbyteorder("<")
    if little.fields is None and little.subdtype is None:
        _put_str(out, little.str)
    else:  # records: the field names, types and offsets (padding bytes are hashed as they are)
        out += b"r"
        _encode(little.descr, out)
    _encode_tuple(a.shape, out)
    if a.nbytes == 0:
        return
    if a.flags.c_contiguous and little == dtype:
        # The fast path: the array's own memory, no copy (a memmap's pages too).
        data = a.reshape(-1).view(np.uint8)
        if a.nbytes < _BIG:
            out += data
        else:
            out.stream(data)
    else:
        _stream_c_order(np, a, little, out)


def _stream_c_order(np: Any, a: Any, little: Any, out: _Sink) -> None:
    """Feed ``a``'s values in C order as ``little``, copying about ``_CHUNK`` bytes at
    a time. REQUIRES: ``a.nbytes > 0``."""
    if a.nbytes <= _CHUNK or a.ndim == 0:
        out.stream(np.ascontiguousarray(a, dtype=little).reshape(-1).view(np.uint8))
    elif a.ndim == 1:
        step = max(1, _CHUNK // a.itemsize)
        for start in range(0, a.shape[0], step):
            block = np.ascontiguousarray(a[start : start + step], dtype=little)
            out.stream(block.view(np.uint8))
    else:
        rows = _CHUNK // a[0].nbytes
        if rows == 0:  # one row is more than a chunk: each row on its own
            for row in a:
                _stream_c_order(np, row, little, out)
        else:
            for start in range(0, a.shape[0], rows):
                block = np.ascontiguousarray(a[start : start + rows], dtype=little)
                out.stream(block.reshape(-1).view(np.uint8))


def _encode_tensor(t: Any, out: _Sink) -> None:
    torch = sys.modules["torch"]
    if t.layout != torch.strided:
        raise _Refusal(f"cannot derive a cache key from a tensor of layout {t.layout}")
    if t.is_quantized:
        raise _Refusal("cannot derive a cache key from a quantized tensor")
    if t.device.type != "cpu":
        ctx = out.ctx
        if ctx is None or not ctx.copy_devices:
            raise _Refusal(
                f"a torch.Tensor on {t.device} has no key by default: pass "
                "device_policy='copy' to key a CPU copy of it"
            )
        t = t.cpu()
    # Values as they read, in C order: a lazy conjugate or negation is applied first.
    t = t.detach().resolve_conj().resolve_neg().contiguous()
    out += b"T"
    _put_str(out, f"{t.dtype} {sys.byteorder}")  # str(dtype) names bfloat16 too
    _encode_tuple(tuple(t.shape), out)
    nbytes = t.numel() * t.element_size()
    if nbytes:
        # The raw bytes, read in place through ctypes: no numpy (which has no
        # bfloat16), no copy. ``t`` stays alive while they are hashed.
        import ctypes

        out.stream(memoryview((ctypes.c_char * nbytes).from_address(t.data_ptr())))


# --- functions -------------------------------------------------------------------

# Code objects are immutable: their digest and the global names they use are
# worked out once. Weak keys: a lambda made per call must not live forever.
_CODES: weakref.WeakKeyDictionary[types.CodeType, tuple[bytes, tuple[str, ...]]] = (
    weakref.WeakKeyDictionary()
)


def _code_facts(code: types.CodeType) -> tuple[bytes, tuple[str, ...]]:
    """The digest of ``code`` (nested code by the same rule) and the sorted global
    names it and its nested code use."""
    facts = _CODES.get(code)
    if facts is not None:
        return facts
    out = _Sink()
    # Bytecode means something only to the interpreter that compiled it.
    _put_str(out, sys.implementation.cache_tag or sys.implementation.name)
    _put_str(out, code.co_name)
    _encode_bytes(code.co_code, out)
    _encode_bytes(getattr(code, "co_exceptiontable", b""), out)  # 3.11+; offsets, no lines
    _encode_tuple(
        (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags), out
    )
    _encode_tuple(code.co_names, out)
    _encode_tuple(code.co_varnames, out)
    _encode_tuple(code.co_freevars, out)
    _encode_tuple(code.co_cellvars, out)
    names = set(code.co_names)
    out += _HEAD(b"t", len(code.co_consts))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            digest, inner = _code_facts(const)
            out += b"C" + digest
            names.update(inner)
        else:
            _encode(const, out)
    facts = (out.digest(), tuple(sorted(names)))
    _CODES[code] = facts
    return facts


def _function_part(fn: types.FunctionType, ctx: _Context, *, with_defaults: bool) -> bytes:
    """The digest of ``fn``: module, qualname, code, defaults (``with_defaults``),
    closure cells, and same-package helpers it names as globals.

    A function decorated with functools.wraps is hashed as given: its wrapper's
    code, and the wrapped function by the closure cell that holds it.
    """
    done = ctx.done.get(fn) if with_defaults else None
    if done is not None:
        return done
    ctx.walking.add(fn)
    out = _Sink()
    out.ctx = ctx
    qualname = f"{fn.__module__}.{fn.__qualname__}"
    _put_str(out, qualname)
    digest, names = _code_facts(fn.__code__)
    out += digest
    if with_defaults:  # a helper's defaults are part of its definition, not in its code
        for attribute in ("__defaults__", "__kwdefaults__"):
            try:
                _encode(getattr(fn, attribute), out)
            except _Refusal as exc:
                raise _Refusal(
                    f"a default of {qualname} ({attribute}{exc.where()}): {exc.reason}"
                ) from None
    closure = fn.__closure__ or ()
    out += _HEAD(b"t", len(closure))
    for name, cell in zip(fn.__code__.co_freevars, closure, strict=True):
        _put_str(out, name)
        try:
            value = cell.cell_contents
        except ValueError:  # not assigned yet
            out += b"x"
            continue
        if name == "__class__" and isinstance(value, type):
            # The class a method using super() is defined in: its qualname
            # already says which; its methods are not this function's code.
            out += b"K"
            _put_str(out, _type_name(value))
            continue
        try:
            _encode(value, out)
        except _Refusal as exc:
            where = exc.where()
            raise _Refusal(
                f"closure cell {name!r} of {qualname} holds a {_type_name(type(value))}"
                f"{', at ' + where if where else ''}: {exc.reason}"
            ) from None
    # Helpers: functions of the same top-level package the code names as
    # globals, so that editing one moves the key. (Not followed: methods,
    # helpers reached through a module attribute, global constants.)
    package = (fn.__module__ or "").split(".")[0]
    scope = fn.__globals__
    for name in names:
        helper = scope.get(name)
        if type(helper) is types.FunctionType and (
            (helper.__module__ or "").split(".")[0] == package
        ):
            _put_str(out, name)
            _encode_function(helper, out)
    ctx.walking.discard(fn)
    part = out.digest()
    if with_defaults:
        ctx.done[fn] = part
    return part


def function_digest(
    fn: Callable[..., Any], *, version: str | int | None = None, copy_devices: bool = False
) -> bytes:
    """The function part of ``fn``'s keys: 16 bytes, the prefix of every key.

    With ``version``: module, qualname and version only (any callable). Without:
    the code rule above (a plain Python function only); closure cells and
    helpers are read now, so call this once they are all defined. ``fn``'s own
    defaults are left out: ``Fingerprint`` binds them as arguments.

    :raises TypeError: no ``version`` and ``fn`` is not a Python function, or a
        closure cell (or a helper's default) has no key.
    """
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):
        raise TypeError(f"cannot key {fn!r}: it has no __qualname__ to name it by")
    name = f"{getattr(fn, '__module__', None)}.{qualname}"
    out = _Sink(_FORMAT)
    if version is not None:
        out += b"V"
        _put_str(out, name)
        _encode(version, out)
        return out.digest()
    if not isinstance(fn, types.FunctionType):
        raise TypeError(
            f"cannot key {name} by its code: it is a {type(fn).__name__}, not a Python "
            "function; pass version= to key it by a version you give"
        )
    out += b"P"
    try:
        out += _function_part(fn, _Context(copy_devices), with_defaults=False)
    except _Refusal as exc:
        raise TypeError(
            f"cannot derive the cache key of {name} from its code: {exc.reason}; pass "
            "version= to key it by a version you give instead"
        ) from None
    return out.digest()


# --- keys ----------------------------------------------------------------------

_EMPTY = inspect.Parameter.empty
_POSITIONAL_ONLY = inspect.Parameter.POSITIONAL_ONLY
_VAR_POSITIONAL = inspect.Parameter.VAR_POSITIONAL
_VAR_KEYWORD = inspect.Parameter.VAR_KEYWORD
_POSITIONAL = (_POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_NEVER = sys.maxsize  # the argument index of a parameter positional arguments never fill
# The kinds of parameter a keyword argument of the same name does not bind to.
_NOT_BY_NAME = (_POSITIONAL_ONLY, _VAR_POSITIONAL, _VAR_KEYWORD)


class Fingerprint:
    """Memoize keys of calls of ``fn``.

    ``key(args, kwargs)`` is xxh3-128 of ``fn``'s function part
    (``function_digest``) and then each bound argument, as its name and its
    encoded value, in signature order; ``ignore`` names parameters left out.
    ``self`` of a method is an argument like any other: its type needs a
    ``__blobcache_key__`` method, or decorate with ``ignore=("self",)``.

    The function part is worked out at the first ``key()`` (helpers may be
    defined after ``fn``) and kept: closure cells reassigned later are not seen.
    Global constants, methods, and helpers reached as a module's attributes
    are not followed either: for those, ``version=``.

    :param version: key the function by this instead of its code (see
        ``function_digest``).
    :param device_policy: ``"error"`` refuses a torch tensor not on the CPU;
        ``"copy"`` keys a CPU copy of it.
    :raises ValueError: a name in ``ignore`` is not a parameter of ``fn``, or an
        unknown ``device_policy``.
    :raises TypeError: ``version`` is neither str nor int; ``ignore`` is a str.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        version: str | int | None = None,
        ignore: Iterable[str] = (),
        device_policy: str = "error",
    ) -> None:
        if device_policy not in ("error", "copy"):
            raise ValueError(f"device_policy must be 'error' or 'copy', not {device_policy!r}")
        if version is not None and (
            isinstance(version, bool) or not isinstance(version, (str, int))
        ):
            raise TypeError(f"version must be a str or an int, not {type(version).__name__}")
        self._fn = fn
        self._version = version
        self._copy_devices = device_policy == "copy"
        # The signature of fn itself, not of what it wraps: the code hashed is fn's.
        self._signature = inspect.signature(fn, follow_wrapped=False)
        params = list(self._signature.parameters.values())
        if isinstance(ignore, str):  # ignore=("verbose") is the str "verbose"
            raise TypeError(f"ignore takes parameter names, not one str: ignore=({ignore!r},)")
        ignored = set(ignore)
        unknown = sorted(ignored - {p.name for p in params})
        if unknown:
            raise ValueError(
                f"ignore names {', '.join(map(repr, unknown))}, not parameters of "
                f"{getattr(fn, '__qualname__', fn)}{self._signature}"
            )
        self._names = tuple(p.name for p in params)
        self._labels = tuple(None if p.name in ignored else _str_bytes(p.name) for p in params)
        # Binding without inspect (see _bind_keywords). A *args or **kwargs left
        # empty binds to () or {}, as apply_defaults() does.
        self._params: list[tuple[int, str, object, Any]] = []
        for i, p in enumerate(params):
            default: Any = p.default
            if p.kind is _VAR_POSITIONAL:
                default = ()
            elif p.kind is _VAR_KEYWORD:
                default = {}
            self._params.append((i if p.kind in _POSITIONAL else _NEVER, p.name, p.kind, default))
        self._most = sum(p.kind in _POSITIONAL for p in params)
        self._least = sum(p.kind in _POSITIONAL and p.default is _EMPTY for p in params)
        self._var_positional = any(p.kind is _VAR_POSITIONAL for p in params)
        self._keywords = frozenset(p.name for p in params if p.kind not in _NOT_BY_NAME)
        # The fast path of key(): positional arguments only, filling leading plain
        # positional parameters; the others take their defaults, read at each call
        # as bind reads them (a default may be mutable). Never with a required
        # keyword-only parameter.
        self._fast_most = self._most
        if any(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is _EMPTY for p in params):
            self._fast_most = -1
        self._plan = [
            (i, name, label, default)
            for (i, name, _, default), label in zip(self._params, self._labels, strict=True)
            if label is not None
        ]
        self._prefix: bytes | None = None  # the function part, on the first key()

    def _prepare(self) -> bytes:
        # Two threads may both get here; they compute the same bytes.
        self._prefix = function_digest(
            self._fn, version=self._version, copy_devices=self._copy_devices
        )
        return self._prefix

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        """The 16-byte key of the call ``fn(*args, **kwargs)``.

        :raises TypeError: the arguments do not bind to the signature, or one
            has no key (the message names it and says where in it); or the
            function part has none (see ``function_digest``).
        """
        prefix = self._prefix
        if prefix is None:
            prefix = self._prepare()
        out = _Sink(prefix)
        if self._copy_devices:
            out.ctx = _Context(copy_devices=True)
        n = len(args)
        if not kwargs and self._least <= n <= self._fast_most:
            for i, name, label, default in self._plan:
                out += label
                value = args[i] if i < n else default
                try:
                    encoder = _ENCODERS.get(type(value)) or _resolve(type(value))
                    encoder(value, out)
                except _Refusal as exc:
                    raise _argument_error(name, exc) from None
        else:
            values = self._bind_keywords(args, kwargs)
            if values is None:
                values = self._bind_inspect(args, kwargs)
            self._encode_values(values, out)
        if out.hasher is None:  # nothing streamed: one call (out.digest(), inlined)
            return xxhash.xxh3_128_digest(out)
        return out.digest()

    def _bind_keywords(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any] | None:
        """Each parameter's value, as ``_bind_inspect`` finds them, but about 3x faster;
        None when binding fails or is unusual (inspect then binds, or says why not)."""
        n = len(args)
        if n > self._most and not self._var_positional:
            return None
        taken = 0  # the keyword arguments bound
        values = []
        for i, name, kind, default in self._params:
            if i < n:
                if kind is not _POSITIONAL_ONLY and name in kwargs:
                    return None  # given twice
                value = args[i]
            elif kind is _VAR_POSITIONAL:
                value = args[self._most :]
            elif kind is _VAR_KEYWORD:
                value = {k: v for k, v in kwargs.items() if k not in self._keywords}
                taken += len(value)
            else:
                value = _EMPTY if kind is _POSITIONAL_ONLY else kwargs.get(name, _EMPTY)
                if value is _EMPTY:
                    if default is _EMPTY:
                        return None  # missing
                    value = default
                else:
                    taken += 1
            values.append(value)
        return values if taken == len(kwargs) else None

    def _bind_inspect(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        """Each parameter's value, by ``inspect.Signature.bind`` and its defaults."""
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return [bound.arguments[name] for name in self._names]

    def _encode_values(self, values: list[Any], out: _Sink) -> None:
        for name, label, value in zip(self._names, self._labels, values, strict=True):
            if label is not None:  # else ignored
                out += label
                try:
                    _encode(value, out)
                except _Refusal as exc:
                    raise _argument_error(name, exc) from None


def _argument_error(name: str, exc: _Refusal) -> TypeError:
    where = exc.where()
    return TypeError(
        f"argument {name!r}{' ' + where if where else ''}: {exc.reason}; leave it out of the "
        f"key with ignore=({name!r},), {_ENCODER_HINT}"
    )
