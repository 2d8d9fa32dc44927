"""Base class of the per-series detectors: a river anomaly detector with a data-only state.

Every detector reads one sample of one series as ``{"ts": epoch seconds, "value": float}`` and
follows river's contract (:class:`river.base.AnomalyDetector`): ``score_one`` does not
change the model, ``learn_one`` does. A stream is scored *test-then-train*, so the hot path is
:meth:`SeriesDetector.score_learn_one`, which does both in one pass; ``score_one`` runs it on a
copy.

Checkpoints are data, never code: :meth:`~SeriesDetector.state_dict` returns JSON types only
(numbers, strings, lists, dicts; numeric arrays as base64), tagged with the class name and a
``version``; :meth:`~SeriesDetector.from_state` rebuilds a detector, upgrades the older versions a
class lists in ``read_versions``, and refuses any other class or version with :class:`StateError`.

>>> class Mean(SeriesDetector):
...     state_version = 1
...     def __init__(self):
...         self.n, self.mean = 0, 0.0
...     def score_learn_one(self, x):
...         d = abs(x["value"] - self.mean) if self.n else 0.0
...         self.n += 1
...         self.mean += (x["value"] - self.mean) / self.n
...         return d
...     def _get_state(self):
...         return {"n": self.n, "mean": self.mean}
...     def _set_state(self, state):
...         self.n, self.mean = state["n"], state["mean"]
>>> m = Mean()
>>> m.learn_one({"ts": 0.0, "value": 2.0})
>>> m.score_one({"ts": 1.0, "value": 5.0}), m.n
(3.0, 1)
>>> Mean.from_state(m.state_dict()).mean
2.0
>>> try:
...     Mean.from_state({"kind": "Mean", "version": 0, "state": {}})
... except StateError as exc:
...     print(exc)
Mean state version 0 is not supported (expected 1)
"""

from __future__ import annotations

import base64
import copy
import sys
from array import array
from typing import Any, ClassVar, Self

import numpy as np
from river import base
from river.base.typing import FeatureName

from metaheal.errors import StateError

__all__ = ["SeriesDetector", "StateError", "decode_array", "decode_floats", "encode_array", "encode_floats"]

_BIG_ENDIAN = sys.byteorder == "big"  # checkpoints are little-endian on every host


def encode_floats(values: Any) -> str:
    """A float sequence as base64 float32 (4 bytes a value: scores and deviations need no more).

    >>> decode_floats(encode_floats([0.5, 2.0, -1.0]))
    [0.5, 2.0, -1.0]
    """
    return base64.b64encode(np.asarray(values, dtype=np.float32).tobytes()).decode("ascii")


def decode_floats(text: str) -> list[float]:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) % 4:
        raise StateError(f"float array of {len(raw)} bytes is not a whole number of float32 values")
    values: list[float] = np.frombuffer(raw, dtype=np.float32).astype(np.float64).tolist()
    return values


def encode_array(values: array[Any], keep: int | None = None) -> str:
    """A fixed-width array as base64 of its little-endian byte planes (every value's first byte, then
    every second byte, ...): the high bytes of small counts and the exponents of similar floats line
    up into runs that zlib compresses. ``keep`` stores only the low ``keep`` planes (values known to
    fit; anything in the planes left out is an error).

    >>> text = encode_array(array("I", [1, 2, 515]), keep=2)
    >>> text, decode_array(text, "I", 3, keep=2).tolist()
    ('AQIDAAAC', [1, 2, 515])
    """
    if _BIG_ENDIAN:
        values = array(values.typecode, values)
        values.byteswap()
    raw = values.tobytes()
    width = values.itemsize
    planes = [raw[i::width] for i in range(width)]
    if keep is not None:
        if any(plane.strip(b"\0") for plane in planes[keep:]):
            raise ValueError(f"values do not fit in {keep} bytes")
        planes = planes[:keep]
    return base64.b64encode(b"".join(planes)).decode("ascii")


def decode_array(text: str, typecode: str, count: int, keep: int | None = None) -> array[Any]:
    """The ``count`` values that :func:`encode_array` wrote; :class:`StateError` on any other length."""
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    values = array(typecode)
    width = values.itemsize
    stored = width if keep is None else keep
    if len(raw) != count * stored:
        raise StateError(f"array of {len(raw)} bytes is not {count} values of {stored} bytes")
    out = bytearray(count * width)
    for i in range(stored):
        out[i::width] = raw[i * count : (i + 1) * count]
    values.frombytes(out)
    if _BIG_ENDIAN:
        values.byteswap()
    return values


class SeriesDetector(base.AnomalyDetector):
    """A univariate streaming detector over ``{"ts", "value"}`` samples, checkpointed as data."""

    state_version: ClassVar[int] = 1
    #: older state versions :meth:`from_state` still reads, through :meth:`_upgrade_state`
    read_versions: ClassVar[tuple[int, ...]] = ()

    def score_learn_one(self, x: dict[FeatureName, Any]) -> float:
        """Score ``x`` against the past, then learn it (one pass)."""
        raise NotImplementedError

    def learn_one(self, x: dict[FeatureName, Any]) -> None:
        self.score_learn_one(x)

    def score_one(self, x: dict[FeatureName, Any]) -> float:
        return copy.deepcopy(self).score_learn_one(x)

    # -- checkpoints ---------------------------------------------------------------------------

    def _get_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    @classmethod
    def _upgrade_state(cls, state: dict[str, Any], version: int) -> dict[str, Any]:
        """``state`` of an older ``version`` (one of :attr:`read_versions`) in the current layout."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The learnt state and the parameters, as JSON types (``json.dumps`` works on it)."""
        return {"kind": type(self).__name__, "version": self.state_version, "state": self._get_state()}

    @classmethod
    def from_state(cls, data: object) -> Self:
        """A detector continuing where the one that wrote ``data`` stopped."""
        if not isinstance(data, dict) or data.get("kind") != cls.__name__:
            kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
            raise StateError(f"not a {cls.__name__} state: {kind!r}")
        version = data.get("version")
        if version != cls.state_version and version not in cls.read_versions:
            raise StateError(f"{cls.__name__} state version {version} is not supported (expected {cls.state_version})")
        obj = cls.__new__(cls)
        try:
            state = data["state"]
            if version != cls.state_version:
                state = cls._upgrade_state(state, version)
            obj._set_state(state)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise StateError(f"{cls.__name__} state is malformed: {exc!r}") from None
        return obj
