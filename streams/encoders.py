"""Avro writers for the worker's hottest output, byte for byte what the generic serializer writes.

A :class:`~metaheal.events.HealthWindow` of 20 series cost ~270 us to serialize through
``model_dump`` and fastavro (profiled in the worker: with live records of one sample per
series, a window closes about every other record); written straight from the model's
attributes it costs a tenth of that. The writer checks at construction that the schema
is the one it was written for, and :class:`HealthWriter` falls back to the generic
serializer if it is not (a field added to the model keeps working, only slower).

>>> from metaheal.events import SignalStats
>>> hw = HealthWindow(service="api", window_start=0.0, window_end=5.0, sample_count=2, signals=[
...     SignalStats(signal="latency", metric="latency_ms", count=2, mean=1.5, p50=1.5, p95=1.95, max=2.0)])
>>> HealthWriter()(hw) == AvroSerializer(HealthWindow)(hw)
True
"""

from __future__ import annotations

import struct
from typing import Any

from metaheal.events import HealthWindow
from metaheal.kafka.serializers import MAGIC, AvroSerializer

_D = struct.Struct("<d").pack
_DD = struct.Struct("<dd").pack
_D4 = struct.Struct("<dddd").pack

#: the schema this writer encodes: (field, Avro type) of HealthWindow and of its SignalStats items
_WINDOW_FIELDS = [("service", "string"), ("window_start", "double"), ("window_end", "double"), ("sample_count", "long")]
_SIGNAL_FIELDS = [
    ("signal", "string"),
    ("metric", "string"),
    ("count", "long"),
    ("mean", "double"),
    ("p50", "double"),
    ("p95", "double"),
    ("max", "double"),
    ("rate", ["null", "double"]),
    ("baseline_mean", ["null", "double"]),
    ("baseline_p95", ["null", "double"]),
    ("dependency", ["null", "string"]),
]


def avro_long(n: int) -> bytes:
    """Avro ``int``/``long``: zigzag varint.

    >>> avro_long(0), avro_long(-1), avro_long(64)
    (b'\\x00', b'\\x01', b'\\x80\\x01')
    """
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return avro_long(len(raw)) + raw


def _opt_double(x: float | None) -> bytes:
    return b"\x00" if x is None else b"\x02" + _D(x)


def _matches(schema: dict[str, Any]) -> bool:
    fields = schema["fields"]
    if [(f["name"], f["type"]) for f in fields[:4]] != _WINDOW_FIELDS or len(fields) != 5:
        return False
    signals = fields[4]
    items = signals["type"]["items"] if isinstance(signals["type"], dict) else None
    return (
        signals["name"] == "signals"
        and items is not None
        and [(f["name"], f["type"]) for f in items["fields"]] == _SIGNAL_FIELDS
    )


class HealthWriter:
    """``HealthWindow -> bytes`` (single-object encoding), as ``AvroSerializer(HealthWindow)`` writes it."""

    def __init__(self) -> None:
        self._generic = AvroSerializer(HealthWindow)
        self._header = MAGIC + self._generic.fingerprint if _matches(self._generic.schema) else None
        self._strings: dict[str, bytes] = {}

    def _s(self, text: str) -> bytes:
        out = self._strings.get(text)
        if out is None:
            if len(self._strings) > 100_000:
                self._strings.clear()
            out = self._strings[text] = _string(text)
        return out

    def __call__(self, hw: HealthWindow) -> bytes:
        if self._header is None or hw.__pydantic_extra__:
            return self._generic(hw)
        s = self._s
        parts = [self._header, s(hw.service), _DD(hw.window_start, hw.window_end), avro_long(hw.sample_count)]
        if hw.signals:
            parts.append(avro_long(len(hw.signals)))
            parts.extend(
                s(x.signal)
                + s(x.metric)
                + avro_long(x.count)
                + _D4(x.mean, x.p50, x.p95, x.max)
                + _opt_double(x.rate)
                + _opt_double(x.baseline_mean)
                + _opt_double(x.baseline_p95)
                + (b"\x00" if x.dependency is None else b"\x02" + s(x.dependency))
                for x in hw.signals
            )
        parts.append(b"\x00")
        return b"".join(parts)
