"""OCPP 1.6 California Pricing on the whole charge point, against the strict schema-validating CSMS.

The CSMS (npm ocpp-rpc, strictMode) sends SetUserPrice, RunningCost and FinalCost as DataTransfer.req; every frame
the charger sends back is validated against the OCPP 1.6J schemas. A RunningCost's triggerMeterValue must put an
extra MeterValues (context Trigger) on the wire. The app runs on a FakeClock (tests/ocpp_harness.py).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import pytest
from csms.fixtures import strict_csms_fixture  # noqa: F401
from csms.strict import StrictCentralSystem
from ocpp_harness import OcppHarness

from firmware.charging.connector import Status
from firmware.ocpp.v16.configuration import Configuration, MemoryKeyStorage

CP = "CP-PRICING"
CARD = "04A1B2C3"
VENDOR = "org.openchargealliance.costmsg"


class PricingHarness(OcppHarness[StrictCentralSystem]):
    def __init__(self, csms: StrictCentralSystem, work: Path) -> None:
        super().__init__(csms, CP, response_timeout_s=5.0, work=work, serve_api=False)

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        return await self.csms.call(CP, action, payload, timeout=10.0)

    async def cost_message(self, message_id: str, data: str) -> Any:
        """One California Pricing DataTransfer.req; ``data`` is the JSON text exactly as the CSMS writes it."""
        return await self.call("DataTransfer", {"vendorId": VENDOR, "messageId": message_id, "data": data})

    async def settle(self) -> None:
        await self.csms.wait_for(lambda: len(self.app.ocpp.outbox) == 0)
        await asyncio.sleep(0.1)

    @property
    def pricing(self) -> Any:
        return self.app.ocpp.pricing

    def register_wh(self) -> float:
        latest = self.app.sampler.latest
        assert latest is not None
        return float(latest.energy_import_wh)

    def transaction_id(self) -> int:
        record = self.app.sessions.current
        assert record is not None and record.transaction_ref is not None
        tx_id = self.app.ocpp.outbox.transaction_id(record.transaction_ref)
        assert tx_id is not None
        return int(tx_id)

    async def start_card_session(self) -> int:
        self.sim.plug()
        self.sim.tap(bytes.fromhex(CARD))
        await self.advance(3.0)
        assert self.app.controller.connector.status is Status.CHARGING
        await self.csms.wait_for(lambda: self.csms.count("StartTransaction") == 1)
        await self.settle()
        return self.transaction_id()

    async def stop_card_session(self) -> None:
        self.sim.tap(bytes.fromhex(CARD))
        await self.advance(1.0)
        await self.csms.wait_for(lambda: self.csms.count("StopTransaction") == 1)
        await self.settle()


@pytest.fixture
async def strict(strict_csms: StrictCentralSystem) -> AsyncIterator[PricingHarness]:
    h = PricingHarness(strict_csms, Path(tempfile.mkdtemp(prefix="evse-pricing-", dir="/tmp")))
    await h.start()
    await strict_csms.wait_for(lambda: strict_csms.count("StatusNotification") >= 2)
    yield h
    await h.close()


def trigger_meter_values(csms: StrictCentralSystem) -> list[dict[str, Any]]:
    """MeterValues.req payloads whose samples carry context Trigger."""
    return [
        p
        for p in csms.received("MeterValues")
        if any(s.get("context") == "Trigger" for mv in p["meterValue"] for s in mv["sampledValue"])
    ]


def assert_schema_clean(csms: StrictCentralSystem) -> None:
    """Not one frame of the charger's broke the 1.6J schemas, and it never answered with a CALLERROR."""
    sent = [f for f in csms.frames if f["dir"] == "in" and f["client"] == CP]
    errors = [f["raw"] for f in sent if isinstance(f["frame"], list) and f["frame"][0] == 4]
    assert errors == []
    violations = [json.dumps({"raw": v["raw"], "errors": v["errors"]})[:1500] for v in csms.violations]
    assert violations == []


