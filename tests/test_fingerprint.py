"""Tests of _fingerprint: memoize keys of a function and the bound arguments of a call."""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import os
import pathlib
import socket
import struct
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobcache import _fingerprint as FP
from blobcache._fingerprint import Fingerprint, function_digest

REPO = pathlib.Path(__file__).resolve().parent.parent


def key(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
    return Fingerprint(fn).key(args, kwargs)


def value_key(value: Any) -> bytes:
    """The key of one argument, of a fixed one-parameter function."""
    return Fingerprint(_one).key((value,), {})


def _one(x: Any) -> None:
    pass


def define(source: str, *, module: str = "fpmod", blank_lines: int = 0, **names: Any) -> Any:
    """Run ``source`` as the module ``module`` (``blank_lines`` before it moves every
    line number) and return its namespace; ``names`` are globals it starts with."""
    scope: dict[str, Any] = {"__name__": module, **names}
    code = compile("\n" * blank_lines + textwrap.dedent(source), f"<{module}>", "exec")
    exec(code, scope)
    return types.SimpleNamespace(**scope)


def run_python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )
    return result.stdout


# --- the function part -----------------------------------------------------------

BODY = """
def helper(y):
    return y * 2

def f(x):
    y = x + 1
    return helper(y)
"""

BODY_WITH_COMMENTS = """
def helper(y):

    # doubles
    return y * 2

def f(x):
    # a comment, and a blank line below

    y = x + 1  # trailing comment
    return helper(y)
"""


def test_comments_and_blank_lines_keep_the_key() -> None:
    a = define(BODY)
    b = define(BODY_WITH_COMMENTS, blank_lines=7)
    assert a.f.__code__.co_firstlineno != b.f.__code__.co_firstlineno
    assert key(a.f, 1) == key(b.f, 1)


@pytest.mark.parametrize(
    "edit", [("x + 1", "x + 2"), ("x + 1", "x - 1"), ("y * 2", "y * 3"), ("y = x", "z = x")]
)
def test_a_bytecode_change_moves_the_key(edit: tuple[str, str]) -> None:
    old, new = edit
    source = BODY.replace("return helper(y)", "return helper(z)") if old == "y = x" else BODY
    assert key(define(source).f, 1) != key(define(source.replace(old, new)).f, 1)


def test_module_and_qualname_are_in_the_key() -> None:
    assert key(define(BODY).f, 1) != key(define(BODY, module="other").f, 1)
    renamed = define(BODY.replace("def f(", "def g("))
    assert key(define(BODY).f, 1) != key(renamed.g, 1)


def test_version_keys_by_module_qualname_and_version_only() -> None:
    a, b = define(BODY).f, define(BODY.replace("x + 1", "x + 2")).f
    assert Fingerprint(a, version=1).key((1,), {}) == Fingerprint(b, version=1).key((1,), {})
    keys = {
        Fingerprint(a, version=1).key((1,), {}),
        Fingerprint(a, version=2).key((1,), {}),
        Fingerprint(a, version="1").key((1,), {}),
        Fingerprint(a).key((1,), {}),
        Fingerprint(define(BODY, module="other").f, version=1).key((1,), {}),
    }
    assert len(keys) == 5


def test_version_must_be_str_or_int() -> None:
    with pytest.raises(TypeError, match="version must be"):
        Fingerprint(_one, version=True)
    with pytest.raises(TypeError, match="version must be"):
        Fingerprint(_one, version=1.5)  # type: ignore[arg-type]


def test_editing_a_helper_moves_the_key() -> None:
    edited = define(BODY.replace("y * 2", "y * 3"))
    assert key(define(BODY).f, 1) != key(edited.f, 1)


def test_helpers_are_followed_through_nested_code_and_chains() -> None:
    source = """
    def leaf(v):
        return v + 1

    def middle(v):
        return leaf(v)

    def f(x):
        return (lambda: middle(x))()
    """
    assert key(define(source).f, 1) != key(define(source.replace("v + 1", "v + 5")).f, 1)


