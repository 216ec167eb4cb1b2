"""DeepProfiler's pickled ``metadata`` member -> a plain ``dict`` of str -> str/number, without pickle.

DeepProfiler saves each site's metadata as a 0-d object array holding a dict; ``np.save`` pickles it
as ``_reconstruct(ndarray, (0,), b'b')`` + ``BUILD (1, (), dtype('O8'), False, [dict])``. Values are
Python str/int/float/bool, or numpy scalars pickled as ``scalar(dtype(descr), raw_bytes)``.

Handing such bytes to ``pickle`` is unsafe even with a whitelist of numpy globals: ``BUILD`` on a
``numpy.dtype`` rewrites its C-level flags and ``scalar`` then reads an object pointer from the
attacker's bytes. So this module never unpickles. It walks the opcodes with ``pickletools.genops``
and interprets exactly the shapes above with inert placeholders: numpy's globals are names, a dtype
is its descriptor string, a numpy scalar is decoded in pure Python from its raw bytes for a short
whitelist of plain dtypes. Every other opcode, global, shape or size is an ``InputError``.
"""

from __future__ import annotations

import pickletools
import struct
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from cpcnn.errors import InputError

#: Largest pickled metadata accepted (real DeepProfiler metadata is under 1 KB).
MAX_METADATA_BYTES = 1 << 20
#: Most memo entries, open MARKs (nesting depth) and dict entries one metadata pickle may use.
MAX_MEMO = 10_000
MAX_DEPTH = 16
MAX_ENTRIES = 10_000
#: Longest numpy unicode scalar (characters) decoded from a ``U<n>`` dtype.
MAX_STR_CHARS = 65_536

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.multiarray", "scalar"): "scalar",
    ("numpy._core.multiarray", "scalar"): "scalar",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
}

#: Plain numpy dtypes whose scalars are decoded here: descriptor -> struct code.
_SCALAR_CODES = {
    "b1": "?", "i1": "b", "i2": "h", "i4": "i", "i8": "q",
    "u1": "B", "u2": "H", "u4": "I", "u8": "Q", "f2": "e", "f4": "f", "f8": "d",
}
_BYTE_ORDERS = {"<": "<", ">": ">", "|": "<", "=": "<" if sys.byteorder == "little" else ">"}

_PUSH_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_PUSH_ARG = {
    "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT",
    "SHORT_BINUNICODE", "BINUNICODE", "SHORT_BINBYTES", "BINBYTES",
}


@dataclass(frozen=True)
class _Global:
    """A numpy callable named by the pickle; never resolved to the real object."""

    name: str


@dataclass
class _Dtype:
    """``numpy.dtype(descr)``: only the descriptor and byte order are ever used."""

    descr: str
    byteorder: str = "="


class _Array:
    """``_reconstruct(ndarray, (0,), b'b')`` before its BUILD fills it."""


class _Mark:
    """The MARK sentinel on the stack."""


_MARK = _Mark()
_SCALAR_TYPES = (str, int, float, bool, type(None))


def parse_metadata_pickle(data: bytes, *, what: str = "metadata") -> dict[str, str | int | float | bool | None]:
    """Pickled DeepProfiler metadata bytes -> dict of str -> str/int/float/bool/None (InputError otherwise)."""
    if len(data) > MAX_METADATA_BYTES:
        raise InputError(f"{what}: {len(data)} bytes of pickled metadata is over the limit of {MAX_METADATA_BYTES}")
    try:
        with warnings.catch_warnings():  # genops decodes text opcodes it then sees refused
            warnings.simplefilter("ignore", DeprecationWarning)
            result = _run(data, what)
    except InputError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, struct.error) as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InputError(f"{what}: unreadable pickled metadata ({detail})") from exc
    if not isinstance(result, dict):
        raise InputError(f"{what}: pickled metadata holds {type(result).__name__}, expected a dict")
    return result


