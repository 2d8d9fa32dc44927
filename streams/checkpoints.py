"""Checkpoint records of the per-series scorers: data only, compact, and bounded at every age.

A checkpoint is a scorer's :meth:`~metaheal.streams.scorer.AnomalyScorer.state_dict` (JSON types, a
model name and version; arrays as base64 byte planes) as compact JSON, zlib-compressed against a
preset dictionary (the shape of a scorer state: its key names and default parameters, which every
checkpoint repeats). The state has a fixed layout (every array at its full size from the first
sample), so its JSON is the same size at every age; compressed, a young state is smaller (less in
it) and a mature one stays under :data:`CHECKPOINT_BUDGET`.

Reading accepts what earlier workers wrote too (plain JSON; zlib without a dictionary):
the zlib header names its dictionary by Adler-32 checksum, and only this module's dictionaries
are used. Decompression stops at :data:`MAX_CHECKPOINT_BYTES` (a small record cannot expand into
gigabytes), anything after the stream is refused, and the JSON goes through the
bounded reader of :mod:`metaheal.kafka.limits`. Nothing in a checkpoint is executed.

>>> blob = encode_checkpoint({"model": "m", "version": 1})
>>> decode_checkpoint(blob)
{'model': 'm', 'version': 1}
>>> decode_checkpoint(zlib.compress(b'{"model": "m"}'))  # as the previous release wrote it
{'model': 'm'}
>>> decode_checkpoint(blob + b"x")
Traceback (most recent call last):
...
metaheal.errors.DecodeError: checkpoint has data after its zlib stream
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from metaheal.errors import DecodeError
from metaheal.kafka.limits import loads

__all__ = ["CHECKPOINT_BUDGET", "MAX_CHECKPOINT_BYTES", "decode_checkpoint", "encode_checkpoint"]

#: the most a scorer's checkpoint takes, compressed (a mature one: 2.9-3.4 KB), so one record every
#: 120 s (``streams.checkpoint_interval_seconds``) stays under 2 KB a minute; checked by the tests
CHECKPOINT_BUDGET = 3584
#: the largest checkpoint accepted, decompressed (a scorer's is about 17 KB)
MAX_CHECKPOINT_BYTES = 1 << 20
_LEVEL = 6

#: zlib preset dictionary 1: a scorer state (``metaheal-likelihood/2``; ``AnomalyLikelihood`` and
#: ``ForecastResidual`` state 3) with its leaves blanked. Frozen: a checkpoint names it by checksum, so
#: changing it would make every stored checkpoint unreadable; add a new one (keep this one) instead.
_DICT_1 = (
    b'{"model":"metaheal-likelihood/2","version":2,"seed":0,"likelihood":{"kind":"AnomalyLikelihood","vers'
    b'ion":3,"state":{"surprise":0.99,"short":10,"window":2000,"learning":50,"red":1e-05,"yellow":0.001,"c'
    b'alibrated":true,"prior":300,"detector":{"kind":"ForecastResidual","version":3,"state":{"warmup":50,"'
    b'halflife":10.0,"scale_halflife":35.0,"smooth_halflife":4.0,"window":2000,"tail":20,"resolution":0.00'
    b'7692307692307693,"seasonal":true,"counters":true,"flatline":true,"_n":0,"_level":0,"_scale_alpha":0.'
    b'01960939006022655,"_scale":0,"_err_local":0,"_lo":0,"_hi":0,"_same_sign":0,"_fast":0,"_fast_scale":0'
    b',"_err_fast":0,"_active":0,"_n_raw":0,"_last_ts":0,"_last_raw":0,"_typ_dt":0,"_counter_state":0,"_in'
    b'creasing":0,"_run":0,"_p_repeat":0,"baseline":0,"confidence":0,"_recent":[0],"_tracks":[{"alpha":0.1'
    b'591035847462855,"shift":0,"point":{"window":2000,"tail":20,"blocks":0,"sizes":"","tops":"","hists":"'
    b'"},"sustained":{"window":2000,"tail":20,"blocks":0,"sizes":"","tops":"","hists":""}}],"_profiles":[{'
    b'"err":0,"level":0,"period":86400.0,"scale":0,"slots":96,"start":0,"width":900.0,"values":"","weights'
    b'":""}],"_cal_run":{"window":2000,"tail":20,"blocks":0,"sizes":"","tops":"","hists":""}}},"recent":[0'
    b'],"history":"","n":0,"was_red":false}},"novelty":{"kind":"RangeNovelty","version":1,"state":{"tolera'
    b'nce":0.05,"after":300,"n":0,"min":0,"max":0}}}'
)
_DICTIONARIES = {zlib.adler32(d): d for d in (_DICT_1,)}


def encode_checkpoint(state: dict[str, Any]) -> bytes:
    """A scorer state as the bytes stored in ``scorer-state`` (see the module doc)."""
    z = zlib.compressobj(_LEVEL, zdict=_DICT_1)
    return z.compress(json.dumps(state, separators=(",", ":")).encode()) + z.flush()


def decode_checkpoint(blob: bytes) -> Any:
    """The JSON value of a checkpoint (this module's records, or plain JSON / zlib as older workers wrote).

    >>> decode_checkpoint(zlib.compress(b" " * (MAX_CHECKPOINT_BYTES + 1)))
    Traceback (most recent call last):
    ...
    metaheal.errors.DecodeError: checkpoint expands beyond 1048576 bytes
    """
    if blob[:1] == b"{":
        return loads(blob, max_bytes=MAX_CHECKPOINT_BYTES)
    if len(blob) >= 6 and blob[1] & 0x20:  # FDICT: the dictionary's Adler-32 follows the 2-byte header
        dict_id = int.from_bytes(blob[2:6], "big")
        zdict = _DICTIONARIES.get(dict_id)
        if zdict is None:
            raise DecodeError(f"checkpoint needs an unknown zlib dictionary {dict_id:#010x}")
        d = zlib.decompressobj(zdict=zdict)
    else:
        d = zlib.decompressobj()
    try:
        text = d.decompress(blob, MAX_CHECKPOINT_BYTES)
    except zlib.error as exc:
        raise DecodeError(f"checkpoint is neither JSON nor zlib: {exc}") from None
    if d.unconsumed_tail:
        raise DecodeError(f"checkpoint expands beyond {MAX_CHECKPOINT_BYTES} bytes")
    if not d.eof:
        raise DecodeError("checkpoint is truncated")
    if d.unused_data:
        raise DecodeError("checkpoint has data after its zlib stream")
    return loads(text, max_bytes=MAX_CHECKPOINT_BYTES)
