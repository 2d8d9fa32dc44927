"""Serializers: Avro single-object encoding on fastavro, plus JSON telemetry.

Single-object encoding (Avro spec): ``C3 01`` marker, the 8-byte little-endian
CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form, then the binary
datum. Any reader holding the ``.avsc`` files knows the schema without a registry.

>>> from metaheal.events import Metric
>>> ser, de = AvroSerializer(Metric), AvroDeserializer(Metric)
>>> data = ser(Metric(service="api", metric="latency_ms", value=1.5, ts=0.0))
>>> data[:2]
b'\\xc3\\x01'
>>> de(data).value
1.5
>>> de(data[:5])
Traceback (most recent call last):
...
metaheal.errors.DecodeError: truncated: 5 bytes is shorter than the 10-byte single-object header
>>> TelemetryDeserializer()(b'{"service": "api", "metric": "cpu_utilization", "value": 0.5, "ts": 1}')[0].metric
'cpu_utilization'
"""

from __future__ import annotations

import io
import struct
from typing import Any, Generic, TypeVar, cast

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.validation import validate as avro_valid
from pydantic import ValidationError

from metaheal.errors import DecodeError, LimitExceeded
from metaheal.events import EVENT_TYPES, Event, Metric, MetricBatch, MetricSeries
from metaheal.kafka.flat_writer import FlatRecordWriter
from metaheal.kafka.limits import MAX_JSON_DEPTH, MAX_RECORD_BYTES, check_size, loads
from metaheal.schemas import history, load

E = TypeVar("E", bound=Event)
MAGIC = b"\xc3\x01"
HEADER_LEN = 10


def _fingerprint(schema: dict[str, Any]) -> bytes:
    canonical = to_parsing_canonical_form(fastavro.parse_schema(schema))
    return struct.pack("<Q", int(fingerprint(canonical, "CRC-64-AVRO"), 16))


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def validate(model: type[E], data: Any) -> E:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DecodeError(f"invalid {model.__name__}: {_validation_message(exc)}") from None


class _OlderVersion:
    """An earlier schema of a model (``schemas/history``) and how to tell whether it can hold an event."""

    def __init__(self, schema: dict[str, Any], current: dict[str, Any]) -> None:
        self.parsed = fastavro.parse_schema(schema)
        self.header = MAGIC + _fingerprint(schema)
        names = {f["name"] for f in schema["fields"]}
        #: fields it lacks, with the value they must have to be left out (their default)
        self.absent = {f["name"]: f.get("default") for f in current["fields"] if f["name"] not in names}

    def holds(self, datum: dict[str, Any]) -> dict[str, Any] | None:
        """``datum`` without the fields this version lacks, if nothing is lost that way (enum symbols included)."""
        if any(datum.get(k) != v for k, v in self.absent.items()):
            return None
        older = {k: v for k, v in datum.items() if k not in self.absent}
        return older if avro_valid(older, self.parsed, raise_errors=False) else None


class AvroSerializer(Generic[E]):
    """``event -> bytes`` in single-object encoding.

    For a model with earlier schema versions (``schemas/history``), an event that the oldest
    of them can hold is written with it: consumers that predate the change keep reading it.
    """

    def __init__(self, model: type[E]) -> None:
        self.model = model
        self.schema = load(model)
        self._parsed = fastavro.parse_schema(self.schema)
        self.fingerprint = _fingerprint(self.schema)
        self._header = MAGIC + self.fingerprint
        self._older = [_OlderVersion(old, self.schema) for old in history(model)]
        try:  # flat records (most events) have a writer ~4x faster than fastavro, same bytes
            self._flat: FlatRecordWriter | None = FlatRecordWriter(self.schema)
        except TypeError:
            self._flat = None

    def __call__(self, event: E) -> bytes:
        datum = event.model_dump(mode="python")
        for old in self._older:
            older = old.holds(datum)
            if older is not None:
                buf = io.BytesIO()
                buf.write(old.header)
                fastavro.schemaless_writer(buf, old.parsed, older)
                return buf.getvalue()
        return self.write_dict(datum)

    def write_dict(self, datum: dict[str, Any]) -> bytes:
        """Encode the field dict of a valid event (what ``model_dump`` returns), header included."""
        if self._flat is not None:
            return self._flat(datum, self._header)
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(buf, self._parsed, datum)
        return buf.getvalue()


class AvroDeserializer(Generic[E]):
    """``bytes -> event``; raises :class:`DecodeError` for anything else.

    Records written with an earlier schema of the model (``schemas/history``) are resolved to
    the current one: fields that version lacks take their defaults.
    """

    def __init__(self, model: type[E], *, max_bytes: int = MAX_RECORD_BYTES) -> None:
        self.model = model
        self._parsed = fastavro.parse_schema(load(model))
        self.fingerprint = _fingerprint(load(model))
        self.max_bytes = max_bytes
        self._writers = {_fingerprint(old): fastavro.parse_schema(old) for old in history(model)}

    @property
    def fingerprints(self) -> tuple[bytes, ...]:
        """Every fingerprint this reader accepts: the current schema's first."""
        return (self.fingerprint, *self._writers)

    @property
    def parsed_schema(self) -> Any:
        """The fastavro-parsed writer schema, for readers that decode the datum themselves."""
        return self._parsed

    def decode_dict(self, data: bytes) -> dict[str, Any]:
        check_size(data, self.max_bytes)
        fp = check_header(data, None)
        writer = self._writers.get(fp)
        if writer is None:
            check_header(data, self.fingerprint, self.model.__name__)
        try:
            buf = io.BytesIO(data[HEADER_LEN:])
            if writer is None:
                record = fastavro.schemaless_reader(buf, self._parsed, None)
            else:
                record = fastavro.schemaless_reader(buf, writer, self._parsed)
        except (EOFError, StopIteration, struct.error, UnicodeDecodeError, IndexError, ValueError) as exc:
            raise DecodeError(f"truncated or corrupt {self.model.__name__} datum: {exc!r}") from None
        return cast(dict[str, Any], record)  # a record schema decodes to a dict

    def __call__(self, data: bytes) -> E:
        return validate(self.model, self.decode_dict(data))