def _run(data: bytes, what: str) -> Any:
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    marks = 0

    def fail(message: str) -> InputError:
        return InputError(f"{what}: {message}")

    def pop_to_mark() -> list[Any]:
        nonlocal marks
        for index in range(len(stack) - 1, -1, -1):
            if stack[index] is _MARK:
                items = stack[index + 1 :]
                del stack[index:]
                marks -= 1
                return items
        raise fail("pickle pops a MARK that was never pushed")

    def pop() -> Any:
        if not stack or stack[-1] is _MARK:
            raise fail("pickle pops an empty stack")
        return stack.pop()

    def remember(index: int) -> None:
        if index not in memo and len(memo) >= MAX_MEMO:
            raise fail(f"pickle memo is over the limit of {MAX_MEMO} entries")
        if not stack or stack[-1] is _MARK:
            raise fail("pickle memoizes an empty stack or a MARK")
        memo[index] = stack[-1]

    for opcode, arg, _pos in pickletools.genops(data):
        name = opcode.name
        if name in _PUSH_CONSTANTS:
            stack.append(_PUSH_CONSTANTS[name])
        elif name in _PUSH_ARG:
            stack.append(arg)
        elif name in ("PROTO", "FRAME"):
            if name == "PROTO" and not 2 <= arg <= 5:
                raise fail(f"unsupported pickle protocol {arg}")
        elif name == "MARK":
            marks += 1
            if marks > MAX_DEPTH:
                raise fail(f"pickle nests deeper than {MAX_DEPTH} levels")
            stack.append(_MARK)
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            count = int(name[-1])
            if len(stack) < count or any(item is _MARK for item in stack[-count:]):
                raise fail(f"{name} needs {count} items on the stack")
            items = tuple(stack[-count:])
            del stack[-count:]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(pop_to_mark()))
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name in ("APPEND", "APPENDS"):
            items = [pop()] if name == "APPEND" else pop_to_mark()
            target = stack[-1] if stack else None
            if not isinstance(target, list):
                raise fail(f"{name} on a {type(target).__name__}, expected a list")
            if len(target) + len(items) > MAX_ENTRIES:
                raise fail(f"a list holds more than {MAX_ENTRIES} items")
            target.extend(items)
        elif name in ("SETITEM", "SETITEMS"):
            items = [pop(), pop()][::-1] if name == "SETITEM" else pop_to_mark()
            if len(items) % 2:
                raise fail("SETITEMS with an odd number of items")
            target = stack[-1] if stack else None
            if not isinstance(target, dict):
                raise fail(f"{name} on a {type(target).__name__}, expected a dict")
            for key, value in zip(items[::2], items[1::2], strict=True):
                if not isinstance(key, str):
                    raise fail(f"metadata key {key!r} is a {type(key).__name__}, expected str")
                if not isinstance(value, _SCALAR_TYPES):
                    raise fail(f"metadata value of {key!r} is a {type(value).__name__}, expected str or number")
                target[key] = value
            if len(target) > MAX_ENTRIES:
                raise fail(f"metadata holds more than {MAX_ENTRIES} entries")
        elif name in ("BINPUT", "LONG_BINPUT"):
            remember(arg)
        elif name == "MEMOIZE":
            remember(len(memo))
        elif name in ("BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise fail(f"pickle refers to memo entry {arg} that was never stored")
            stack.append(memo[arg])
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            stack.append(_global(module, attr, fail))
        elif name == "STACK_GLOBAL":
            attr, module = pop(), pop()
            if not isinstance(module, str) or not isinstance(attr, str):
                raise fail("STACK_GLOBAL needs two strings")
            stack.append(_global(module, attr, fail))
        elif name == "REDUCE":
            args, func = pop(), pop()
            stack.append(_reduce(func, args, fail))
        elif name == "BUILD":
            state, obj = pop(), pop()
            stack.append(_build(obj, state, fail))
        elif name == "STOP":
            if len(stack) != 1 or marks:
                raise fail("pickle ends with a malformed stack")
            return stack[0]
        else:
            raise fail(f"pickle opcode {name} is not used by DeepProfiler metadata")
    raise fail("pickle ends without STOP")


def _global(module: str, attr: str, fail: Any) -> _Global:
    known = _NUMPY_GLOBALS.get((module, attr))
    if known is None:
        raise fail(f"refusing to load global {module}.{attr}")
    return _Global(known)


def _reduce(func: Any, args: Any, fail: Any) -> Any:
    if not isinstance(func, _Global) or not isinstance(args, tuple):
        raise fail("REDUCE on something other than a numpy constructor")
    if func.name == "reconstruct":
        if len(args) != 3 or args[0] != _Global("ndarray") or args[1] != (0,) or args[2] != b"b":
            raise fail("unexpected ndarray reconstruction arguments")
        return _Array()
    if func.name == "dtype":
        if len(args) != 3 or not isinstance(args[0], str) or args[1:] not in ((False, True), (0, 1)):
            raise fail("unexpected numpy dtype arguments")
        descr = args[0]
        if descr != "O8" and descr not in _SCALAR_CODES and not _unicode_chars(descr):
            raise fail(f"numpy dtype {descr[:20]!r} is not one metadata uses")
        return _Dtype(descr)
    if func.name == "scalar":
        if len(args) != 2 or not isinstance(args[0], _Dtype) or not isinstance(args[1], bytes):
            raise fail("unexpected numpy scalar arguments")
        return _decode_scalar(args[0], args[1], fail)
    raise fail(f"numpy {func.name} cannot be called")


def _build(obj: Any, state: Any, fail: Any) -> Any:
    if isinstance(obj, _Dtype):
        if (
            not isinstance(state, tuple)
            or len(state) not in (8, 9)
            or state[0] not in (3, 4)
            or state[1] not in _BYTE_ORDERS
            or any(part is not None for part in state[2:5])
            or not all(isinstance(part, int) for part in state[5:8])
        ):
            raise fail("unexpected numpy dtype state (structured or sub-array dtypes are not metadata)")
        # Only the byte order is used; sizes and flags are numpy internals and are never trusted.
        obj.byteorder = state[1]
        return obj
    if isinstance(obj, _Array):
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
            raise fail("unexpected ndarray state")
        _, shape, dtype, _fortran, payload = state
        if shape != ():
            shown = repr(shape)[:40] if isinstance(shape, tuple) else type(shape).__name__
            raise fail(f"metadata array has shape {shown}, expected a 0-d object array")
        if not isinstance(dtype, _Dtype) or dtype.descr != "O8":
            raise fail("metadata array is not an object array")
        if not isinstance(payload, list) or len(payload) != 1:
            raise fail("metadata array does not hold exactly one object")
        return payload[0]
    raise fail(f"BUILD on a {type(obj).__name__}")


def _unicode_chars(descr: str) -> int:
    """Characters of a ``U<n>`` descriptor, 0 when ``descr`` is not one (or too long)."""
    if len(descr) < 2 or descr[0] != "U" or not descr[1:].isdigit() or len(descr) > 8:
        return 0
    chars = int(descr[1:])
    return chars if 0 < chars <= MAX_STR_CHARS else 0


def _decode_scalar(dtype: _Dtype, raw: bytes, fail: Any) -> str | int | float | bool:
    order = _BYTE_ORDERS[dtype.byteorder]
    chars = _unicode_chars(dtype.descr)
    if chars:
        if len(raw) != 4 * chars:
            raise fail(f"numpy {dtype.descr} scalar has {len(raw)} bytes, expected {4 * chars}")
        text = raw.decode("utf-32-le" if order == "<" else "utf-32-be")
        return text.rstrip("\x00")
    code = _SCALAR_CODES.get(dtype.descr)
    if code is None:
        raise fail(f"numpy scalar of dtype {dtype.descr} is not metadata")
    size = struct.calcsize(code)
    if len(raw) != size:
        raise fail(f"numpy {dtype.descr} scalar has {len(raw)} bytes, expected {size}")
    (value,) = struct.unpack(order + code, raw)
    if code == "?" and raw not in (b"\x00", b"\x01"):
        raise fail("numpy bool scalar is neither 0 nor 1")
    if code in "ef":  # the shortest text that round-trips at its own precision, as numpy prints it
        value = float(str(np.float16(value) if code == "e" else np.float32(value)))
    return value