def running_cost(tx_id: int, cost: str, *, trigger: str = "", extra: str = "") -> str:
    """A RunningCost's JSON text; amounts stay as written (the charger must read them exactly)."""
    return (
        f'{{"transactionId": {tx_id}, "timestamp": "2026-11-27T10:00:00Z", "meterValue": 1234, "cost": {cost},'
        f' "state": "Charging", "chargingPrice": {{"kWhPrice": 0.25, "hourPrice": 0.00, "flatFee": 0.50}},'
        f' "idlePrice": {{"graceMinutes": 30, "hourPrice": 1.20}},'
        f' "priceText": "0.25/kWh, 0.50 start"{trigger}{extra}}}'
    )


async def test_cost_messages_are_accepted_shown_and_schema_valid(strict: PricingHarness) -> None:
    csms, pricing = strict.csms, strict.pricing

    # SetUserPrice comes per idToken, possibly before the card's session starts: display only.
    text = json.dumps(
        {
            "idToken": CARD,
            "priceText": "Your price: 0.25/kWh",
            "priceTextExtra": [{"format": "UTF8", "language": "de", "content": "Ihr Preis: 0,25/kWh"}],
        }
    )
    assert await strict.cost_message("SetUserPrice", text) == {"status": "Accepted"}
    assert pricing.user_price(CARD).price_text == "Your price: 0.25/kWh"
    assert pricing.display() is None  # no session yet: nothing to show for "now"

    tx_id = await strict.start_card_session()
    shown = pricing.display()
    assert shown["source"] == "backend" and shown["transaction_id"] == tx_id and shown["id_tag"] == CARD
    assert shown["price_text"] == "Your price: 0.25/kWh" and shown["cost"] is None
    assert shown["price_text_extra"] == [{"format": "UTF8", "language": "de", "content": "Ihr Preis: 0,25/kWh"}]

    # RunningCost of the running transaction: amounts exact, as the backend wrote them.
    answer = await strict.cost_message(
        "RunningCost", running_cost(tx_id, "1.10", extra=', "qrCodeText": "https://p/1"')
    )
    assert answer == {"status": "Accepted"}
    shown = pricing.display(tx_id)
    assert shown == pricing.display()
    assert shown["source"] == "backend" and shown["final"] is False
    assert shown["cost"] == "1.10" and shown["cost_rounded"] == "1.100" and shown["decimals"] == 3
    assert shown["state"] == "Charging" and shown["meter_value_wh"] == 1234
    assert shown["timestamp"] == "2026-11-27T10:00:00+00:00"
    assert shown["charging_price"] == {"kwh_price": "0.25", "hour_price": "0.00", "flat_fee": "0.50"}
    assert shown["idle_price"] == {"grace_minutes": 30, "hour_price": "1.20"}
    assert shown["price_text"] == "0.25/kWh, 0.50 start" and shown["qr_code_text"] == "https://p/1"
    assert pricing.running_cost(tx_id).cost == Decimal("1.10")

    # NumberOfDecimalsForCostValues rules the rounded display, never the exact cost.
    assert (await strict.call("ChangeConfiguration", {"key": "NumberOfDecimalsForCostValues", "value": "1"}))[
        "status"
    ] == "Accepted"
    assert (await strict.cost_message("RunningCost", running_cost(tx_id, "2.35")))["status"] == "Accepted"
    assert pricing.display(tx_id)["cost"] == "2.35" and pricing.display(tx_id)["cost_rounded"] == "2.4"

    # A FinalCost while the transaction still runs, and costs for transactions that are not ours: Rejected.
    final = '{"transactionId": %d, "cost": 12.345, "priceText": "Total 12.345"}'
    answer = await strict.cost_message("FinalCost", final % tx_id)
    assert answer["status"] == "Rejected" and "still running" in answer["data"]
    answer = await strict.cost_message("RunningCost", running_cost(tx_id + 100, "1.00"))
    assert answer["status"] == "Rejected" and f"transactionId {tx_id + 100} is not running" in answer["data"]

    finals: list[tuple[Any, int]] = []
    pricing.on_final_cost(lambda final_cost, ref: finals.append((final_cost, ref)))
    ref = strict.app.sessions.current.transaction_ref
    await strict.stop_card_session()
    assert pricing.user_price(CARD) is None  # the driver's price was for that session
    answer = await strict.cost_message("RunningCost", running_cost(tx_id, "3.00"))
    assert answer["status"] == "Rejected" and "no transaction is running" in answer["data"]
    assert await strict.cost_message("FinalCost", final % tx_id) == {"status": "Accepted"}
    assert pricing.final_cost(tx_id) == Decimal("12.345")
    assert [(f.transaction_id, f.cost, r) for f, r in finals] == [(tx_id, Decimal("12.345"), ref)]
    shown = pricing.display(tx_id)
    assert shown["final"] is True and shown["cost"] == "12.345" and shown["cost_rounded"] == "12.3"
    assert shown["price_text"] == "Total 12.345" and shown["id_tag"] == CARD
    assert pricing.display() is None  # nothing runs now
    answer = await strict.cost_message("FinalCost", final % 987654)
    assert answer["status"] == "Rejected" and "not a transaction of this charge point" in answer["data"]
    assert pricing.final_cost(987654) is None

    await asyncio.sleep(0.2)
    assert_schema_clean(csms)


