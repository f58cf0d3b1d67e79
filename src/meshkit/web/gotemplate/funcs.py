"""The builtin functions of Go's text/template (and, or, not, len, index, slice, print,
printf, println, html, js, urlquery, eq, ne, lt, le, gt, ge, call) and Go's truth.

`and`/`or` are evaluated lazily by the executor (Go 1.18+); the functions here receive
values already evaluated. A FuncError's message is what Go's template says after
`error calling NAME: `.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

from meshkit.web.gotemplate.gofmt import NO_VALUE, go_type, sprint, sprintf, sprintln


class FuncError(Exception):
    pass


def truth(v: Any) -> bool:
    """Go's template truth: false, 0, nil, and empty string/slice/map are false; any other
    value (structs, non-nil objects) is true."""
    if v is None or v is NO_VALUE:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float, complex)):
        return v != 0
    if isinstance(v, (str, bytes, list, tuple, dict, set, frozenset)):
        return len(v) > 0
    return True


def _basic_kind(v: Any) -> str | None:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, complex):
        return "complex"
    if isinstance(v, str):
        return "string"
    return None


def eq(arg1: Any, *args: Any) -> bool:
    if not args:
        raise FuncError("missing argument for comparison")
    k1 = _basic_kind(arg1)
    for a in args:
        k = _basic_kind(a)
        if arg1 is None or a is None or arg1 is NO_VALUE or a is NO_VALUE:
            # Go: a nil (or missing) operand compares unequal to any value, without error
            if (arg1 is None or arg1 is NO_VALUE) and (a is None or a is NO_VALUE):
                return True
            continue
        if k1 is None or k is None:
            if k1 != k:
                raise FuncError("incompatible types for comparison")
            try:
                if arg1 == a:
                    return True
            except Exception:
                raise FuncError("non-comparable types") from None
            continue
        if k1 != k:
            raise FuncError("incompatible types for comparison")
        if arg1 == a:
            return True
    return False


def ne(arg1: Any, arg2: Any) -> bool:
    return not eq(arg1, arg2)


def lt(arg1: Any, arg2: Any) -> bool:
    k1, k2 = _basic_kind(arg1), _basic_kind(arg2)
    if k1 is None or k2 is None or k1 in ("bool", "complex") or k2 in ("bool", "complex"):
        raise FuncError("invalid type for comparison")
    if k1 != k2:
        raise FuncError("incompatible types for comparison")
    return bool(arg1 < arg2)


def le(arg1: Any, arg2: Any) -> bool:
    return lt(arg1, arg2) or eq(arg1, arg2)


def gt(arg1: Any, arg2: Any) -> bool:
    return not le(arg1, arg2)


def ge(arg1: Any, arg2: Any) -> bool:
    return not lt(arg1, arg2)


def not_(arg: Any) -> bool:
    return not truth(arg)


def length(item: Any) -> int:
    if isinstance(item, str):
        return len(item.encode("utf-8"))  # Go's len of a string counts bytes
    if isinstance(item, (list, tuple, dict, bytes)):
        return len(item)
    raise FuncError(f"len of type {go_type(item)}")


def _index_int(i: Any, cap: int) -> int:
    if isinstance(i, bool) or not isinstance(i, int):
        raise FuncError(f"cannot index slice/array with type {go_type(i)}")
    if i < 0 or i >= cap:
        raise FuncError(f"index out of range: {i}")
    return i


def index(item: Any, *indexes: Any) -> Any:
    v = item
    for i in indexes:
        if v is None or v is NO_VALUE:
            raise FuncError("index of untyped nil")
        if isinstance(v, dict):
            v = v.get(i)  # a missing key gives the zero value (nil)
        elif isinstance(v, str):
            v = v.encode("utf-8")[_index_int(i, len(v.encode("utf-8")))]
        elif isinstance(v, (list, tuple, bytes)):
            v = v[_index_int(i, len(v))]
        else:
            raise FuncError(f"can't index item of type {go_type(v)}")
    return v


def slice_(item: Any, *indexes: Any) -> Any:
    if item is None or item is NO_VALUE:
        raise FuncError("slice of untyped nil")
    if len(indexes) > 3:
        raise FuncError(f"too many slice indexes: {len(indexes)}")
    data: bytes | list[Any] | tuple[Any, ...]
    if isinstance(item, str):
        if len(indexes) == 3:
            raise FuncError("cannot 3-index slice a string")
        data = item.encode("utf-8")
        size = len(data)
    elif isinstance(item, (list, tuple)):
        data = item
        size = len(item)
    else:
        raise FuncError(f"can't slice item of type {go_type(item)}")
    idx = [0, size]
    for k, i in enumerate(indexes[:2]):
        if isinstance(i, bool) or not isinstance(i, int):
            raise FuncError(f"cannot index slice/array with type {go_type(i)}")
        if i < 0 or i > size:
            raise FuncError(f"index out of range: {i}")
        idx[k] = i
    if idx[0] > idx[1]:
        raise FuncError(f"invalid slice index: {idx[0]} > {idx[1]}")
    out = data[idx[0] : idx[1]]
    if isinstance(out, bytes):
        return out.decode("utf-8", "replace")
    return list(out) if isinstance(out, tuple) else out


def _eval_args(args: tuple[Any, ...]) -> str:
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return sprint(args)


_HTML = {"&": "&amp;", "'": "&#39;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "\x00": "\ufffd"}


def html_escape_string(s: str) -> str:
    if not any(c in s for c in "&'<>\"\x00"):
        return s
    return "".join(_HTML.get(c, c) for c in s)


def html(*args: Any) -> str:
    return html_escape_string(_eval_args(args))


_JS = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "<": "\\u003C",
    ">": "\\u003E",
    "&": "\\u0026",
    "=": "\\u003D",
}


def js(*args: Any) -> str:
    out = []
    for c in _eval_args(args):
        if c in _JS:
            out.append(_JS[c])
        elif c.isprintable():
            out.append(c)
        else:
            out.append(f"\\u{ord(c):04X}")
    return "".join(out)


def urlquery(*args: Any) -> str:
    return quote_plus(_eval_args(args), safe="")


def print_(*args: Any) -> str:
    return sprint(args)


def printf(fmt: str, *args: Any) -> str:
    if not isinstance(fmt, str):
        raise FuncError(f"wrong type for value; expected string; got {go_type(fmt)}")
    return sprintf(fmt, args)


def println(*args: Any) -> str:
    return sprintln(args)


def call(fn: Any, *args: Any) -> Any:
    if fn is None or fn is NO_VALUE:
        raise FuncError("call of nil")
    if not callable(fn):
        raise FuncError(f"non-function of type {go_type(fn)}")
    return fn(*args)


def _and(*args: Any) -> Any:  # for `call and` and the like; the executor short-circuits
    for a in args:
        if not truth(a):
            return a
    return args[-1]


def _or(*args: Any) -> Any:
    for a in args:
        if truth(a):
            return a
    return args[-1]


BUILTINS: dict[str, Callable[..., Any]] = {
    "and": _and,
    "or": _or,
    "not": not_,
    "len": length,
    "index": index,
    "slice": slice_,
    "print": print_,
    "printf": printf,
    "println": println,
    "html": html,
    "js": js,
    "urlquery": urlquery,
    "eq": eq,
    "ne": ne,
    "lt": lt,
    "le": le,
    "gt": gt,
    "ge": ge,
    "call": call,
}
