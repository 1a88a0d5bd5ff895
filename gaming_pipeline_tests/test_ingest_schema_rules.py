"""The ingest service's rules at the door (schema.py): whatever it accepts becomes a raw row
and breaks no KPI; whatever a client gets wrong is a reason, never an exception."""

from __future__ import annotations

import msgspec
import pytest

from gaming_pipeline.ingest_service.app import reason_label
from gaming_pipeline.ingest_service.schema import (
    MAX_AMOUNT,
    BodyNotJson,
    client_time_reason,
    sort_events,
    split_body,
)

pytestmark = pytest.mark.unit

# 2026-11-23 08:00 UTC
AT = 1_795_420_800_000


def purchase(**params) -> dict:
    return {
        "eventName": "purchaseEvent",
        "eventParams": {"game_keyword": "ninja_run", "device_id": "d1", "amount": 4.99, **params},
    }


def verdicts(*events: dict) -> list[str | None]:
    """Per event: None if accepted, else its reason."""
    result = sort_events([msgspec.json.encode(e) for e in events], AT, lambda _: False, "app")
    reasons = {r["index"]: r["reason"] for r in result.rejected}
    return [reasons.get(index) for index in range(len(events))]


def test_an_amount_is_from_zero_to_the_cap():
    accepted = [0, 0.01, 4.99, MAX_AMOUNT]
    refused = [-0.01, MAX_AMOUNT + 0.01, 1e17]
    outcome = verdicts(*(purchase(amount=a) for a in accepted + refused))
    assert outcome[: len(accepted)] == [None] * len(accepted)
    assert all("<= 1000000.0" in reason or ">= 0.0" in reason for reason in outcome[len(accepted) :])


def test_an_amount_past_a_float_or_not_a_number_is_refused():
    body = b"\n".join(
        msgspec.json.encode(purchase()).replace(b"4.99", literal)
        for literal in (b"1e400", b"NaN", b"Infinity")
    )
    result = sort_events(split_body(body, ndjson=True), AT, lambda _: False, "app")
    reasons = [r["reason"] for r in result.rejected]
    assert reasons[0] == "Number out of range - at `$.eventParams.amount`"
    assert all(reason.startswith("not JSON") for reason in reasons[1:]) and not result.events


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T08:15:02Z",
        "2026-11-23T08:15:02.1+05:30",
        "2000-01-01T00:00:00Z",
        "2028-02-29T23:59:59-18:00",
        "1999-12-31T23:00:00-02:00",
        "2099-12-31T21:59:59-02:00",
    ],
)
def test_a_real_instant_in_the_span_is_a_client_time(text):
    assert client_time_reason(text) is None
    assert verdicts(purchase(client_event_time=text)) == [None]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("2026-99-99T99:99:99Z", "not a calendar time"),
        ("2026-02-29T00:00:00Z", "not a calendar time"),
        ("2026-01-01T24:00:00Z", "not a calendar time"),
        ("2026-12-31T23:59:60Z", "not a calendar time"),
        ("2026-01-01T00:00:00+18:30", "beyond 18:00"),
        ("1999-12-31T23:59:59Z", "outside 2000-2099"),
        ("2000-01-01T00:30:00+01:00", "outside 2000-2099"),
        ("2100-01-01T00:00:00Z", "outside 2000-2099"),
        ("2099-12-31T22:00:00-02:00", "outside 2000-2099"),
        ("9999-12-31T23:59:59-05:00", "outside 2000-2099"),
    ],
)
def test_a_time_that_is_no_instant_or_out_of_the_span_is_refused(text, why):
    (reason,) = verdicts(purchase(client_event_time=text))
    assert why in reason and reason_label(reason) == "out_of_range"


def test_text_must_be_utf8_and_nesting_bounded_and_both_are_reasons_not_errors():
    good = msgspec.json.encode(purchase())
    bad_text = good.replace(b'"d1"', b'"d\xff1"')
    deep = good[:-1] + b',"eventTime":' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    lone_surrogate = good.replace(b'"d1"', b'"\\udc00"')
    result = sort_events(
        split_body(b"\n".join([good, bad_text, deep, lone_surrogate]), True), AT, lambda _: False, "app"
    )
    reasons = [r["reason"] for r in result.rejected]
    assert len(result.events) == 1 and result.not_json == 3
    assert "not UTF-8" in reasons[0] and "nested" in reasons[1] and "surrogate" in reasons[2]
    assert {reason_label(reason) for reason in reasons} == {"not_json"}
    with pytest.raises(BodyNotJson, match="nested"):
        split_body(b"[" * 5_000 + b"]" * 5_000, ndjson=False)


def test_msgspec_reasons_map_to_few_metric_labels():
    assert reason_label("Integer value out of range - at `$.eventTime`") == "out_of_range"
    assert reason_label("Expected `int | null`, got `str` - at `$.x`") == "wrong_type"
    assert reason_label("a purchaseEvent needs eventParams.amount") == "purchase_rule"