async def test_running_cost_energy_trigger_sends_one_extra_meter_values(strict: PricingHarness) -> None:
    csms, pricing = strict.csms, strict.pricing
    tx_id = await strict.start_card_session()
    await strict.advance(5.0, dt=1.0)
    await strict.settle()
    before = csms.count("MeterValues")
    # Just above the meter's import register (kWh, as libocpp compares it): fires once the EV passes it.
    at_kwh = (Decimal(strict.register_wh()) / 1000 + Decimal("0.010")).quantize(Decimal("0.001"), ROUND_CEILING)
    trigger = f', "triggerMeterValue": {{"atEnergykWh": {at_kwh}}}'
    assert await strict.cost_message("RunningCost", running_cost(tx_id, "0.40", trigger=trigger)) == {
        "status": "Accepted"
    }
    await asyncio.sleep(0.2)
    assert csms.count("MeterValues") == before and pricing.triggered == 0  # not reached yet

    for _ in range(120):
        await strict.advance(1.0, dt=0.5)
        if strict.register_wh() >= float(at_kwh) * 1000 + 5:
            break
    assert strict.register_wh() >= float(at_kwh) * 1000
    await csms.wait_for(lambda: len(trigger_meter_values(csms)) == 1)
    await strict.advance(20.0, dt=1.0)  # far past the threshold: no second one
    await strict.settle()
    triggered = trigger_meter_values(csms)
    assert len(triggered) == 1 and csms.count("MeterValues") == before + 1 and pricing.triggered == 1
    assert triggered[0]["transactionId"] == tx_id
    energy = [
        s
        for s in triggered[0]["meterValue"][0]["sampledValue"]
        if s.get("measurand", "Energy.Active.Import.Register") == "Energy.Active.Import.Register"
    ]
    assert float(energy[0]["value"]) >= float(at_kwh) * 1000
    await strict.stop_card_session()
    assert_schema_clean(csms)


async def test_status_trigger_fires_on_entering_the_status_and_ends_with_the_transaction(
    strict: PricingHarness,
) -> None:
    csms, pricing = strict.csms, strict.pricing
    tx_id = await strict.start_card_session()
    trigger = ', "triggerMeterValue": {"atCPStatus": ["SuspendedEV", "Available"]}'
    assert await strict.cost_message("RunningCost", running_cost(tx_id, "0.10", trigger=trigger)) == {
        "status": "Accepted"
    }
    await strict.advance(2.0)
    assert trigger_meter_values(csms) == []
    strict.sim.ev_request(False)  # the car pauses: Charging -> SuspendedEV
    await strict.advance(2.0)
    assert strict.app.controller.connector.status is Status.SUSPENDED_EV
    await csms.wait_for(lambda: len(trigger_meter_values(csms)) == 1)
    assert pricing.triggered == 1
    await strict.stop_card_session()
    assert pricing.status()["trigger_armed"] is False
    strict.sim.unplug()  # enters Available, a listed status, but the transaction (and its trigger) is over
    await strict.advance(1.0)
    assert strict.app.controller.connector.status is Status.AVAILABLE
    await strict.settle()
    assert len(trigger_meter_values(csms)) == 1 and pricing.triggered == 1
    assert_schema_clean(csms)