def test_a_helper_defined_after_the_function_is_found_at_the_first_key() -> None:
    late = define("def f(x):\n    return helper(x + 1)\n")
    fp = Fingerprint(late.f)  # helper does not exist yet
    exec("def helper(y):\n    return y * 2\n", late.f.__globals__)
    early = define("def helper(y):\n    return y * 2\n\ndef f(x):\n    return helper(x + 1)\n")
    assert fp.key((1,), {}) == Fingerprint(early.f).key((1,), {})
    assert fp.key((1,), {}) != key(define("def f(x):\n    return helper(x + 1)\n").f, 1)


def test_editing_a_helpers_default_moves_the_key() -> None:
    source = "def helper(y, k=2):\n    return y * k\n\ndef f(x):\n    return helper(x)\n"
    assert key(define(source).f, 1) != key(define(source.replace("k=2", "k=3")).f, 1)


def test_a_helper_with_a_default_without_a_key_is_refused() -> None:
    source = "def helper(y, k=SENTINEL):\n    return y\n\ndef f(x):\n    return helper(x)\n"
    ns = define(source, SENTINEL=object())
    with pytest.raises(TypeError, match=r"default of fpmod\.helper.*version="):
        key(ns.f, 1)


def test_functions_of_another_package_are_not_followed() -> None:
    def other(body: str) -> Any:
        return define(f"def tool(v):\n    return {body}\n", module="otherpkg.tools").tool

    a = define("def f(x):\n    return tool(x)\n", tool=other("v + 1"))
    b = define("def f(x):\n    return tool(x)\n", tool=other("v + 2"))
    assert key(a.f, 1) == key(b.f, 1)
    # The same top-level package is followed, whatever the submodule.
    c = define("def f(x):\n    return tool(x)\n", module="otherpkg.main", tool=other("v + 1"))
    d = define("def f(x):\n    return tool(x)\n", module="otherpkg.main", tool=other("v + 2"))
    assert key(c.f, 1) != key(d.f, 1)


def test_recursion_between_functions_ends() -> None:
    source = """
    def even(n):
        return n == 0 or odd(n - 1)

    def odd(n):
        return n != 0 and even(n - 1)
    """
    assert key(define(source).even, 4) == key(define(source).even, 4)
    assert key(define(source).even, 4) != key(define(source.replace("n != 0", "n > 0")).even, 4)


def test_closure_cells_are_in_the_key() -> None:
    def make(k: Any) -> Callable[[int], Any]:
        def f(x: int) -> Any:
            return x * k

        return f

    assert Fingerprint(make(2)).key((1,), {}) == Fingerprint(make(2)).key((1,), {})
    assert Fingerprint(make(2)).key((1,), {}) != Fingerprint(make(3)).key((1,), {})
    assert Fingerprint(make([1, 2])).key((1,), {}) != Fingerprint(make((1, 2))).key((1,), {})


def test_a_closure_cell_holding_a_function_is_keyed_by_its_code() -> None:
    def wrap(g: Callable[[int], int]) -> Callable[[int], int]:
        def f(x: int) -> int:
            return g(x)

        return f

    a = define("def g(v):\n    return v + 1\n", module="elsewhere").g
    b = define("def g(v):\n    return v + 2\n", module="elsewhere").g
    assert Fingerprint(wrap(a)).key((1,), {}) != Fingerprint(wrap(b)).key((1,), {})


def test_a_closure_cell_without_a_key_is_refused_unless_versioned() -> None:
    with socket.socket() as sock:

        def f(x: int) -> Any:
            return sock, x

        with pytest.raises(TypeError) as info:
            Fingerprint(f).key((1,), {})
        message = str(info.value)
        assert "closure cell 'sock'" in message
        assert "socket.socket" in message
        assert "version=" in message
        Fingerprint(f, version=1).key((1,), {})


def test_a_method_using_super_is_keyed() -> None:
    class Base:
        def g(self, x: int) -> int:
            return x

    class Child(Base):
        def g(self, x: int) -> int:
            return super().g(x) + 1

    assert "__class__" in Child.g.__code__.co_freevars
    Fingerprint(Child.g, ignore=("self",)).key((Child(), 1), {})