def check_header(data: bytes, expected: bytes | None, what: str = "record") -> bytes:
    """Return the fingerprint after checking marker and length (and identity if ``expected``)."""
    if len(data) < HEADER_LEN:
        raise DecodeError(f"truncated: {len(data)} bytes is shorter than the {HEADER_LEN}-byte single-object header")
    if data[:2] != MAGIC:
        raise DecodeError(f"not Avro single-object encoding: marker {data[:2].hex()} != c301")
    fp = data[2:HEADER_LEN]
    if expected is not None and fp != expected:
        raise DecodeError(f"unknown schema fingerprint {fp.hex()} (expected {what} {expected.hex()})")
    return fp


class RecordCodec:
    """``dict <-> bytes`` in single-object encoding for a record schema that is not an event (internal state).

    Data only: fastavro reads the datum against the schema, nothing in the bytes can name
    a type or run code. The fingerprint in the header is the schema's identity, so
    bytes in any other format (a pickle, another schema) are refused with a
    :class:`DecodeError` before any field is read.

    >>> codec = RecordCodec({"type": "record", "name": "Point", "namespace": "doc",
    ...                      "fields": [{"name": "version", "type": "int"}, {"name": "x", "type": "double"}]})
    >>> codec.decode(codec.encode({"version": 1, "x": 2.5}))
    {'version': 1, 'x': 2.5}
    >>> codec.decode(b"\\x80\\x05\\x95 a pickle")
    Traceback (most recent call last):
    ...
    metaheal.errors.DecodeError: not Avro single-object encoding: marker 8005 != c301
    """

    def __init__(self, schema: dict[str, Any], *, max_bytes: int = MAX_RECORD_BYTES) -> None:
        self.name = str(schema["name"])
        self._parsed = fastavro.parse_schema(schema)
        self.fingerprint = _fingerprint(schema)
        self._header = MAGIC + self.fingerprint
        self.max_bytes = max_bytes

    def encode(self, datum: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(buf, self._parsed, datum)
        return buf.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        check_size(data, self.max_bytes)
        check_header(data, self.fingerprint, self.name)
        try:
            return cast(dict[str, Any], fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), self._parsed, None))
        except (EOFError, StopIteration, struct.error, UnicodeDecodeError, IndexError, ValueError, TypeError) as exc:
            raise DecodeError(f"truncated or corrupt {self.name} datum: {exc!r}") from None


class EventDecoder:
    """Decodes any metaheal event by its fingerprint (for tools like ``ledger replay``)."""

    def __init__(self, models: tuple[type[Event], ...] = EVENT_TYPES) -> None:
        self._by_fp = {fp: d for d in (AvroDeserializer(m) for m in models) for fp in d.fingerprints}

    def __call__(self, data: bytes) -> Event:
        fp = check_header(data, None)
        de = self._by_fp.get(fp)
        if de is None:
            raise DecodeError(f"unknown schema fingerprint {fp.hex()}")
        return de(data)


class TelemetryDeserializer:
    """Telemetry as producers send it: Avro Metric/MetricBatch/MetricSeries, or the same as JSON.

    JSON: one sample, ``{"samples": [...]}`` (a batch), or ``{"service", "metric", "ts": [...],
    "values": [...]}`` (a series). Records longer than ``max_bytes`` and JSON nested deeper
    than ``max_depth`` are refused before they are parsed (:mod:`metaheal.kafka.limits`).
    """

    def __init__(self, *, max_bytes: int = MAX_RECORD_BYTES, max_depth: int = MAX_JSON_DEPTH) -> None:
        self._metric = AvroDeserializer(Metric, max_bytes=max_bytes)
        self._batch = AvroDeserializer(MetricBatch, max_bytes=max_bytes)
        self._series = AvroDeserializer(MetricSeries, max_bytes=max_bytes)
        self.max_bytes, self.max_depth = max_bytes, max_depth

    def __call__(self, data: bytes | None) -> list[Metric]:
        if not data:
            raise DecodeError("empty record: no telemetry value")
        check_size(data, self.max_bytes)
        if data[:2] == MAGIC:
            fp = check_header(data, None)
            if fp == self._metric.fingerprint:
                return [self._metric(data)]
            if fp == self._batch.fingerprint:
                return self._batch(data).samples
            if fp == self._series.fingerprint:
                return self._series(data).samples()
            raise DecodeError(
                f"unknown schema fingerprint {fp.hex()} on telemetry (expected Metric, MetricBatch or MetricSeries)"
            )
        try:
            doc = loads(data, max_bytes=self.max_bytes, max_depth=self.max_depth)
        except LimitExceeded:
            raise
        except DecodeError as exc:
            raise DecodeError(f"neither Avro single-object nor JSON: {exc}") from None
        if isinstance(doc, dict) and "samples" in doc:
            return validate(MetricBatch, doc).samples
        if isinstance(doc, dict) and isinstance(doc.get("values"), list):
            return validate(MetricSeries, doc).samples()
        if isinstance(doc, dict):
            return [validate(Metric, doc)]
        raise DecodeError(f"JSON telemetry must be an object, got {type(doc).__name__}")


class JsonSerializer(Generic[E]):
    """``event -> JSON bytes``; for humans and tools that cannot read Avro."""

    def __call__(self, event: E) -> bytes:
        return event.model_dump_json().encode()