async def test_refusals_are_protocol_correct(strict: PricingHarness) -> None:
    csms = strict.csms
    answer = await strict.cost_message("RunningCost", "this is not JSON")
    assert answer["status"] == "Rejected" and "not valid JSON" in answer["data"]
    answer = await strict.cost_message("SetUserPrice", json.dumps({"idToken": CARD}))
    assert answer["status"] == "Rejected" and "priceText is missing" in answer["data"]
    answer = await strict.cost_message("FinalCost", '{"transactionId": 1, "cost": -1}')
    assert answer["status"] == "Rejected" and "cost" in answer["data"]
    answer = await strict.call("DataTransfer", {"vendorId": VENDOR, "messageId": "Tariff", "data": "{}"})
    assert answer["status"] == "UnknownMessageId"
    answer = await strict.call("DataTransfer", {"vendorId": VENDOR})
    assert answer["status"] == "UnknownMessageId"
    answer = await strict.call("DataTransfer", {"vendorId": "com.acme", "messageId": "RunningCost", "data": "{}"})
    assert answer == {"status": "UnknownVendorId"}
    assert strict.pricing.display() is None and strict.pricing.user_price(CARD) is None
    await asyncio.sleep(0.2)
    assert_schema_clean(csms)


async def test_cost_and_price_configuration_over_the_wire(strict: PricingHarness) -> None:
    csms, pricing = strict.csms, strict.pricing
    keys = [
        "CustomDisplayCostAndPrice",
        "DefaultPrice",
        "DefaultPriceText",
        "NumberOfDecimalsForCostValues",
        "CustomIdleFeeAfterStop",
        "CustomMultiLanguageMessages",
    ]
    got = {k["key"]: k for k in (await strict.call("GetConfiguration", {"key": keys}))["configurationKey"]}
    assert got["CustomDisplayCostAndPrice"] == {"key": "CustomDisplayCostAndPrice", "readonly": True, "value": "true"}
    assert got["NumberOfDecimalsForCostValues"]["value"] == "3" and got["DefaultPrice"]["value"] == ""
    assert got["CustomIdleFeeAfterStop"]["value"] == "false" and got["DefaultPriceText"]["readonly"] is False

    async def change(key: str, value: str) -> str:
        return str((await strict.call("ChangeConfiguration", {"key": key, "value": value}))["status"])

    assert pricing.default_price() is None
    price = (
        '{"priceText": "0.15 $/kWh", "priceTextOffline": "Offline: 0.15 $/kWh",'
        ' "chargingPrice": {"kWhPrice": 0.150, "hourPrice": 0, "flatFee": 1.00}}'
    )
    assert await change("DefaultPrice", price) == "Accepted"
    assert await change("DefaultPrice", '{"priceText": 15}') == "Rejected"
    assert await change("DefaultPrice", "0.15 $/kWh") == "Rejected"
    assert await change("DefaultPrice", '{"chargingPrice": {"kWhPrice": -0.1}}') == "Rejected"
    assert strict.app.ocpp.configuration.get_str("DefaultPrice") == price  # the Rejected ones changed nothing
    assert pricing.default_price() == {
        "source": "backend-default",
        "price_text": "0.15 $/kWh",
        "charging_price": {"kwh_price": "0.150", "hour_price": "0", "flat_fee": "1.00"},
    }
    assert pricing.default_price(offline=True)["price_text"] == "Offline: 0.15 $/kWh"
    assert await change("DefaultPriceText", '{"priceText": "Prix: 0,15 $/kWh"}') == "Accepted"
    assert pricing.default_price()["price_text"] == "Prix: 0,15 $/kWh"
    assert await change("DefaultPriceText", '{"priceTextOffline": "x"}') == "Rejected"
    assert await change("NumberOfDecimalsForCostValues", "7") == "Rejected"
    assert await change("NumberOfDecimalsForCostValues", "-1") == "Rejected"
    assert await change("NumberOfDecimalsForCostValues", "0") == "Accepted"
    assert await change("CustomDisplayCostAndPrice", "false") == "Rejected"
    assert await change("CustomIdleFeeAfterStop", "true") == "Rejected"
    await asyncio.sleep(0.2)
    assert_schema_clean(csms)