def test_a_wrapped_function_is_hashed_as_given() -> None:
    import functools

    def deco(g: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(g)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return g(*args, **kwargs)

        return wrapper

    a = deco(define("def g(v):\n    return v + 1\n").g)
    b = deco(define("def g(v):\n    return v + 2\n").g)
    # The wrapped function is in the wrapper's closure: editing it moves the key.
    assert Fingerprint(a).key((1,), {}) != Fingerprint(b).key((1,), {})
    # The signature bound is the wrapper's own (*args, **kwargs).
    assert Fingerprint(a).key((1,), {}) != Fingerprint(a).key((), {"v": 1})


def test_a_callable_that_is_not_a_function_needs_a_version() -> None:
    with pytest.raises(TypeError, match="version="):
        Fingerprint(len).key(([],), {})
    assert len(Fingerprint(len, version=1).key(([],), {})) == 16


def test_function_digest_is_the_prefix_of_every_key() -> None:
    f = define(BODY).f
    assert len(function_digest(f)) == 16
    assert function_digest(f) != function_digest(f, version=1)
    assert function_digest(f) == function_digest(define(BODY_WITH_COMMENTS).f)


# --- binding -------------------------------------------------------------------


def test_defaults_and_keywords_bind_to_the_same_key() -> None:
    def f(x: int = 1, y: str = "a") -> None:
        pass

    keys = {key(f), key(f, 1), key(f, x=1), key(f, 1, "a"), key(f, y="a", x=1), key(f, 1, y="a")}
    assert len(keys) == 1
    assert key(f, 2) != key(f)


def test_star_args_and_kwargs_are_a_tuple_and_a_dict() -> None:
    def f(a: int, *args: int, **kwargs: int) -> None:
        pass

    assert key(f, 1, 2, 3, p=1, q=2) == key(f, 1, 2, 3, q=2, p=1)
    assert key(f, 1, 2, 3) != key(f, 1, 2)
    assert key(f, 1) == key(f, a=1)


def test_a_call_that_does_not_bind_is_a_type_error() -> None:
    def f(a: int, *, b: int) -> None:
        pass

    for args, kwargs in [((), {"b": 1}), ((1,), {}), ((1, 2), {"b": 1}), ((1,), {"b": 1, "c": 2})]:
        with pytest.raises(TypeError):
            Fingerprint(f).key(args, kwargs)


def test_ignored_parameters_leave_the_key_as_it_is() -> None:
    def f(x: int, verbose: bool = False, log: Any = None) -> None:
        pass

    fp = Fingerprint(f, ignore=("verbose", "log"))
    assert fp.key((1,), {}) == fp.key((1, True), {}) == fp.key((1,), {"log": socket})
    assert fp.key((1,), {}) != fp.key((2,), {})
    with pytest.raises(ValueError, match="'verbos'"):
        Fingerprint(f, ignore=("verbos",))
    with pytest.raises(TypeError, match="ignore takes parameter names"):
        Fingerprint(f, ignore=("verbose"))


def test_device_policy_is_checked() -> None:
    Fingerprint(_one, device_policy="copy")
    with pytest.raises(ValueError, match="device_policy"):
        Fingerprint(_one, device_policy="move")


def _f0() -> None:
    pass


def _f1(a: int, b: int = 2) -> None:
    pass


def _f2(a: int, /, b: int, *args: int, c: int = 3, **kw: int) -> None:
    pass


def _f3(*args: int, **kwargs: int) -> None:
    pass


def _f4(a: int, b: int = 1, *, c: int, d: int = 4) -> None:
    pass


def _f5(a: int, /, b: int = 0, **kw: int) -> None:
    pass


def _f6(a: int, b: list[int] = [], *, c: int = 1) -> None:  # noqa: B006 (a mutable default)
    pass


def _inspect_only(fn: Callable[..., Any], ignore: tuple[str, ...] = ()) -> Fingerprint:
    """A Fingerprint whose key() always binds with inspect (no fast paths)."""
    fp = Fingerprint(fn, ignore=ignore)
    fp._fast_most = -1
    fp._bind_keywords = lambda args, kwargs: None  # type: ignore[method-assign]
    return fp


def _outcome(fp: Fingerprint, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes | str:
    try:
        return fp.key(args, kwargs)
    except TypeError:
        return "TypeError"


@settings(max_examples=300, deadline=None)
@given(
    fn=st.sampled_from([_f0, _f1, _f2, _f3, _f4, _f5, _f6]),
    args=st.lists(st.integers(-3, 3), max_size=4).map(tuple),
    kwargs=st.dictionaries(st.sampled_from(["a", "b", "c", "d", "kw", "args", "z"]), st.integers()),
    ignore_first=st.booleans(),
)
def test_fast_paths_give_the_keys_of_inspect_binding(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], ignore_first: bool
) -> None:
    names = list(Fingerprint(fn)._names)
    ignore = tuple(names[:1]) if ignore_first else ()
    assert _outcome(Fingerprint(fn, ignore=ignore), args, kwargs) == _outcome(
        _inspect_only(fn, ignore), args, kwargs
    )


def test_a_mutable_default_is_read_at_each_call() -> None:
    fp = Fingerprint(_f6)
    before = fp.key((1,), {})
    _f6.__defaults__[0].append(1)  # type: ignore[index]
    try:
        assert fp.key((1,), {}) != before
        assert fp.key((1,), {}) == _inspect_only(_f6).key((1,), {})
    finally:
        _f6.__defaults__[0].clear()  # type: ignore[index]


# --- values --------------------------------------------------------------------


def test_values_of_different_types_have_different_keys() -> None:
    values = [1, 1.0, True, "1", b"1", bytearray(b"1"), memoryview(b"1"), 1 + 0j, None]
    values += [(1,), [1], {1}, frozenset({1}), {1: 1}, ..., pathlib.PurePosixPath("1")]
    values += [0, False, "", b"", (), [], {}, set(), frozenset(), 0.0]
    assert len({value_key(v) for v in values}) == len(values)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=8)), unique_by=repr
    )
)
def test_distinct_scalars_have_distinct_keys(values: list[Any]) -> None:
    # unique_by=repr keeps 1 and 1.0 apart, and -0.0 and 0.0: all distinct to the key.
    assert len({value_key(v) for v in values}) == len(values)


