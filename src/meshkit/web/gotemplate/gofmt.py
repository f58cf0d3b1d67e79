"""Go's fmt for template values: how an action prints a value (%v) and printf's verbs.

Values are Python stand-ins for Go's: None is nil, NO_VALUE a missing map key (prints
`<no value>`), bool, int, float (float64), str, list/tuple (slices), dict (maps, printed
with sorted keys), and objects (printed with their `String()` method when they have one).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any


class _NoValue:
    """What a missing map key evaluates to (Go's invalid reflect.Value)."""

    _instance: _NoValue | None = None

    def __new__(cls) -> _NoValue:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<no value>"

    def __bool__(self) -> bool:
        return False


NO_VALUE = _NoValue()


def go_type(v: Any) -> str:
    if v is None or v is NO_VALUE:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, dict):
        return "map[string]interface {}"
    return type(v).__name__


def _digits(f: float) -> tuple[str, int]:
    """Shortest decimal digits of abs(f) and the decimal point position (Go's digs.dp)."""
    d = Decimal(repr(abs(f)))
    _, digits, exp = d.as_tuple()
    s = "".join(map(str, digits)).rstrip("0") or "0"
    assert isinstance(exp, int)
    dp = len(digits) + exp
    if s == "0":
        dp = 1
    return s, dp


def format_float(f: float, verb: str = "g", prec: int = -1) -> str:
    """strconv.FormatFloat(f, verb, prec, 64) for g/e/f (prec -1: shortest)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, f) < 0 else ""
    if prec >= 0 or verb == "f":
        if verb == "f":
            if prec < 0:
                s, dp = _digits(f)
                prec = max(len(s) - dp, 0)
            return sign + f"{abs(f):.{prec}f}"
        if verb == "e":
            return sign + _go_exp(f"{abs(f):.{prec}e}")
        out = f"{abs(f):.{prec or 1}g}"
        return sign + _go_exp(out)
    s, dp = _digits(f)
    if verb == "e":
        body = s[0] + ("." + s[1:] if len(s) > 1 else "")
        return sign + body + _exp_suffix(dp - 1 if s != "0" else 0)
    exp = dp - 1
    # shortest %g: exponent form below 1e-4 and from 1e6 on (Go's eprec 6)
    if s != "0" and (exp < -4 or exp >= 6):
        body = s[0] + ("." + s[1:] if len(s) > 1 else "")
        return sign + body + _exp_suffix(exp)
    if dp <= 0:
        return sign + "0." + "0" * -dp + s
    if dp >= len(s):
        return sign + s + "0" * (dp - len(s))
    return sign + s[:dp] + "." + s[dp:]


def _exp_suffix(exp: int) -> str:
    return "e" + ("-" if exp < 0 else "+") + f"{abs(exp):02d}"


def _go_exp(s: str) -> str:
    # Python writes at least two exponent digits too, as Go does
    return s


def go_str(v: Any) -> str:
    """fmt.Sprint of one value (%v)."""
    if isinstance(v, str):
        return v
    if v is None:
        return "<nil>"
    if v is NO_VALUE:
        return "<no value>"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_float(v)
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_str(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{go_str(k)}:{go_str(v[k])}" for k in sort_keys(v)) + "]"
    if isinstance(v, (bytes, bytearray)):
        return "[" + " ".join(str(b) for b in v) + "]"
    string = getattr(v, "String", None)
    if callable(string):
        return str(string())
    return str(v)


def sort_keys(d: dict[Any, Any]) -> list[Any]:
    try:
        return sorted(d)
    except TypeError:
        return sorted(d, key=lambda k: (go_type(k), go_str(k)))


def sprint(args: list[Any] | tuple[Any, ...]) -> str:
    """fmt.Sprint: a space between operands when neither is a string."""
    out: list[str] = []
    for i, a in enumerate(args):
        if i > 0 and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(go_str(a))
    return "".join(out)


def sprintln(args: list[Any] | tuple[Any, ...]) -> str:
    return " ".join(go_str(a) for a in args) + "\n"


def quote(s: str) -> str:
    """strconv.Quote."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in _QUOTE_ESC:
            out.append(_QUOTE_ESC[ch])
        elif ch.isprintable():
            out.append(ch)
        elif o < 0x80:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


_QUOTE_ESC = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}

_TOO_LARGE = 1_000_000  # Go's fmt refuses wider widths and precisions

_SPEC = re.compile(r"%([-+# 0]*)(\*|\d+)?(?:\.(\*|\d*))?([a-zA-Z%])")


