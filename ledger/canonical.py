"""Canonical JSON: the only byte form that is ever hashed or signed.

Two parties that agree on the data must produce the same bytes, on any platform
and in any language, or signatures stop verifying. The rule is RFC 8785 (JSON
Canonicalization Scheme, "JCS"), which is what a third party should implement
(or take from a JCS library). Precisely:

* Output is UTF-8, with no whitespace between tokens.
* ``null``, ``true``, ``false`` as usual.
* Objects: keys must be strings; members are sorted by the UTF-16 code units of
  their keys (RFC 8785 §3.2.3); duplicate keys are impossible (input is a dict).
* Strings: ``"`` and ``\\`` are escaped with a backslash; U+0008, U+0009, U+000A,
  U+000C, U+000D as ``\\b \\t \\n \\f \\r``; other code points below U+0020 as
  ``\\u00xx`` (lowercase hex); everything else (including non-ASCII) literally.
  Lone surrogates are rejected.
* Integers (Python ``int``, not ``bool``) are written in plain decimal, exactly,
  whatever their size. This is the one deviation from RFC 8785, and only for
  integers beyond +-2**53, which JCS would first round to a double; keep such
  numbers (e.g. nanosecond timestamps) as strings if non-Python verifiers matter.
* Floats: NaN and the infinities are rejected. A finite float is written as
  ECMAScript ``Number.prototype.toString`` does (RFC 8785 §3.2.2.3): the shortest
  digit string that round-trips to the same IEEE-754 double, in plain notation
  when the decimal exponent ``n`` satisfies ``-6 < n <= 21`` and as
  ``d.ddde+NN`` / ``d.ddde-NN`` otherwise; ``-0.0`` is written ``0``; a float
  with an integral value is written without a fraction (``2.0`` -> ``2``).
  Consequently a float and an int of equal value canonicalise identically.
* Lists and tuples are JSON arrays; any other type is rejected (``TypeError``
  naming the path of the offending value), so nothing is silently stringified.

>>> canonical_json({"b": 1, "a": [True, None, 0.1, 1e21, 2.0, -0.0, 1e-7]})
'{"a":[true,null,0.1,1e+21,2,0,1e-7],"b":1}'
>>> canonical_json({"é": "line\\nbreak \\u0001"})
'{"é":"line\\\\nbreak \\\\u0001"}'
>>> canonical_json({"x": float("nan")})
Traceback (most recent call last):
...
ValueError: $.x: NaN and Infinity have no canonical JSON form
>>> canonical_json({"when": object()})
Traceback (most recent call last):
...
TypeError: $.when: object is not a JSON type (use str, int, float, bool, None, list, dict)
"""

from __future__ import annotations

import math
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any

# The stdlib's C string encoder (ensure_ascii=False flavour) escapes exactly the
# JCS set: '"', '\\', \b \t \n \f \r, and other code points below U+0020 as \u00xx.
quote = encode_basestring


def _string(s: str, path: str) -> str:
    return quote(s)  # lone surrogates are caught once, on the whole output (see canonical_json)


def _surrogate_path(value: Any, path: str = "$") -> str | None:
    def bad(s: str) -> bool:
        try:
            s.encode("utf-8")
            return False
        except UnicodeEncodeError:
            return True

    if isinstance(value, str):
        return path if bad(value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            if bad(k):
                return path
            found = _surrogate_path(v, f"{path}.{k}")
            if found:
                return found
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _surrogate_path(v, f"{path}[{i}]")
            if found:
                return found
    return None


def format_float(x: float, path: str = "$") -> str:
    """ECMAScript ``Number.prototype.toString`` of a finite double.

    >>> [format_float(v) for v in (1.5, 100.0, 1e21, 1.25e-7, 0.000001, 123456789012345680000.0)]
    ['1.5', '100', '1e+21', '1.25e-7', '0.000001', '123456789012345680000']
    """
    if not math.isfinite(x):
        raise ValueError(f"{path}: NaN and Infinity have no canonical JSON form")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    # repr() gives the shortest round-tripping digits (Python >= 3.1, David Gay / Ryu style).
    t = Decimal(repr(abs(x))).as_tuple()
    digits = "".join(map(str, t.digits)).rstrip("0") or "0"
    k = len(digits)
    n = len(t.digits) + int(t.exponent)  # value = 0.digits * 10^n
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        exp = f"e{'+' if e >= 0 else '-'}{abs(e)}"
        out = digits + exp if k == 1 else digits[0] + "." + digits[1:] + exp
    return sign + out


def _sort_key(k: str) -> bytes:
    return k.encode("utf-16-be", "surrogatepass")


def _encode(value: Any, path: str, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value, path))
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, float):
        out.append(format_float(value, path))
    elif isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise TypeError(f"{path}: object key {k!r} is not a string")
        out.append("{")
        for i, k in enumerate(sorted(value, key=_sort_key)):
            if i:
                out.append(",")
            out.append(_string(k, path))
            out.append(":")
            _encode(value[k], f"{path}.{k}", out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            _encode(v, f"{path}[{i}]", out)
        out.append("]")
    else:
        raise TypeError(
            f"{path}: {type(value).__name__} is not a JSON type (use str, int, float, bool, None, list, dict)"
        )


def canonical_json(value: Any) -> str:
    """The canonical JSON text of ``value`` (see the module docstring for the rules)."""
    return canonical_bytes(value).decode("utf-8")


def canonical_bytes(value: Any) -> bytes:
    """``canonical_json(value)`` as UTF-8 bytes: what gets hashed and signed."""
    out: list[str] = []
    _encode(value, "$", out)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{_surrogate_path(value)}: string contains a lone surrogate") from None