# ── the configuration keys on their own ────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "value",
    [
        "",
        '{"priceText": "0.25/kWh"}',
        '{"priceTextOffline": "offline 0.30/kWh"}',
        '{"chargingPrice": {"kWhPrice": 0.25}}',
        '{"chargingPrice": {}, "somethingNew": [1, 2]}',
        '{"priceText": "x", "chargingPrice": {"kWhPrice": 1000000000, "hourPrice": 2, "flatFee": 0.0}}',
    ],
)
def test_default_price_accepts_whitepaper_values(value: str) -> None:
    config = Configuration(MemoryKeyStorage())
    assert config.change("DefaultPrice", value) == "Accepted"
    assert config.get_str("DefaultPrice") == value


@pytest.mark.parametrize(
    "value",
    [
        "{",
        "[]",
        '"0.25/kWh"',
        "{}",
        '{"other": 1}',
        '{"priceText": null}',
        '{"priceText": "a\\nb"}',
        '{"priceTextOffline": 3}',
        '{"chargingPrice": 0.25}',
        '{"chargingPrice": {"kWhPrice": "0.25"}}',
        '{"chargingPrice": {"kWhPrice": true}}',
        '{"chargingPrice": {"kWhPrice": NaN}}',
        '{"chargingPrice": {"flatFee": 1000000000.01}}',
        '{"chargingPrice": {"hourPrice": -1}}',
        '{"priceText": "%s"}' % ("x" * 490),  # longer than CiString500
    ],
)
def test_default_price_rejects_malformed_values(value: str) -> None:
    config = Configuration(MemoryKeyStorage())
    assert config.change("DefaultPrice", value) == "Rejected"
    assert config.get_str("DefaultPrice") == ""


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ('{"priceText": "0.25/kWh", "priceTextOffline": "0.30/kWh"}', "Accepted"),
        ("", "Accepted"),
        ("0.25/kWh", "Rejected"),
        ('{"priceTextOffline": "0.30/kWh"}', "Rejected"),
        ('{"priceText": ["a"]}', "Rejected"),
    ],
)
def test_default_price_text(value: str, status: str) -> None:
    config = Configuration(MemoryKeyStorage())
    assert config.change("DefaultPriceText", value) == status


@pytest.mark.parametrize(
    ("value", "status"), [("0", "Accepted"), ("6", "Accepted"), ("7", "Rejected"), ("x", "Rejected")]
)
def test_number_of_decimals_range(value: str, status: str) -> None:
    config = Configuration(MemoryKeyStorage())
    assert config.get_int("NumberOfDecimalsForCostValues") == 3
    assert config.change("NumberOfDecimalsForCostValues", value) == status


def test_cost_keys_persist_and_a_bad_stored_default_price_is_ignored() -> None:
    storage = MemoryKeyStorage()
    config = Configuration(storage)
    assert config.change("DefaultPrice", '{"priceText": "0.25/kWh"}') == "Accepted"
    assert Configuration(storage).get_str("DefaultPrice") == '{"priceText": "0.25/kWh"}'
    storage.values["DefaultPrice"] = "{broken"
    assert Configuration(storage).get_str("DefaultPrice") == ""


async def test_the_backend_price_reaches_evse_status_and_the_final_cost_the_ledger(strict: PricingHarness) -> None:
    """RunningCost replaces the local estimate in the status (labelled backend); FinalCost replaces the ledger's."""
    app = strict.app
    tx_id = await strict.start_card_session()
    status = app.status()
    assert status["transaction"]["cost"] is None  # no [tariff] and nothing from the backend yet
    reply = await strict.cost_message("RunningCost", running_cost(tx_id, "1.2345"))
    assert reply["status"] == "Accepted"
    cost = app.status()["transaction"]["cost"]
    assert cost["source"] == "backend" and cost["cost"] == "1.2345" and cost["total"] == "1.235"  # 3 decimals
    from firmware.cli import format_status

    assert any("cost 1.235 (CSMS price)" in line for line in format_status(app.status()))
    await strict.stop_card_session()
    final = json.dumps({"transactionId": tx_id, "cost": 0, "priceText": "x"}).replace('"cost": 0', '"cost": 3.1050')
    assert (await strict.cost_message("FinalCost", final))["status"] == "Accepted"
    (row,) = app.store.conn.execute("SELECT cost, cost_source, id_tag FROM sessions").fetchall()
    assert row == ("3.1050", "backend", CARD)
    assert_schema_clean(strict.csms)
