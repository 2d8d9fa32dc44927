"""Avro schemas (``*.avsc``) for every event, and the code that derives them.

The ``.avsc`` files are the contract other languages read; the pydantic models in
:mod:`metaheal.events` are the contract Python code reads. ``python -m
metaheal.schemas`` rewrites the files from the models and a test fails if a
committed file and its model disagree.

>>> from metaheal.events import Metric
>>> avro_schema(Metric)["fields"][0]
{'name': 'service', 'type': 'string'}
>>> [f["type"] for f in avro_schema(Metric)["fields"]][-1]
{'type': 'map', 'values': 'string'}
"""

from __future__ import annotations

import json
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from metaheal.events import EVENT_TYPES

SCHEMA_DIR = Path(__file__).resolve().parent
#: Earlier wire versions, ``history/<Name>.<n>.avsc``: kept so records written with them stay readable.
HISTORY_DIR = SCHEMA_DIR / "history"
NAMESPACE = "metaheal"

_PRIMITIVES: dict[Any, str] = {str: "string", float: "double", int: "long", bool: "boolean", bytes: "bytes"}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _avro_type(tp: Any, field_name: str, defined: set[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp in _PRIMITIVES:
        return _PRIMITIVES[tp]
    if origin in (typing.Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        if len(non_null) != 1:
            raise TypeError(f"{field_name}: only Optional[X] unions are supported")
        return ["null", _avro_type(non_null[0], field_name, defined)]
    if origin is list:
        return {"type": "array", "items": _avro_type(args[0], field_name, defined)}
    if origin is dict:
        if args[0] is not str:
            raise TypeError(f"{field_name}: Avro maps need str keys")
        return {"type": "map", "values": _avro_type(args[1], field_name, defined)}
    if origin is Literal or (isinstance(tp, type) and issubclass(tp, Enum)):
        # named after the field either way, so a Literal that became an Enum keeps its schema
        name = _camel(field_name)
        if name in defined:
            return name
        defined.add(name)
        symbols = list(args) if origin is Literal else [m.value for m in tp]
        return {"type": "enum", "name": name, "symbols": symbols}
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return _record(tp, defined)
    raise TypeError(f"{field_name}: no Avro mapping for {tp!r}")


def _record(model: type[BaseModel], defined: set[str]) -> Any:
    name = getattr(model, "avro_name", None) or model.__name__
    if name in defined:
        return name
    defined.add(name)
    hints = typing.get_type_hints(model)
    fields = []
    for fname, finfo in model.model_fields.items():
        avro = _avro_type(hints[fname], fname, defined)
        field: dict[str, Any] = {"name": fname, "type": avro}
        default = finfo.get_default(call_default_factory=True)
        if (default is not PydanticUndefined and default is not None) or (default is None and isinstance(avro, list)):
            field["default"] = default
        if finfo.description:
            field["doc"] = finfo.description
        fields.append(field)
    rec: dict[str, Any] = {"type": "record", "name": name, "fields": fields}
    if model.__doc__:
        rec["doc"] = " ".join(model.__doc__.split())
    return rec


def avro_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The Avro schema (as a JSON-ready dict) for a pydantic event model."""
    rec = _record(model, set())
    return {"namespace": NAMESPACE, **rec}


def schema_path(model: type[BaseModel]) -> Path:
    return SCHEMA_DIR / f"{getattr(model, 'avro_name', None) or model.__name__}.avsc"


def load(model: type[BaseModel]) -> dict[str, Any]:
    """The committed ``.avsc`` for ``model`` (what goes on the wire)."""
    return json.loads(schema_path(model).read_text())


def history(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Earlier versions of ``model``'s schema, oldest first (never rewritten: records on topics use them).

    A reader resolves a record written with one of them to the current model (Avro schema
    resolution: fields the old version lacks take their defaults); a writer uses the oldest
    one that can hold an event, so readers that predate a change keep reading what they can.
    """
    name = getattr(model, "avro_name", None) or model.__name__
    files = sorted(HISTORY_DIR.glob(f"{name}.*.avsc"), key=lambda p: int(p.name.split(".")[1]))
    return [json.loads(p.read_text()) for p in files]


def write_all() -> list[Path]:
    paths = []
    for model in EVENT_TYPES:
        path = schema_path(model)
        path.write_text(json.dumps(avro_schema(model), indent=2) + "\n")
        paths.append(path)
    return paths