def _bad(verb: str, v: Any) -> str:
    return f"%!{verb}({go_type(v)}={go_str(v)})"


def _pad(s: str, flags: str, width: int | None, numeric: bool = False) -> str:
    if width is None or len(s) >= width:
        return s
    if "-" in flags:
        return s + " " * (width - len(s))
    if "0" in flags and numeric:
        sign = s[0] if s[:1] in "+-" else ""
        body = s[len(sign) :]
        return sign + "0" * (width - len(s)) + body
    return " " * (width - len(s)) + s


def _sign(s: str, flags: str, negative: bool) -> str:
    if negative:
        return s
    if "+" in flags:
        return "+" + s
    if " " in flags:
        return " " + s
    return s


def _one(verb: str, flags: str, width: int | None, prec: int | None, v: Any) -> str:
    numeric = False
    if verb == "v":
        s = go_str(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            s, numeric = _sign(s, flags, v < 0), True
    elif verb == "s":
        if (isinstance(v, (int, float)) and not isinstance(v, bool)) or isinstance(v, bool):
            return _bad(verb, v)
        s = go_str(v)
        if prec is not None:
            s = s[:prec]
    elif verb == "q":
        if isinstance(v, str):
            s = quote(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            s = "'" + quote(chr(v))[1:-1].replace("'", "\\'").replace('\\"', '"') + "'"
        else:
            return _bad(verb, v)
    elif verb == "T":
        s = go_type(v)
    elif verb == "t":
        if not isinstance(v, bool):
            return _bad(verb, v)
        s = go_str(v)
    elif verb in "dboxXcU":
        if isinstance(v, bool) or not isinstance(v, (int, str, bytes)):
            if isinstance(v, float) and verb in "xX":
                s = v.hex()
            else:
                return _bad(verb, v)
        elif isinstance(v, (str, bytes)):
            if verb not in "xX":
                return _bad(verb, v)
            data = v.encode() if isinstance(v, str) else v
            s = data.hex()
            if verb == "X":
                s = s.upper()
        else:
            numeric = True
            neg = v < 0
            a = abs(v)
            if verb == "d":
                s = str(a)
            elif verb == "b":
                s = format(a, "b")
            elif verb == "o":
                s = ("0" if "#" in flags else "") + format(a, "o")
            elif verb == "x":
                s = ("0x" if "#" in flags else "") + format(a, "x")
            elif verb == "X":
                s = ("0X" if "#" in flags else "") + format(a, "X")
            elif verb == "c":
                return _pad(chr(v), flags, width)
            else:
                return _pad(f"U+{v:04X}", flags, width)
            if prec is not None and len(s) < prec:
                s = "0" * (prec - len(s)) + s
            s = _sign(("-" if neg else "") + s, flags, neg)
    elif verb in "eEfFgG":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return _bad(verb, v)
        if isinstance(v, int):
            return _bad(verb, v)
        numeric = True
        low = verb.lower()
        if low == "f":
            s = format_float(v, "f", 6 if prec is None else prec)
        elif low == "e":
            s = format_float(v, "e", 6 if prec is None else prec)
        else:
            s = format_float(v, "g", -1 if prec is None else prec)
        if verb.isupper():
            s = s.upper()
        s = _sign(s, flags, s.startswith("-"))
    else:
        return _bad(verb, v)
    return _pad(s, flags, width, numeric)


def sprintf(fmt: str, args: list[Any] | tuple[Any, ...]) -> str:
    """fmt.Sprintf with Go's verbs and its %!verb(...) markers for misuse."""
    out: list[str] = []
    pos = 0
    argi = 0
    for m in _SPEC.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width_s, prec_s, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        if verb == "%" and not flags and width_s is None and prec_s is None:
            out.append("%")
            continue
        width: int | None = None
        prec: int | None = None
        if width_s == "*":
            if argi < len(args) and isinstance(args[argi], int):
                width = min(args[argi], _TOO_LARGE)
            argi += 1
        elif width_s:
            width = int(width_s)
            if width > _TOO_LARGE:
                out.append("%!(BADWIDTH)")
                continue
        if prec_s == "*":
            if argi < len(args) and isinstance(args[argi], int):
                prec = min(args[argi], _TOO_LARGE)
            argi += 1
        elif prec_s is not None:
            prec = int(prec_s) if prec_s else 0
            if prec > _TOO_LARGE:
                out.append("%!(BADPREC)")
                continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_one(verb, flags, width, prec, args[argi]))
        argi += 1
    out.append(fmt[pos:])
    if argi < len(args):
        extra = ", ".join(f"{go_type(a)}={go_str(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)