def test_floats_nan_is_one_value_and_negative_zero_is_not_zero() -> None:
    other_nan = struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\xff")[0]
    assert other_nan != other_nan
    assert value_key(float("nan")) == value_key(other_nan) == value_key(-float("nan"))
    assert value_key(-0.0) != value_key(0.0)
    assert value_key(complex(float("nan"), 1)) == value_key(complex(other_nan, 1))
    assert value_key(float("inf")) != value_key(float("-inf"))


def test_ints_of_any_size() -> None:
    values = [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, -(2**64), 10**100, -1, 255, 256]
    assert len({value_key(v) for v in values}) == len(values)


def test_strs_with_lone_surrogates() -> None:
    assert value_key("\ud800") != value_key("\ud801")
    assert value_key("\ud800") != value_key("")


def test_large_data_streams_to_the_same_key(monkeypatch: pytest.MonkeyPatch) -> None:
    values = [b"x" * 300_000, "y" * 300_000, bytearray(300_000), memoryview(b"z" * 300_000)]
    streamed = [value_key(v) for v in values]
    monkeypatch.setattr(FP, "_BIG", 1 << 40)  # everything copied into the buffer instead
    assert streamed == [value_key(v) for v in values]


def test_memoryviews() -> None:
    assert value_key(memoryview(b"abcdef")[::2]) == value_key(memoryview(b"ace"))
    assert value_key(memoryview(b"abcd").cast("i")) != value_key(memoryview(b"abcd"))
    import ctypes

    with pytest.raises(TypeError, match="memoryview of items"):
        value_key(memoryview((ctypes.c_void_p * 2)()))


def test_tuples_and_lists_differ_and_nest() -> None:
    assert value_key((1, 2)) != value_key([1, 2])
    assert value_key([(1, 2), 3]) != value_key([(1, 2, 3)])
    assert value_key([[1], [2]]) == value_key([[1], [2]])
    assert value_key(((1,), ())) != value_key(((), (1,)))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.one_of(st.integers(), st.text(max_size=4)), st.integers()), st.randoms())
def test_dict_order_does_not_matter(d: dict[Any, int], rnd: Any) -> None:
    items = list(d.items())
    rnd.shuffle(items)
    assert value_key(d) == value_key(dict(items))


