"""Reading untrusted pickles without running them: a small interpreter of the pickle opcodes that plain data needs.

``pickle.Unpickler`` with a class allow-list is not enough for NumPy: a record may BUILD a ``numpy.dtype`` or
``ndarray`` from forged state (object fields with false flags, offsets past the item size), which NumPy accepts; a few
hundred bytes then crash the process or copy its memory into the output. And the C unpickler sizes its memo table
from an index in the stream (a 9-byte record can ask for 16 GiB). So nothing here reaches ``pickle`` or NumPy's
unpickling: :func:`loads` walks the opcodes itself (``pickletools.genops`` decodes them, without executing), builds
containers, numbers, strings and bytes, and builds arrays from raw bytes with a checked shape and a plain numeric
dtype. Anything else is refused, naming the opcode or the name it asked for, before anything is built from it.

Bounds: the record's own length bounds the work (each opcode is O(1) or copies its own argument); memo references
share objects, never copy them; container nesting and array sizes are capped.
"""

from __future__ import annotations

import io
import math
import pickletools
from typing import Any

import numpy as np

MAX_DEPTH = 32  # nested MARKs (containers being built at once)
MAX_ARRAY_BYTES = 1 << 31
PLAIN_KINDS = "biuf"  # bool, signed and unsigned integers, floats: dtypes whose every bit pattern is a value
_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_SCALAR = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}
_FROMBUFFER = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
_NAMES = _RECONSTRUCT | _SCALAR | _FROMBUFFER | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class UnsafePickle(ValueError):
    """The pickle asks for something other than plain data and plain numeric arrays, or is malformed."""


class _Global:
    def __init__(self, module: str, name: str):
        self.key = (module, name)


class _DType:
    """A dtype named by the record, checked before NumPy sees it."""

    def __init__(self, spec: Any):
        if not isinstance(spec, str) or len(spec) > 8:
            raise UnsafePickle(f"dtype {spec!r}: only plain numeric dtypes are accepted")
        self.spec = spec
        self.dtype = _plain_dtype(spec)

    def build(self, state: Any) -> None:
        # (version, byteorder, subdtype, names, fields, elsize, alignment, flags): only a byte order may be set
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[1] in ("<", ">", "|", "=")):
            raise UnsafePickle(f"dtype state {str(state)[:80]}: only plain numeric dtypes are accepted")
        if any(x is not None for x in state[2:5]) or state[5:8] != (-1, -1, 0):
            raise UnsafePickle("a dtype with fields, a sub-array, a size or flags of its own is refused")
        order = {"=": "<", "|": "|"}.get(state[1], state[1])
        self.dtype = _plain_dtype(order + self.dtype.str[1:]) if self.dtype.itemsize > 1 else self.dtype


