"""The codec: Avro single-object encoding on fastavro, JSON telemetry, and interop
with the Avro reference implementation (avro-python3)."""

from __future__ import annotations

import io
import json
import math
import struct
import types
import typing
from enum import Enum
from typing import Any, Literal

import avro.io
import avro.schema
import pytest
from avro.schemanormalization import Fingerprint, ToParsingCanonicalForm
from pydantic import BaseModel

from metaheal.events import (
    EVENT_TYPES,
    CycleFocus,
    Event,
    FocusArea,
    GuardrailAdjustment,
    LedgerEntry,
    Metric,
    MetricBatch,
    SignedOutcome,
)
from metaheal.kafka.serializers import (
    HEADER_LEN,
    MAGIC,
    AvroDeserializer,
    AvroSerializer,
    DecodeError,
    EventDecoder,
    TelemetryDeserializer,
    _fingerprint,
)
from metaheal.schemas import avro_schema, history, load, schema_path

IDS = [m.__name__ for m in EVENT_TYPES]


def _value(tp: Any, name: str, i: int) -> Any:
    """A valid, non-default value for a field type (every field filled, optional ones too)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _value(next(a for a in args if a is not type(None)), name, i)
    if origin is Literal:
        return args[i % len(args)]
    if isinstance(tp, type) and issubclass(tp, Enum):
        return list(tp)[i % len(tp)]
    if origin is list:
        return [_value(args[0], name, i), _value(args[0], name, i + 1)]
    if origin is dict:
        return {f"{name}-a": _value(args[1], name, i), f"{name}-b": _value(args[1], name, i + 1)}
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return sample(tp, i)
    if tp is bool:
        return i % 2 == 0
    if tp is int:
        return 3 + i
    if tp is float:
        return 0.25 + i / 100  # inside every [0, 1] bound of the models
    if tp is str:
        return f"{name}-{i}-é✓"  # non-ASCII on purpose
    if tp is bytes:
        return bytes([0, 255, i % 256]) + b"\xc3\x01"
    raise TypeError(f"no sample for {name}: {tp!r}")


def sample(model: type[BaseModel], i: int = 0) -> Any:
    hints = typing.get_type_hints(model)
    return model(**{name: _value(hints[name], name, i) for name in model.model_fields})


@pytest.mark.parametrize("model", EVENT_TYPES, ids=IDS)
def test_round_trip_of_every_event_type(model: type[Event]) -> None:
    event = sample(model)
    data = AvroSerializer(model)(event)
    assert data[:2] == MAGIC
    assert AvroDeserializer(model)(data) == event
    assert EventDecoder()(data) == event


def test_str_enums_are_their_values_on_the_wire() -> None:
    """FocusArea and GuardrailAdjustment are enums in Python and the same strings for consumers."""
    cf = sample(CycleFocus)
    assert isinstance(cf.focus_area, FocusArea) and cf.focus_area.value == "latency_drift"
    assert isinstance(cf.guardrail_adjustment, GuardrailAdjustment)
    assert (
        CycleFocus.model_validate({**cf.model_dump(), "focus_area": "error_spike"}).focus_area is FocusArea.ERROR_SPIKE
    )
    assert json.loads(cf.model_dump_json())["focus_area"] == "latency_drift"
    datum = AvroDeserializer(CycleFocus).decode_dict(AvroSerializer(CycleFocus)(cf))
    assert type(datum["focus_area"]) is str and datum["focus_area"] == "latency_drift"
    # what a consumer in another language reads: the enum symbols are the strings
    assert load(CycleFocus)["fields"][2]["type"]["symbols"] == [f.value for f in FocusArea]


@pytest.mark.parametrize("model", EVENT_TYPES, ids=IDS)
def test_committed_avsc_matches_the_model(model: type[Event]) -> None:
    committed = json.loads(schema_path(model).read_text())
    assert committed == avro_schema(model), f"{schema_path(model).name} is stale: run `make schemas`"
    # ...and every model field is in the schema under the same name, in order.
    assert [f["name"] for f in committed["fields"]] == list(model.model_fields)


def test_fingerprints_are_distinct() -> None:
    fps = {AvroSerializer(m).fingerprint for m in EVENT_TYPES}
    assert len(fps) == len(EVENT_TYPES)


# --- interop with avro-python3 -------------------------------------------------------------------


def _reference(model: type[Event]) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(load(model)))


def _reference_fingerprint(model: type[Event]) -> bytes:
    canonical = ToParsingCanonicalForm(_reference(model))
    return struct.pack("<Q", int.from_bytes(Fingerprint(canonical, "CRC-64-AVRO"), "big"))


def _avro_python(event: Event) -> dict[str, Any]:
    return event.model_dump(mode="python")


@pytest.mark.parametrize("model", EVENT_TYPES, ids=IDS)
def test_metaheal_bytes_decode_with_avro_python3(model: type[Event]) -> None:
    event = sample(model, 1)
    data = AvroSerializer(model)(event)
    assert data[2:HEADER_LEN] == _reference_fingerprint(model)
    reader = avro.io.DatumReader(_reference(model))
    datum = reader.read(avro.io.BinaryDecoder(io.BytesIO(data[HEADER_LEN:])))
    assert model.model_validate(datum) == event


@pytest.mark.parametrize("model", EVENT_TYPES, ids=IDS)
def test_avro_python3_bytes_decode_with_metaheal(model: type[Event]) -> None:
    event = sample(model, 2)
    buf = io.BytesIO()
    buf.write(MAGIC + _reference_fingerprint(model))
    avro.io.DatumWriter(_reference(model)).write(_avro_python(event), avro.io.BinaryEncoder(buf))
    assert AvroDeserializer(model)(buf.getvalue()) == event
    assert EventDecoder()(buf.getvalue()) == event


# --- bad input: a DecodeError naming the problem, never a crash ----------------------------------

METRIC = Metric(service="api", metric="latency_ms", value=245.0, ts=1736951400.0, labels={"host": "h1"})


def test_unknown_fingerprint_is_named() -> None:
    data = AvroSerializer(LedgerEntry)(sample(LedgerEntry))
    with pytest.raises(DecodeError, match=r"unknown schema fingerprint [0-9a-f]{16}.*expected Metric"):
        AvroDeserializer(Metric)(data)
    with pytest.raises(DecodeError, match=r"unknown schema fingerprint .* on telemetry"):
        TelemetryDeserializer()(data)
    forged = MAGIC + b"\x00" * 8 + data[HEADER_LEN:]
    with pytest.raises(DecodeError, match="unknown schema fingerprint 0000000000000000"):
        EventDecoder()(forged)


@pytest.mark.parametrize("cut", [0, 1, 9, 10, 11, 20, -1])
def test_truncated_bytes(cut: int) -> None:
    data = AvroSerializer(Metric)(METRIC)
    with pytest.raises(DecodeError, match=r"truncated|empty record|neither Avro single-object nor JSON"):
        TelemetryDeserializer()(data[:cut] if cut >= 0 else data[:-3])


def test_truncation_anywhere_never_crashes() -> None:
    data = AvroSerializer(MetricBatch)(MetricBatch(samples=[METRIC] * 3))
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            AvroDeserializer(MetricBatch)(data[:cut])


def test_bad_marker() -> None:
    with pytest.raises(DecodeError, match="marker 0000 != c301"):
        AvroDeserializer(Metric)(b"\x00" * 20)


def test_wrong_types_in_avro_datum_are_named() -> None:
    # A producer using the right fingerprint but a wrong writer: `ts` written as a string.
    schema = load(Metric)
    bad = {**schema, "fields": [{**f, "type": "string"} if f["name"] == "ts" else f for f in schema["fields"]]}
    buf = io.BytesIO()
    buf.write(MAGIC + AvroSerializer(Metric).fingerprint)
    avro.io.DatumWriter(avro.schema.parse(json.dumps(bad))).write(
        {"service": "api", "metric": "m", "value": 1.0, "ts": "yesterday", "labels": {}}, avro.io.BinaryEncoder(buf)
    )
    with pytest.raises(DecodeError, match="Metric"):
        AvroDeserializer(Metric)(buf.getvalue())


def test_nan_and_inf_are_rejected_on_both_paths() -> None:
    # fastavro happily writes NaN, so build the datum by hand and check the decoder refuses it.
    ser = AvroSerializer(Metric)
    for bad in (math.nan, math.inf, -math.inf):
        event = Metric.model_construct(service="api", metric="m", value=bad, ts=0.0, labels={})
        with pytest.raises(DecodeError, match="invalid Metric: value: Input should be a finite number"):
            AvroDeserializer(Metric)(ser(event))
    for text in ("NaN", "Infinity", "-Infinity"):
        doc = f'{{"service": "api", "metric": "m", "value": {text}, "ts": 0}}'.encode()
        with pytest.raises(DecodeError, match="value: Input should be a finite number"):
            TelemetryDeserializer()(doc)


def test_json_wrong_types_and_missing_service_are_named() -> None:
    de = TelemetryDeserializer()
    with pytest.raises(DecodeError, match="invalid Metric: service: Field required"):
        de(b'{"metric": "m", "value": 1, "ts": 0}')
    with pytest.raises(DecodeError, match="service: String should have at least 1 character"):
        de(b'{"service": "", "metric": "m", "value": 1, "ts": 0}')
    with pytest.raises(DecodeError, match="value: Input should be a valid number"):
        de(b'{"service": "api", "metric": "m", "value": "fast", "ts": 0}')
    with pytest.raises(DecodeError, match=r"labels\.host: Input should be a valid string"):
        de(b'{"service": "api", "metric": "m", "value": 1, "ts": 0, "labels": {"host": 1}}')
    with pytest.raises(DecodeError, match=r"samples\.1\.service: Field required"):
        de(b'{"samples": [{"service": "a", "metric": "m", "value": 1, "ts": 0}, {"metric": "m", "value": 1, "ts": 0}]}')
    with pytest.raises(DecodeError, match="extra: Extra inputs are not permitted"):
        de(b'{"service": "api", "metric": "m", "value": 1, "ts": 0, "extra": 1}')
    with pytest.raises(DecodeError, match="must be an object, got list"):
        de(b"[1, 2]")
    with pytest.raises(DecodeError, match="neither Avro single-object nor JSON"):
        de(b"\xff\xfe garbage")
    with pytest.raises(DecodeError, match="empty record"):
        de(None)


# --- JSON telemetry ------------------------------------------------------------------------------


def test_json_telemetry_single_and_batch() -> None:
    de = TelemetryDeserializer()
    single = b'{"service": "api", "metric": "latency_ms", "value": 245.0, "ts": 1736951400.0, "labels": {"host": "h1"}}'
    assert de(single) == [METRIC]
    batch = json.dumps({"samples": [METRIC.model_dump(), {**METRIC.model_dump(), "value": 250}]}).encode()
    got = de(batch)
    assert [m.value for m in got] == [245.0, 250.0]
    assert all(isinstance(m, Metric) for m in got)


def test_avro_telemetry_single_and_batch() -> None:
    de = TelemetryDeserializer()
    assert de(AvroSerializer(Metric)(METRIC)) == [METRIC]
    batch = MetricBatch(samples=[METRIC, METRIC.model_copy(update={"service": "db"})])
    assert [m.service for m in de(AvroSerializer(MetricBatch)(batch))] == ["api", "db"]


# --- schema evolution: SignedOutcome gained `inconclusive` and three optional fields -------------


def _outcome(**kw: Any) -> SignedOutcome:
    base = dict(
        outcome_id="o1",
        plan_id="p1",
        directive_id="d1",
        cycle_id="c1",
        service="api",
        playbook="rollback_flag",
        result="success",
        duration_seconds=3.5,
        trust_decision="auto_approved",
        actor="executor",
        actor_signature="00",
        ts=1.0,
    )
    return SignedOutcome(**{**base, **kw})


def test_outcomes_written_before_the_change_stay_readable() -> None:
    [old] = history(SignedOutcome)
    old_fp = _fingerprint(old)
    assert old_fp != AvroSerializer(SignedOutcome).fingerprint
    buf = io.BytesIO()  # written by an old producer, with the reference implementation
    buf.write(MAGIC + old_fp)
    datum = {
        k: v for k, v in _outcome(result="rolled_back").model_dump().items() if k in {f["name"] for f in old["fields"]}
    }
    avro.io.DatumWriter(avro.schema.parse(json.dumps(old))).write(datum, avro.io.BinaryEncoder(buf))
    got = AvroDeserializer(SignedOutcome)(buf.getvalue())
    assert got == _outcome(result="rolled_back") and got.confirmed_by is None
    assert EventDecoder()(buf.getvalue()) == got


def test_old_readers_keep_reading_every_outcome_the_old_schema_can_hold() -> None:
    [old] = history(SignedOutcome)
    old_reader = avro.io.DatumReader(avro.schema.parse(json.dumps(old)))
    ser = AvroSerializer(SignedOutcome)
    plain = ser(_outcome())
    assert plain[2:HEADER_LEN] == _fingerprint(old)  # what an old consumer expects
    assert old_reader.read(avro.io.BinaryDecoder(io.BytesIO(plain[HEADER_LEN:])))["result"] == "success"
    # what only the new schema can say goes out under the new fingerprint: an old consumer skips it as unknown
    # (its DecodeError path), a new one reads it
    for new in (_outcome(result="inconclusive"), _outcome(confirmed_by="alice"), _outcome(settled_after_seconds=4.0)):
        data = ser(new)
        assert data[2:HEADER_LEN] == ser.fingerprint
        assert AvroDeserializer(SignedOutcome)(data) == new