@settings(max_examples=100, deadline=None)
@given(st.sets(st.one_of(st.integers(), st.text(max_size=4))), st.randoms())
def test_set_order_does_not_matter(s: set[Any], rnd: Any) -> None:
    items = list(s)
    rnd.shuffle(items)
    assert value_key(s) == value_key(set(items))
    assert value_key(frozenset(s)) == value_key(frozenset(items))
    assert value_key(s) != value_key(frozenset(s))


def test_dicts_pair_keys_with_their_values() -> None:
    assert value_key({1: 2, 3: 4}) != value_key({1: 4, 3: 2})
    assert value_key({1: 2}) != value_key({2: 1})
    assert value_key({"a": 1}) != value_key({"a": 1, "b": 2})


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


@dataclasses.dataclass(frozen=True)
class OtherPoint:
    x: int
    y: int = 0


class Pair(NamedTuple):
    x: int
    y: int


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 1


def test_dataclasses_namedtuples_and_enums() -> None:
    assert value_key(Point(1, 2)) == value_key(Point(1, 2))
    assert value_key(Point(1, 2)) != value_key(Point(1, 3))
    assert value_key(Point(1, 2)) != value_key(OtherPoint(1, 2))
    assert value_key(Pair(1, 2)) == value_key(Pair(1, 2))
    assert value_key(Pair(1, 2)) != value_key((1, 2))
    # Types are keyed by module, qualname and field names.
    make: Any = collections.namedtuple
    same, other = make("Pair", "x y"), make("Pair", "x z")
    assert value_key(Pair(1, 2)) == value_key(same(1, 2))
    assert value_key(Pair(1, 2)) != value_key(other(1, 2))
    assert value_key(Color.RED) != value_key(Color.GREEN)
    assert value_key(Color.RED) != value_key(1)
    assert value_key(Level.LOW) != value_key(1)
    assert value_key([Point(1, [2])]) == value_key([Point(1, [2])])  # type: ignore[arg-type]


def test_paths_key_by_flavour_and_text() -> None:
    assert value_key(pathlib.Path("a/b")) == value_key(pathlib.PurePosixPath("a/b"))
    assert value_key(pathlib.PurePosixPath("a/b")) != value_key(pathlib.PureWindowsPath("a/b"))
    assert value_key(pathlib.Path("a/b")) != value_key("a/b")
    assert value_key(pathlib.Path("a/b")) != value_key(pathlib.Path("a/c"))


def test_function_values_key_by_their_code() -> None:
    a = define("def g(v):\n    return v + 1\n").g
    b = define("def g(v):\n    return v + 2\n").g
    assert value_key(a) == value_key(define("def g(v):\n    return v + 1\n").g)
    assert value_key(a) != value_key(b)
    assert value_key(len) != value_key(abs)
    with pytest.raises(TypeError, match=r"method bound to a builtins\.list"):
        value_key([].append)


@pytest.mark.parametrize(
    "value",
    [
        collections.OrderedDict(a=1),
        collections.defaultdict(list),
        type("MyInt", (int,), {})(1),
        type("MyStr", (str,), {})("a"),
        type("MyList", (list,), {})(),
    ],
)
def test_subclasses_of_builtins_are_refused(value: Any) -> None:
    with pytest.raises(TypeError, match="a subclass of"):
        value_key(value)


def test_a_value_without_a_key_names_the_argument_and_where() -> None:
    def train(cfg: dict[str, Any], seed: int) -> None:
        pass

    with socket.socket() as sock:
        with pytest.raises(TypeError) as info:
            Fingerprint(train).key(({"layers": [1, 2, sock]}, 0), {})
        with pytest.raises(TypeError, match=r"argument 'cfg' \.x: cannot derive"):
            Fingerprint(train).key((), {"cfg": Point(sock, 1), "seed": 0})  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(
        "argument 'cfg' ['layers'][2]: cannot derive a cache key from a socket.socket"
    )
    assert "ignore=('cfg',)" in message
    assert "__blobcache_key__" in message
    with pytest.raises(TypeError, match=r"argument 'x' \{<object"):
        value_key({object()})
    with pytest.raises(TypeError, match=r"cannot derive a cache key from a builtins\.object"):
        value_key(object())


