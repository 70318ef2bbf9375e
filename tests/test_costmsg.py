"""California Pricing DataTransfer messages: exact parsing, refusal of anything malformed, triggerMeterValue."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.payment.costmsg import (
    VENDOR_ID,
    ChargingPrice,
    DataTransferStatus,
    FinalCost,
    IdlePrice,
    MessageText,
    Refusal,
    RunningCost,
    SetUserPrice,
    TriggerMeterValue,
    TriggerWatch,
    conf_payload,
    parse_data_transfer,
)

# The whitepaper's full RunningCost example (as JSON text, the way DataTransfer carries it).
RUNNING_COST = """{
  "transactionId": 12345,
  "timestamp": "2021-03-19T12:00:00Z",
  "meterValue": 1234000,
  "cost": 1.00,
  "state": "Charging",
  "chargingPrice": {"kWhPrice": 0.123, "hourPrice": 0.00, "flatFee": 0.00},
  "idlePrice": {"graceMinutes": 30, "hourPrice": 1.00},
  "nextPeriod": {
    "atTime": "2021-03-19T19:00:00Z",
    "chargingPrice": {"kWhPrice": 0.100, "hourPrice": 0.00, "flatFee": 0.00},
    "idlePrice": {"hourPrice": 0.00}
  },
  "triggerMeterValue": {
    "atTime": "2021-03-19T23:00:00Z",
    "atEnergykWh": 50.0,
    "atPowerkW": 0.1,
    "atCPStatus": ["SuspendedEV", "SuspendedEVSE"]
  },
  "priceText": "0.123 $/kWh, idle 1 $/h after 30 min",
  "priceTextExtra": [{"format": "UTF8", "language": "nl", "content": "0,123 $/kWh"}],
  "qrCodeText": "https://cpo.example/tx/12345"
}"""


def parse(message_id: str, data: object) -> object:
    return parse_data_transfer(VENDOR_ID, message_id, data)


def test_running_cost_is_parsed_exactly() -> None:
    msg = parse("RunningCost", RUNNING_COST)
    assert isinstance(msg, RunningCost)
    assert msg.transaction_id == 12345
    assert msg.timestamp == datetime(2021, 3, 19, 12, tzinfo=UTC)
    assert msg.meter_value_wh == 1234000
    assert msg.cost == Decimal("1.00") and str(msg.cost) == "1.00"  # exact, trailing zeros kept: never a float
    assert msg.state == "Charging"
    assert msg.charging_price == ChargingPrice(Decimal("0.123"), Decimal("0.00"), Decimal("0.00"))
    assert msg.idle_price == IdlePrice(30, Decimal("1.00"))
    assert msg.next_period is not None
    assert msg.next_period.at_time == datetime(2021, 3, 19, 19, tzinfo=UTC)
    assert msg.next_period.charging_price.kwh_price == Decimal("0.100")
    assert msg.next_period.idle_price == IdlePrice(None, Decimal("0.00"))
    assert msg.trigger_meter_value == TriggerMeterValue(
        datetime(2021, 3, 19, 23, tzinfo=UTC),
        Decimal("50.0"),
        Decimal("0.1"),
        frozenset({"SuspendedEV", "SuspendedEVSE"}),
    )
    assert msg.price_text == "0.123 $/kWh, idle 1 $/h after 30 min"
    assert msg.price_text_extra == (MessageText("UTF8", "0,123 $/kWh", "nl"),)
    assert msg.qr_code_text == "https://cpo.example/tx/12345"
    assert conf_payload(msg) == {"status": "Accepted"}


def test_minimal_running_cost_and_idle_after_stop() -> None:
    minimal = parse(
        "RunningCost",
        '{"transactionId": 1, "timestamp": "2021-03-19T12:00:00+01:00", "meterValue": 0, "cost": 0,'
        ' "state": "Charging", "chargingPrice": {"kWhPrice": 0.123}}',
    )
    assert isinstance(minimal, RunningCost)
    assert minimal.timestamp.utcoffset() == timedelta(hours=1)
    assert minimal.idle_price is None and minimal.trigger_meter_value is None
    # After the stop the CSMS may send only idle prices (the whitepaper lets the charging fields go).
    idle = parse(
        "RunningCost",
        '{"transactionId": 1, "timestamp": "2021-03-19T14:00:00Z", "meterValue": 1236789, "cost": 2.00,'
        ' "state": "Idle", "idlePrice": {"graceMinutes": 30, "hourPrice": 1.00}}',
    )
    assert isinstance(idle, RunningCost) and idle.charging_price is None and idle.state == "Idle"


def test_set_user_price_and_final_cost() -> None:
    price = parse("SetUserPrice", '{"idToken": "DEADBEEF", "priceText": "$0.123 per kWh, 1$/hour idle fee"}')
    assert price == SetUserPrice("DEADBEEF", "$0.123 per kWh, 1$/hour idle fee")
    final = parse(
        "FinalCost",
        '{"transactionId": 98765, "cost": 3.31, "priceText": "TOTAL KWH: 23.4 COST: $3.31",'
        ' "qrCodeText": "https://www.cpo.com/invoices/13546"}',
    )
    assert final == FinalCost(
        98765, Decimal("3.31"), "TOTAL KWH: 23.4 COST: $3.31", (), "https://www.cpo.com/invoices/13546"
    )


def test_vendor_and_message_ids() -> None:
    unknown_vendor = parse_data_transfer("com.example", "RunningCost", "{}")
    assert isinstance(unknown_vendor, Refusal) and unknown_vendor.status is DataTransferStatus.UNKNOWN_VENDOR_ID
    unknown_message = parse_data_transfer(VENDOR_ID, "ConnectorUnplugged", "{}")
    assert isinstance(unknown_message, Refusal) and unknown_message.status is DataTransferStatus.UNKNOWN_MESSAGE_ID
    # OCPP CiStrings compare case-insensitively.
    assert isinstance(parse_data_transfer(VENDOR_ID.upper(), "finalcost", '{"transactionId": 1, "cost": 1}'), FinalCost)
    assert conf_payload(unknown_message) == {"status": "UnknownMessageId", "data": unknown_message.reason}


@pytest.mark.parametrize(
    ("message_id", "data", "reason"),
    [
        ("RunningCost", None, "data is missing"),
        ("RunningCost", "not json", "not valid JSON"),
        ("RunningCost", "[1, 2]", "must be a JSON object"),
        ("RunningCost", '{"transactionId": 1}', "timestamp is missing"),
        ("FinalCost", '{"transactionId": "1", "cost": 1}', "transactionId must be an integer"),
        ("FinalCost", '{"transactionId": 1, "cost": "3.31"}', "cost must be a number"),
        ("FinalCost", '{"transactionId": 1, "cost": -1}', "cost must be between 0"),
        ("FinalCost", '{"transactionId": 1, "cost": 1e300}', "cost must be between 0"),
        ("FinalCost", '{"transactionId": 1, "cost": NaN}', "not a JSON number"),
        ("FinalCost", '{"transactionId": 1, "cost": true}', "cost must be a number, got a boolean"),
        ("FinalCost", '{"transactionId": 1.5, "cost": 1}', "transactionId must be an integer"),
        ("FinalCost", '{"transactionId": 99999999999, "cost": 1}', "transactionId must be an integer"),
        ("FinalCost", '{"transactionId": 1, "cost": null}', "cost is null"),
        ("SetUserPrice", '{"idToken": "", "priceText": "x"}', "idToken must be 1..20"),
        (
            "SetUserPrice",
            '{"idToken": "A", "priceText": "x", "priceTextExtra": [{"content": "y"}]}',
            "format is missing",
        ),
        (
            "SetUserPrice",
            '{"idToken": "A", "priceText": "x", "priceTextExtra": [{"format": "PDF", "content": "y"}]}',
            "format must be",
        ),
        ("RunningCost", RUNNING_COST.replace('"Charging"', '"Sleeping"'), "state must be"),
        ("RunningCost", RUNNING_COST.replace('"2021-03-19T12:00:00Z"', '"yesterday"'), "timestamp is not an ISO 8601"),
        ("RunningCost", RUNNING_COST.replace('"2021-03-19T12:00:00Z"', '"2021-03-19T12:00:00"'), "UTC offset"),
        (
            "RunningCost",
            RUNNING_COST.replace('"SuspendedEV",', '"Napping",'),
            r"atCPStatus\[0\] must be a ChargePointStatus",
        ),
        ("RunningCost", RUNNING_COST.replace('"graceMinutes": 30', '"graceMinutes": -5'), "graceMinutes must be"),
        (
            "RunningCost",
            RUNNING_COST.replace('"chargingPrice": {"kWhPrice": 0.123, "hourPrice": 0.00, "flatFee": 0.00},', ""),
            "chargingPrice is missing",
        ),
        (
            "RunningCost",
            '{"transactionId": 1, "timestamp": "2021-03-19T12:00:00Z", "meterValue": ' + "9" * 5000 + "}",
            "not valid JSON",
        ),
        ("RunningCost", "[" * 100000 + "]" * 100000, "not valid JSON"),
        ("RunningCost", 42, "must be a JSON text"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(message_id: str, data: object, reason: str) -> None:
    result = parse(message_id, data)
    assert isinstance(result, Refusal), result
    assert result.status is DataTransferStatus.REJECTED
    assert re.search(reason, result.reason, re.IGNORECASE), result.reason
    assert conf_payload(result)["status"] == "Rejected"


# ── garbage never raises ───────────────────────────────────────────────────────────────────────────────────────

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
KEYS = [
    "transactionId", "timestamp", "meterValue", "cost", "state", "chargingPrice", "idlePrice", "nextPeriod",
    "triggerMeterValue", "priceText", "priceTextExtra", "qrCodeText", "idToken", "kWhPrice", "hourPrice", "flatFee",
    "graceMinutes", "atTime", "atEnergykWh", "atPowerkW", "atCPStatus", "format", "language", "content",
]  # fmt: skip
#: Objects built from the real field names, so the garbage reaches the deep validators too.
plausible = st.recursive(
    json_values,
    lambda inner: st.dictionaries(st.sampled_from(KEYS), inner, max_size=8) | st.lists(inner, max_size=4),
    max_leaves=30,
)


def mutate(base: dict[str, Any], path: list[str], value: object) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


LEAF_PATHS = [
    ["transactionId"], ["timestamp"], ["meterValue"], ["cost"], ["state"], ["chargingPrice"],
    ["chargingPrice", "kWhPrice"],
    ["idlePrice", "graceMinutes"], ["nextPeriod", "atTime"], ["nextPeriod", "chargingPrice"], ["triggerMeterValue"],
    ["triggerMeterValue", "atCPStatus"], ["triggerMeterValue", "atPowerkW"], ["priceTextExtra"], ["qrCodeText"],
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["SetUserPrice", "RunningCost", "FinalCost"]), plausible)
def test_any_json_gives_a_model_or_a_refusal_never_an_exception(message_id: str, value: object) -> None:
    for data in (json.dumps(value), value):
        result = parse(message_id, data)
        assert isinstance(result, SetUserPrice | RunningCost | FinalCost | Refusal)
        if isinstance(result, Refusal):
            assert result.status is DataTransferStatus.REJECTED and result.reason


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(LEAF_PATHS), json_values)
def test_a_wrong_value_anywhere_in_a_good_message_is_a_refusal_or_still_valid(path: list[str], value: object) -> None:
    data = mutate(json.loads(RUNNING_COST), path, value)
    result = parse("RunningCost", json.dumps(data))
    assert isinstance(result, RunningCost | Refusal)
    if isinstance(result, Refusal):
        assert path[-1] in result.reason or path[0] in result.reason, result.reason


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=200) | st.binary(max_size=50).map(lambda b: b.decode("latin-1")),
    st.text(max_size=40),
    st.text(max_size=40),
)
def test_non_json_and_random_ids_never_raise(data: str, vendor: str, message_id: str) -> None:
    for result in (parse("RunningCost", data), parse_data_transfer(vendor, message_id, data)):
        assert isinstance(result, SetUserPrice | RunningCost | FinalCost | Refusal)


@settings(max_examples=100, deadline=None)
@given(st.decimals(min_value=0, max_value=10**9, allow_nan=False, allow_infinity=False, places=6))
def test_any_valid_cost_comes_back_exactly(cost: Decimal) -> None:
    result = parse("FinalCost", '{"transactionId": 7, "cost": ' + format(cost, "f") + "}")
    assert isinstance(result, FinalCost) and result.cost == cost


# ── triggerMeterValue ──────────────────────────────────────────────────────────────────────────────────────────

T = datetime(2021, 3, 19, 12, tzinfo=UTC)


def test_at_time_fires_once() -> None:
    watch = TriggerWatch(TriggerMeterValue(at_time=T + timedelta(hours=1)))
    assert not watch.check(T, 0, 0, "Charging")
    assert watch.check(T + timedelta(hours=1), 0, 0, "Charging") and watch.reasons == ("atTime",)
    assert not watch.check(T + timedelta(hours=2), 0, 0, "Charging")


def test_at_time_already_past_fires_at_the_first_check() -> None:
    watch = TriggerWatch(TriggerMeterValue(at_time=T - timedelta(minutes=1)))
    assert watch.check(T, 0, 0, "Charging")
    assert not watch.check(T, 0, 0, "Charging")


def test_at_energy_fires_once_when_reached() -> None:
    watch = TriggerWatch(TriggerMeterValue(at_energy_kwh=Decimal("5.0")))
    assert not watch.check(T, Decimal("4.999"), 7, "Charging")
    assert watch.check(T, Decimal("5.000"), 7, "Charging") and watch.reasons == ("atEnergykWh",)
    assert not watch.check(T, Decimal("9"), 7, "Charging")


def test_at_power_fires_on_each_crossing_with_hysteresis() -> None:
    watch = TriggerWatch(TriggerMeterValue(at_power_kw=Decimal("1.0")), hysteresis_kw=Decimal("0.1"))
    assert not watch.check(T, 0, 7.4, "Charging")  # first look: above, noted
    assert not watch.check(T, 0, 0.95, "Charging")  # inside the band: no chatter
    assert watch.check(T, 0, 0.5, "Charging") and watch.reasons == ("atPowerkW",)  # down through it
    assert not watch.check(T, 0, 0.2, "SuspendedEV")  # still below: fired once
    assert not watch.check(T, 0, 1.05, "Charging")
    assert watch.check(T, 0, 3.0, "Charging")  # back up
    assert not watch.check(T, 0, 3.0, "Charging")


def test_hysteresis_is_at_most_half_the_threshold() -> None:
    watch = TriggerWatch(TriggerMeterValue(at_power_kw=Decimal("0.1")))  # default band 0.05 = half of 0.1
    assert not watch.check(T, 0, 7.0, "Charging")
    assert watch.check(T, 0, 0.0, "SuspendedEV")


def test_at_cp_status_fires_on_entering_a_listed_status() -> None:
    watch = TriggerWatch(TriggerMeterValue(at_cp_status=frozenset({"SuspendedEV", "SuspendedEVSE"})))
    assert not watch.check(T, 0, 0, "SuspendedEV")  # first look: the state it was already in
    assert not watch.check(T, 0, 0, "Charging")
    assert watch.check(T, 0, 0, "SuspendedEV") and watch.reasons == ("atCPStatus",)
    assert not watch.check(T, 0, 0, "SuspendedEV")
    assert watch.check(T, 0, 0, "SuspendedEVSE")  # another listed one: a new entry
    assert not watch.check(T, 0, 0, "Finishing")


def test_conditions_fire_together_and_a_parsed_trigger_works() -> None:
    msg = parse("RunningCost", RUNNING_COST)
    assert isinstance(msg, RunningCost) and msg.trigger_meter_value is not None
    watch = TriggerWatch(msg.trigger_meter_value)
    assert not watch.check(T, Decimal(1), Decimal(7), "Charging")
    late = datetime(2021, 3, 19, 23, 30, tzinfo=timezone(timedelta(hours=1)))  # 22:30 UTC: before atTime
    assert watch.check(late, Decimal(50), Decimal(7), "Charging")  # energy reached, time not yet
    assert watch.reasons == ("atEnergykWh",)
    assert watch.check(T + timedelta(hours=12), Decimal(60), Decimal("0.01"), "SuspendedEV")
    assert set(watch.reasons) == {"atTime", "atPowerkW", "atCPStatus"}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 100),
            st.decimals(min_value=0, max_value=100, places=3),
            st.decimals(min_value=0, max_value=50, places=2),
            st.sampled_from(["Charging", "SuspendedEV", "SuspendedEVSE", "Finishing"]),
        ),
        max_size=30,
    )
)
def test_one_shot_conditions_fire_at_most_once(steps: list[tuple[int, Decimal, Decimal, str]]) -> None:
    watch = TriggerWatch(TriggerMeterValue(at_time=T + timedelta(minutes=50), at_energy_kwh=Decimal("40")))
    fired: list[str] = []
    for minutes, energy, power, status in sorted(steps):
        watch.check(T + timedelta(minutes=minutes), energy, power, status)
        fired += watch.reasons
    assert fired.count("atTime") <= 1 and fired.count("atEnergykWh") <= 1
    if any(m >= 50 for m, *_ in steps):
        assert fired.count("atTime") == 1
