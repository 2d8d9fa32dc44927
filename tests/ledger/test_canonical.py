"""Canonical JSON = RFC 8785 (JCS): the bytes third parties must reproduce."""

from __future__ import annotations

import json
import random
import struct

import pytest

from metaheal.ledger.canonical import canonical_json, format_float


@pytest.mark.parametrize(
    ("value", "text"),
    [
        # RFC 8785 Appendix B number samples (IEEE-754 bit patterns -> ES6 strings)
        (0x0000000000000000, "0"),
        (0x8000000000000000, "0"),
        (0x0000000000000001, "5e-324"),
        (0x8000000000000001, "-5e-324"),
        (0x7FEFFFFFFFFFFFFF, "1.7976931348623157e+308"),
        (0xFFEFFFFFFFFFFFFF, "-1.7976931348623157e+308"),
        (0x4340000000000000, "9007199254740992"),
        (0xC340000000000000, "-9007199254740992"),
        (0x4430000000000000, "295147905179352830000"),
        (0x44B52D02C7E14AF5, "9.999999999999997e+22"),
        (0x44B52D02C7E14AF6, "1e+23"),
        (0x44B52D02C7E14AF7, "1.0000000000000001e+23"),
        (0x444B1AE4D6E2EF4E, "999999999999999700000"),
        (0x444B1AE4D6E2EF4F, "999999999999999900000"),
        (0x444B1AE4D6E2EF50, "1e+21"),
        (0x3EB0C6F7A0B5ED8C, "9.999999999999997e-7"),
        (0x3EB0C6F7A0B5ED8D, "0.000001"),
        (0x41B3DE4355555553, "333333333.3333332"),
        (0x41B3DE4355555554, "333333333.33333325"),
        (0x41B3DE4355555555, "333333333.3333333"),
        (0x41B3DE4355555556, "333333333.3333334"),
        (0x41B3DE4355555557, "333333333.33333343"),
        (0xBECBF647612F3696, "-0.0000033333333333333333"),
        (0x43143FF3C1CB0959, "1424953923781206.2"),
    ],
)
def test_rfc8785_number_samples(value: int, text: str) -> None:
    assert format_float(struct.unpack(">d", value.to_bytes(8, "big"))[0]) == text


def test_rfc8785_structure_sample() -> None:
    doc = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    assert canonical_json(doc) == (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )


def test_keys_sort_by_utf16_code_units() -> None:
    # U+1F600 (surrogates D83D DE00) sorts before U+FB01 in UTF-16, after it by code point.
    assert canonical_json({"\ufb01": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ufb01":1}'


def test_round_trips_and_is_stable() -> None:
    rnd = random.Random(7)
    for _ in range(2000):
        x = rnd.choice(
            [rnd.uniform(-1e6, 1e6), rnd.random() * 10 ** rnd.randint(-30, 30), rnd.randint(-(10**20), 10**20)]
        )
        text = canonical_json({"x": x})
        back = json.loads(text)["x"]
        assert (float(back) if isinstance(x, float) else back) == x  # JCS numbers are IEEE doubles
        assert canonical_json(json.loads(text)) == text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": float("inf")}, r"\$\.a: NaN and Infinity"),
        ({"a": [1, {"b": {1, 2}}]}, r"\$\.a\[1\]\.b: set is not a JSON type"),
        ({1: "x"}, "object key 1 is not a string"),
        ({"s": "\ud800"}, "lone surrogate"),
    ],
)
def test_rejects_with_the_path(value: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        canonical_json(value)


def test_entry_message_fast_path_equals_general_canonical_form() -> None:
    from metaheal.ledger.canonical import canonical_bytes
    from metaheal.ledger.chain import BODY_FIELDS, DOMAIN, message

    rnd = random.Random(3)
    alphabet = ["a", "\u00e9", '"', "\\", "\n", "\x01", "\u2028", "\U0001f600", "/", " "]
    for _i in range(500):
        body = {f: "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 8))) for f in BODY_FIELDS}
        body["sequence"] = rnd.randint(0, 10**12)
        assert message(body) == DOMAIN + canonical_bytes(body)