def test_cycles_are_refused_and_sharing_is_not() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(TypeError, match=r"argument 'x' \[1\]: a list that contains itself"):
        value_key(loop)
    d: dict[str, Any] = {}
    d["self"] = [d]
    with pytest.raises(TypeError, match="contains itself"):
        value_key(d)
    shared = [1]
    assert value_key([shared, shared]) == value_key([[1], [1]])


class Model:
    def __init__(self, name: str, weights: list[float]) -> None:
        self.name, self.weights = name, weights

    def __blobcache_key__(self) -> Any:
        return (self.name, self.weights)

    def predict(self, x: int) -> int:
        return x


class Plain:
    def predict(self, x: int) -> int:
        return x


def test_blobcache_key_hook() -> None:
    assert value_key(Model("m", [1.0])) == value_key(Model("m", [1.0]))
    assert value_key(Model("m", [1.0])) != value_key(Model("m", [2.0]))
    assert value_key(Model("m", [1.0])) != value_key(("m", [1.0]))


def test_a_function_with_the_hook_is_keyed_by_it() -> None:
    def g(v: int) -> int:
        return v

    g.__blobcache_key__ = lambda: "g-1"  # type: ignore[attr-defined]
    a = define("def f(x):\n    return g(x)\n", module="tests.x", g=g)
    before = key(a.f, 1)
    g.__code__ = (lambda v: v + 1).__code__  # the hook, not the code, says what g is
    assert key(a.f, 1) == before
    g.__blobcache_key__ = lambda: "g-2"  # type: ignore[attr-defined]
    assert key(a.f, 1) != before


def test_methods_key_self_by_the_hook_or_ignore_it() -> None:
    fp = Fingerprint(Model.predict)
    assert fp.key((Model("a", []), 1), {}) != fp.key((Model("b", []), 1), {})
    with pytest.raises(TypeError, match=r"argument 'self'.*ignore=\('self',\)"):
        Fingerprint(Plain.predict).key((Plain(), 1), {})
    fp = Fingerprint(Plain.predict, ignore=("self",))
    assert fp.key((Plain(), 1), {}) == fp.key((Plain(), 1), {})


# --- numpy ---------------------------------------------------------------------


def test_numpy_layouts_give_one_key(tmp_path: pathlib.Path) -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(60, dtype=np.float32).reshape(6, 10)
    memmap = np.memmap(tmp_path / "a.bin", dtype=np.float32, mode="w+", shape=(6, 10))
    memmap[:] = a
    wide = np.zeros((6, 20), dtype=np.float32)
    wide[:, ::2] = a
    variants = [a, a.copy(order="F"), wide[:, ::2], memmap, a.astype(">f4"), a.T.T, a[::-1][::-1]]
    assert not wide[:, ::2].flags.c_contiguous
    assert len({value_key(v) for v in variants}) == 1


def test_numpy_dtype_shape_and_values_move_the_key() -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    others = [a.astype(np.int64), a.astype(np.uint32), a.reshape(4, 3), a.reshape(12), a + 1]
    assert len({value_key(v) for v in [a, *others]}) == 1 + len(others)
    assert value_key(np.zeros((0, 3))) != value_key(np.zeros((3, 0)))
    assert value_key(np.float64(1.0)) != value_key(1.0)
    assert value_key(np.float64(1.0)) != value_key(np.array(1.0))
    assert value_key(np.float64(1.0)) != value_key(np.float32(1.0))
    assert value_key(np.str_("a")) != value_key("a")


def test_numpy_chunks_give_the_key_of_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(3 * 50 * 40, dtype=np.float64).reshape(3, 50, 40)
    fortran, flat = a.copy(order="F"), a.reshape(-1)[::-1][::-1]
    whole = value_key(a)
    strided = np.zeros(2 * a.size)[::2]
    strided[:] = a.reshape(-1)
    for chunk in [8, 1000, 40 * 8 * 3, 60_000]:  # below one item, a row, rows, a block
        monkeypatch.setattr(FP, "_CHUNK", chunk)
        assert value_key(fortran) == whole
        assert value_key(strided) == value_key(flat)