class _ArrayStub:
    """``ndarray`` being rebuilt: its state arrives with BUILD."""

    value: np.ndarray | None = None

    def build(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise UnsafePickle("ndarray state is not (version, shape, dtype, fortran, data)")
        _, shape, dtype, fortran, data = state
        if not isinstance(dtype, _DType) or not isinstance(fortran, bool):
            raise UnsafePickle("ndarray state: refused dtype or layout")
        self.value = _array(data, dtype.dtype, shape, "F" if fortran else "C")


def _plain_dtype(spec: str) -> np.dtype:
    try:
        dt = np.dtype(spec)
    except TypeError:
        raise UnsafePickle(f"dtype {spec!r} is not a NumPy dtype") from None
    if dt.kind not in PLAIN_KINDS or dt.fields is not None or dt.subdtype is not None or dt.itemsize > 16:
        raise UnsafePickle(f"dtype {spec!r}: only plain numeric dtypes are accepted")
    return dt


def _array(data: Any, dtype: np.dtype, shape: Any, order: str) -> np.ndarray:
    if not (isinstance(shape, tuple) and len(shape) <= 8 and all(type(n) is int and 0 <= n for n in shape)):
        raise UnsafePickle(f"array shape {str(shape)[:80]} is not a tuple of non-negative ints")
    if isinstance(data, str):  # protocol 2 keeps bytes as latin-1 text
        data = data.encode("latin-1")
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickle("array data must be bytes (object arrays are refused)")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES or len(data) != nbytes:
        raise UnsafePickle(f"array of shape {list(shape)} {dtype} needs {nbytes} bytes, the record holds {len(data)}")
    return np.frombuffer(bytes(data), dtype).reshape(shape, order=order).copy()


def _call(fn: Any, args: Any) -> Any:
    """REDUCE: only the allowed NumPy and codec functions, each with checked arguments."""
    if not isinstance(fn, _Global) or not isinstance(args, tuple):
        raise UnsafePickle("REDUCE of something other than an allowed function")
    key = fn.key
    if key in _RECONSTRUCT:
        if len(args) != 3 or not isinstance(args[0], _Global) or args[0].key != ("numpy", "ndarray"):
            raise UnsafePickle("_reconstruct of something other than an ndarray")
        return _ArrayStub()
    if key == ("numpy", "dtype"):
        return _DType(args[0] if args else None)
    if key in _SCALAR:
        if len(args) != 2 or not isinstance(args[0], _DType):
            raise UnsafePickle("scalar() with a refused dtype")
        return _array(args[1], args[0].dtype, (), "C")[()]
    if key in _FROMBUFFER:
        if len(args) != 4 or not isinstance(args[1], _DType) or args[3] not in ("C", "F"):
            raise UnsafePickle("_frombuffer() with refused arguments")
        return _array(args[0], args[1].dtype, args[2], args[3])
    if key == ("_codecs", "encode"):
        if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
            raise UnsafePickle("_codecs.encode other than str -> latin-1 bytes")
        return args[0].encode("latin-1")
    raise UnsafePickle(f"refused {key[0]}.{key[1]}")


def _built(x: Any) -> Any:
    """An array in place of its stub once BUILD gave it its state (containers only ever hold the array)."""
    return x.value if isinstance(x, _ArrayStub) and x.value is not None else x


def _value(x: Any) -> Any:
    """What a built object finally is (arrays rebuilt; stubs that never got their state refused)."""
    if isinstance(x, _ArrayStub):
        if x.value is None:
            raise UnsafePickle("an ndarray without its state")
        return x.value
    if isinstance(x, (_DType, _Global)):
        raise UnsafePickle("a bare dtype or function is not data")
    return x


_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_LITERALS = {"BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4", "BINFLOAT", "FLOAT",
             "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
             "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8"}  # fmt: skip


def loads(buf: bytes) -> Any:
    """The object a pickle of plain data describes, built without running anything it names."""
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    try:
        ops = pickletools.genops(io.BytesIO(buf))
        for op, arg, _ in ops:
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                if len(stack) != 1 or marks:
                    raise UnsafePickle("STOP with a malformed stack")
                return _deep_value(stack.pop())
            if name in _LITERALS:
                stack.append(bytes(arg) if name == "BYTEARRAY8" else arg)
            elif name in _CONSTANTS:
                stack.append(_CONSTANTS[name])
            elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE"):
                stack.append({"EMPTY_DICT": dict, "EMPTY_LIST": list, "EMPTY_TUPLE": tuple}[name]())
            elif name == "MARK":
                if len(marks) >= MAX_DEPTH:
                    raise UnsafePickle(f"nesting deeper than {MAX_DEPTH}")
                marks.append(len(stack))
            elif name in ("TUPLE", "LIST", "DICT", "APPENDS", "SETITEMS", "POP_MARK"):
                start = marks.pop()
                items, stack[start:] = [_built(x) for x in stack[start:]], []
                if name == "TUPLE":
                    stack.append(tuple(items))
                elif name == "LIST":
                    stack.append(list(items))
                elif name == "DICT":
                    stack.append(_pairs({}, items))
                elif name == "APPENDS":
                    _list(stack[-1]).extend(items)
                elif name == "SETITEMS":
                    _pairs(_dict(stack[-1]), items)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items, stack[-n:] = tuple(_built(x) for x in stack[-n:]), []
                if len(items) != n:
                    raise UnsafePickle(f"{name} on a short stack")
                stack.append(items)
            elif name == "APPEND":
                item = _built(stack.pop())
                _list(stack[-1]).append(item)
            elif name == "SETITEM":
                v, k = _built(stack.pop()), stack.pop()
                _pairs(_dict(stack[-1]), [k, v])
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise UnsafePickle(f"memo entry {arg} was never stored")
                stack.append(memo[arg])
            elif name == "POP":
                stack.pop()
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                module, attr = arg.split(" ", 1) if name == "GLOBAL" else (None, None)
                if name == "STACK_GLOBAL":
                    attr, module = stack.pop(), stack.pop()
                if (module, attr) not in _NAMES:
                    raise UnsafePickle(f"refused {module}.{attr}: only plain data and numeric arrays may appear")
                stack.append(_Global(module, attr))
            elif name == "REDUCE":
                args = stack.pop()
                stack.append(_call(stack.pop(), args))
            elif name == "BUILD":
                state = stack.pop()
                if not isinstance(stack[-1], (_ArrayStub, _DType)):
                    raise UnsafePickle("BUILD of something other than an array or a dtype")
                stack[-1].build(state)
            else:
                raise UnsafePickle(f"opcode {name} is refused (plain data only)")
    except UnsafePickle:
        raise
    except (ValueError, IndexError, KeyError, TypeError, EOFError, UnicodeError, OverflowError) as e:
        raise UnsafePickle(f"not a readable pickle ({type(e).__name__}: {e})") from None
    raise UnsafePickle("not a readable pickle (no STOP)")


def _list(x: Any) -> list:
    if not isinstance(x, list):
        raise UnsafePickle("APPEND to something other than a list")
    return x


def _dict(x: Any) -> dict:
    if not isinstance(x, dict):
        raise UnsafePickle("SETITEM on something other than a dict")
    return x


def _pairs(d: dict, items: list) -> dict:
    if len(items) % 2:
        raise UnsafePickle("a dict with an odd number of items")
    for k, v in zip(items[::2], items[1::2], strict=True):
        if not isinstance(k, (str, int, bytes)):
            raise UnsafePickle("dict keys must be strings, ints or bytes")
        d[k] = v
    return d


def _deep_value(x: Any) -> Any:
    """The top-level result, checked one level down: arrays are already in place (see :func:`_built`), and nothing
    deeper is visited, so memo-shared nesting costs nothing here (callers check what they use)."""
    if isinstance(x, dict):
        return {k: _value(v) for k, v in x.items()}
    return _value(x)