def test_numpy_records_and_refusals() -> None:
    np = pytest.importorskip("numpy")
    rec = np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")])
    assert value_key(rec) == value_key(rec.astype([("a", ">i4"), ("b", ">f8")]))
    assert value_key(rec) != value_key(np.zeros(3, dtype=[("a", "<i4"), ("c", "<f8")]))
    with pytest.raises(TypeError, match="numpy array of Python objects"):
        value_key(np.array([1, None], dtype=object))
    with pytest.raises(TypeError, match=r"numpy\.ma"):
        value_key(np.ma.masked_array([1, 2], mask=[0, 1]))


NO_NUMPY = """
import sys
sys.modules["numpy"] = None  # importing it now raises ImportError
import dataclasses, enum, pathlib
from blobcache._fingerprint import Fingerprint

@dataclasses.dataclass
class Cfg:
    lr: float

def f(a, b=2, *args, **kwargs):
    return a

fp = Fingerprint(f)
values = [1, "x", b"y", [1.5, None], {"k": (1, 2)}, {3, 4}, Cfg(0.1), pathlib.Path("p"), f]
for v in values:
    fp.key((v,), {})
    fp.key((), {"a": v, "z": v})
assert sys.modules["numpy"] is None
print("ok")
"""


def test_numpy_is_not_imported_for_plain_arguments() -> None:
    assert run_python(NO_NUMPY).strip() == "ok"


# --- torch ---------------------------------------------------------------------


def test_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert value_key(t) == value_key(t.clone())
    assert value_key(t) == value_key(t.t().contiguous().t())  # non-contiguous, same values
    assert value_key(t) != value_key(t.to(torch.bfloat16))
    assert value_key(t.to(torch.bfloat16)) == value_key(t.to(torch.bfloat16).clone())
    assert value_key(t) != value_key(t.reshape(4, 3))
    assert value_key(t) != value_key(t + 1)
    assert value_key(torch.nn.Parameter(t)) == value_key(t)


def test_torch_tensors_off_the_cpu() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    t = torch.arange(4, device="cuda")
    with pytest.raises(TypeError, match="device_policy='copy'"):
        value_key(t)
    fp = Fingerprint(_one, device_policy="copy")
    assert fp.key((t,), {}) == fp.key((t.cpu(),), {})


# --- stability -----------------------------------------------------------------

STABLE_MODULE = """
import dataclasses, enum, pathlib

@dataclasses.dataclass
class Cfg:
    lr: float
    layers: list

class Mode(enum.Enum):
    FAST = "fast"

def helper(x):
    return x + 1

def f(a, b=2, *args, **kwargs):
    return helper(a)

CALLS = [
    ((1,), {}),
    (("text", 2.5, None), {"z": {"s": {"x", "y", "w"}, "f": frozenset({1, 2})}}),
    ((Cfg(0.1, [1, (2, 3)]), Mode.FAST, pathlib.Path("a/b"), -0.0, 2**70, b"raw"), {}),
    (([{"k": i} for i in range(5)],), {"q": {str(i): i for i in range(20)}}),
]
"""

STABLE_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else {path!r})
import fpstable
from blobcache._fingerprint import Fingerprint
fp = Fingerprint(fpstable.f)
keys = [fp.key(args, kwargs).hex() for args, kwargs in fpstable.CALLS]
try:
    import numpy as np
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    keys.append(fp.key((a, a.astype(">f8")), {{"t": np.int16(3)}}).hex())
except ImportError:
    pass
print(json.dumps(keys))
"""


def test_keys_are_the_same_in_a_new_process(tmp_path: pathlib.Path) -> None:
    (tmp_path / "fpstable.py").write_text(STABLE_MODULE)
    script = STABLE_SCRIPT.format(path=str(tmp_path))
    # Different hash seeds: set and dict iteration orders differ between the runs.
    first = json.loads(run_python(script, PYTHONHASHSEED="1"))
    second = json.loads(run_python(script, PYTHONHASHSEED="2"))
    assert first == second
    assert len(set(first)) == len(first) >= 4
    sys.path.insert(0, str(tmp_path))
    try:
        import fpstable  # type: ignore[import-not-found]

        here = [Fingerprint(fpstable.f).key(a, k).hex() for a, k in fpstable.CALLS]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fpstable", None)
    assert here == first[: len(here)]
