"""The charge point's OCPP 1.6J client against a real central system on loopback (ocpp package, CSMS role)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from csms.central import TestCentralSystem
from csms.fixtures import central_system  # noqa: F401
from hypothesis import given
from hypothesis import strategies as st
from ocpp.charge_point import camel_to_snake_case
from ocpp.v16 import call
from ocpp_harness import OcppHarness

from firmware.auth import AuthStatus
from firmware.auth.ocpp import IdTagInfo
from firmware.charging.connector import Status
from firmware.ocpp.v16.service import snake_keys
from firmware.ocpp.v16.transactions import next_boundary

CP = "CP-T1"


class Harness(OcppHarness[TestCentralSystem]):
    def __init__(self, csms: TestCentralSystem, work: Path) -> None:
        super().__init__(csms, CP, work=work)

    def actions(self) -> list[str]:
        return [r.action for r in self.csms.received if r.charge_point_id == CP]


@pytest.fixture
async def harness(central_system: TestCentralSystem) -> AsyncIterator[Harness]:  # noqa: F811
    h = Harness(central_system, Path(tempfile.mkdtemp(prefix="evse-ocpp-", dir="/tmp")))
    await h.start()
    yield h
    await h.close()


async def test_boot_then_status_of_both_connectors(harness: Harness) -> None:
    csms = harness.csms
    await csms.wait_for(lambda: csms.count("StatusNotification") >= 2)
    assert harness.actions()[0] == "BootNotification"
    boot = csms.payloads("BootNotification")[0]
    assert boot["chargePointVendor"] == "pievse" and boot["chargePointModel"] == "pievse-ac"
    statuses = {p["connectorId"]: p for p in csms.payloads("StatusNotification")}
    assert statuses[0]["status"] == "Available" and statuses[1]["status"] == "Available"
    assert statuses[1]["errorCode"] == "NoError"
    assert harness.app.status()["ocpp"]["connected"] is True


async def test_card_started_session_on_the_wire(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    harness.sim.plug()
    harness.sim.tap(bytes.fromhex("04A1B2C3"))
    await harness.advance(3.0)
    assert app.controller.connector.status is Status.CHARGING
    await csms.wait_for(lambda: csms.count("StartTransaction") == 1)
    await harness.advance(60.0, dt=1.0)
    app.ocpp.service.transactions.sample_meter_values()
    await csms.wait_for(lambda: csms.count("MeterValues") == 2)  # Transaction.Begin, then the sample
    harness.sim.tap(bytes.fromhex("04A1B2C3"))
    await harness.advance(1.0)
    await csms.wait_for(lambda: csms.count("StopTransaction") == 1)

    assert csms.payloads("Authorize")[0]["idTag"] == "04A1B2C3"
    start = csms.payloads("StartTransaction")[0]
    assert start["connectorId"] == 1 and start["idTag"] == "04A1B2C3"
    mv = csms.payloads("MeterValues")[1]
    assert mv["transactionId"] == 1
    energy = [s for s in mv["meterValue"][0]["sampledValue"] if s["measurand"] == "Energy.Active.Import.Register"]
    assert float(energy[0]["value"]) > start["meterStart"]
    stop = csms.payloads("StopTransaction")[0]
    assert stop["transactionId"] == 1 and stop["reason"] == "Local"
    assert stop["meterStop"] >= round(float(energy[0]["value"]))
    tx_actions = [a for a in harness.actions() if a in ("StartTransaction", "MeterValues", "StopTransaction")]
    assert tx_actions == ["StartTransaction", "MeterValues", "MeterValues", "StopTransaction"]
    charging = [p for p in csms.payloads("StatusNotification") if p["connectorId"] == 1 and p["status"] == "Charging"]
    assert charging
    await csms.wait_for(lambda: len(app.ocpp.outbox) == 0)
    # The ledger row: the card and how it was authorized; energy = the register difference the CSMS was told.
    (row,) = app.store.conn.execute("SELECT id_tag, auth, meter_start_wh, meter_stop_wh, stop_reason FROM sessions")
    assert row[:2] == ("04A1B2C3", "card (csms)") and row[4] == "Local"
    assert (round(row[2]), round(row[3])) == (start["meterStart"], stop["meterStop"])


async def test_unknown_card_is_refused_by_the_csms(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    csms.id_tags = {"DEADBEEF": "Invalid"}
    harness.sim.plug()
    harness.sim.tap(bytes.fromhex("DEADBEEF"))
    await harness.advance(3.0)
    await csms.wait_for(lambda: csms.count("Authorize") == 1)
    assert app.controller.connector.status is Status.PREPARING
    assert csms.count("StartTransaction") == 0
    assert not harness.sim.contactor.commanded


async def test_remote_start_and_stop(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    harness.sim.plug()
    await harness.advance(0.5)
    result = await csms.call(CP, call.RemoteStartTransaction(id_tag="APPUSER1", connector_id=1))
    assert result.status == "Accepted"
    await harness.advance(3.0)
    await csms.wait_for(lambda: csms.count("StartTransaction") == 1)
    assert app.controller.connector.status is Status.CHARGING
    assert csms.payloads("StartTransaction")[0]["idTag"] == "APPUSER1"

    busy = await csms.call(CP, call.RemoteStartTransaction(id_tag="OTHER", connector_id=1))
    assert busy.status == "Rejected"
    wrong = await csms.call(CP, call.RemoteStopTransaction(transaction_id=999))
    assert wrong.status == "Rejected"
    stopped = await csms.call(CP, call.RemoteStopTransaction(transaction_id=1))
    assert stopped.status == "Accepted"
    await harness.advance(0.5)
    await csms.wait_for(lambda: csms.count("StopTransaction") == 1)
    assert csms.payloads("StopTransaction")[0]["reason"] == "Remote"
    assert app.controller.connector.status is Status.FINISHING
    assert not harness.sim.contactor.commanded
    (row,) = app.store.conn.execute("SELECT id_tag, auth, stop_reason FROM sessions")
    assert row == ("APPUSER1", "remote start (csms)", "Remote")


async def test_configuration_get_and_change(harness: Harness) -> None:
    csms = harness.csms
    got = await csms.call(CP, call.GetConfiguration(key=["HeartbeatInterval", "NoSuchKey"]))
    assert got.unknown_key == ["NoSuchKey"]
    assert got.configuration_key[0]["key"] == "HeartbeatInterval"
    assert (await csms.call(CP, call.ChangeConfiguration(key="MeterValueSampleInterval", value="15"))).status == (
        "Accepted"
    )
    assert (await csms.call(CP, call.ChangeConfiguration(key="NumberOfConnectors", value="2"))).status == "Rejected"
    assert (await csms.call(CP, call.ChangeConfiguration(key="Bogus", value="1"))).status == "NotSupported"
    assert harness.app.ocpp.configuration.get_int("MeterValueSampleInterval") == 15


async def test_a_new_sample_interval_applies_at_once(harness: Harness) -> None:
    """The old 60 s wait is not finished first: MeterValues follow the new 1 s interval right away."""
    csms, app = harness.csms, harness.app
    harness.sim.plug()
    harness.sim.tap(bytes.fromhex("04A1B2C3"))
    await harness.advance(3.0)
    await csms.wait_for(lambda: csms.count("StartTransaction") == 1)
    assert app.ocpp.configuration.get_int("MeterValueSampleInterval") == 60
    await asyncio.sleep(0.2)  # the sampling loop is inside its 60 s wait now
    result = await csms.call(CP, call.ChangeConfiguration(key="MeterValueSampleInterval", value="1"))
    assert result.status == "Accepted"
    await csms.wait_for(lambda: csms.count("MeterValues") >= 2, timeout=4.0)


async def test_change_availability_and_unknown_actions(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    result = await csms.call(CP, call.ChangeAvailability(connector_id=1, type="Inoperative"))
    assert result.status == "Accepted"
    await harness.advance(0.3)
    assert app.controller.connector.status is Status.UNAVAILABLE
    await csms.wait_for(
        lambda: any(p["status"] == "Unavailable" for p in csms.payloads("StatusNotification") if p["connectorId"] == 1)
    )
    result = await csms.call(CP, call.ChangeAvailability(connector_id=1, type="Operative"))
    assert result.status == "Accepted"
    await harness.advance(0.3)
    assert app.controller.connector.status is Status.AVAILABLE
    assert (await csms.call(CP, call.DataTransfer(vendor_id="acme"))).status == "UnknownVendorId"
    assert (await csms.call(CP, call.UnlockConnector(connector_id=1))).status == "NotSupported"


async def test_csms_down_for_a_whole_session_then_back(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    app.ocpp.configuration.change("AllowOfflineTxForUnknownId", "true")
    port = csms.port
    await csms.stop()
    await asyncio.sleep(0.05)
    assert not app.ocpp.service.online
    harness.sim.plug()
    harness.sim.tap(bytes.fromhex("CAFE0001"))
    await harness.advance(3.0)
    assert app.controller.connector.status is Status.CHARGING
    await harness.advance(30.0, dt=1.0)
    app.ocpp.service.transactions.sample_meter_values()
    harness.sim.unplug()
    await harness.advance(0.5)
    assert len(app.ocpp.outbox) == 4  # Start, MeterValues (Transaction.Begin, a sample), Stop: on disk, waiting
    csms.received.clear()
    await csms.start(port=port)
    await csms.wait_for(lambda: csms.count("StopTransaction") == 1, timeout=10.0)
    tx = [r for r in csms.received if r.action in ("StartTransaction", "MeterValues", "StopTransaction")]
    assert [r.action for r in tx] == ["StartTransaction", "MeterValues", "MeterValues", "StopTransaction"]
    tx_id = csms.payloads("StopTransaction")[0]["transactionId"]
    assert [p["transactionId"] for p in csms.payloads("MeterValues")] == [tx_id, tx_id]
    assert csms.payloads("StopTransaction")[0]["reason"] == "EVDisconnected"
    await csms.wait_for(lambda: len(app.ocpp.outbox) == 0)  # the last answer is recorded


async def test_reservation_holds_the_connector_for_its_id_tag(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    expiry = (harness.clock.now() + timedelta(minutes=30)).isoformat()
    result = await csms.call(
        CP, call.ReserveNow(connector_id=1, expiry_date=expiry, id_tag="04A1B2C3", reservation_id=7)
    )
    assert result.status == "Accepted"
    await harness.advance(0.3)
    assert app.controller.connector.status is Status.RESERVED
    await csms.wait_for(
        lambda: any(p["status"] == "Reserved" for p in csms.payloads("StatusNotification") if p["connectorId"] == 1)
    )
    assert (
        await csms.call(CP, call.ReserveNow(connector_id=0, expiry_date=expiry, id_tag="X", reservation_id=8))
    ).status == "Rejected"
    harness.sim.plug()
    harness.sim.tap(bytes.fromhex("11223344"))  # someone else
    await harness.advance(3.0)
    assert app.controller.connector.status is Status.RESERVED
    assert not harness.sim.contactor.commanded
    harness.sim.tap(bytes.fromhex("04A1B2C3"))
    await harness.advance(3.0)
    await csms.wait_for(lambda: csms.count("StartTransaction") == 1)
    assert csms.payloads("StartTransaction")[0]["reservationId"] == 7
    assert app.controller.connector.status is Status.CHARGING
    assert app.controller.connector.reservation is None


async def test_reservation_expires_and_can_be_cancelled(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    expiry = (harness.clock.now() + timedelta(seconds=60)).isoformat()
    assert (
        await csms.call(CP, call.ReserveNow(connector_id=1, expiry_date=expiry, id_tag="A1", reservation_id=1))
    ).status == "Accepted"
    await harness.advance(0.3)
    assert app.controller.connector.status is Status.RESERVED
    await harness.advance(61.0, dt=1.0)
    assert app.controller.connector.status is Status.AVAILABLE
    assert (await csms.call(CP, call.CancelReservation(reservation_id=1))).status == "Rejected"
    expiry = (harness.clock.now() + timedelta(seconds=60)).isoformat()
    await csms.call(CP, call.ReserveNow(connector_id=1, expiry_date=expiry, id_tag="A1", reservation_id=2))
    await harness.advance(0.3)
    assert (await csms.call(CP, call.CancelReservation(reservation_id=2))).status == "Accepted"
    await harness.advance(0.3)
    assert app.controller.connector.status is Status.AVAILABLE
    past = (harness.clock.now() - timedelta(seconds=1)).isoformat()
    assert (
        await csms.call(CP, call.ReserveNow(connector_id=1, expiry_date=past, id_tag="A1", reservation_id=3))
    ).status == "Rejected"
    harness.sim.plug()
    await harness.advance(0.3)
    occupied = await csms.call(CP, call.ReserveNow(connector_id=1, expiry_date=expiry, id_tag="A1", reservation_id=4))
    assert occupied.status == "Occupied"


async def test_heartbeat_after_the_interval(harness: Harness) -> None:
    csms = harness.csms
    before = csms.count("Heartbeat")
    await harness.advance(299.0, dt=10.0)
    await asyncio.sleep(0.1)
    assert csms.count("Heartbeat") == before
    await harness.advance(2.0, dt=1.0)
    await csms.wait_for(lambda: csms.count("Heartbeat") == before + 1)


async def test_fault_reports_error_code_and_faulted(harness: Harness) -> None:
    csms = harness.csms
    harness.sim.inject("rcd")
    await harness.advance(0.3)
    await csms.wait_for(
        lambda: any(p["status"] == "Faulted" for p in csms.payloads("StatusNotification") if p["connectorId"] == 1)
    )
    faulted = [p for p in csms.payloads("StatusNotification") if p["connectorId"] == 1 and p["status"] == "Faulted"]
    assert faulted[0]["errorCode"] == "GroundFailure" and faulted[0]["vendorErrorCode"] == "rcd"
    harness.sim.clear("rcd")
    await harness.advance(1.0)
    await csms.wait_for(lambda: csms.payloads("StatusNotification")[-1]["errorCode"] == "NoError")


async def test_change_availability_during_a_session_is_scheduled(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    harness.sim.plug()
    harness.sim.tap(bytes.fromhex("04A1B2C3"))
    await harness.advance(3.0)
    assert app.controller.connector.status is Status.CHARGING
    result = await csms.call(CP, call.ChangeAvailability(connector_id=0, type="Inoperative"))
    assert result.status == "Scheduled"
    await harness.advance(1.0)
    assert harness.sim.contactor.commanded  # the running session is not cut
    harness.sim.unplug()
    await harness.advance(0.5)
    assert app.controller.connector.status is Status.UNAVAILABLE


async def test_start_answered_invalid_stops_the_transaction(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    app.ocpp.configuration.change("LocalPreAuthorize", "true")
    app.ocpp.local_list.put("0BADCAFE", IdTagInfo(AuthStatus.ACCEPTED))  # known locally, blocked centrally
    csms.id_tags = {"0BADCAFE": "Blocked"}
    harness.sim.plug()
    harness.sim.tap(bytes.fromhex("0BADCAFE"))
    await harness.advance(3.0)
    await csms.wait_for(lambda: csms.count("StopTransaction") == 1)
    assert csms.count("Authorize") == 0  # pre-authorized from the local list
    assert csms.payloads("StopTransaction")[0]["reason"] == "DeAuthorized"
    await harness.advance(0.3)
    assert not harness.sim.contactor.commanded


async def test_authorize_remote_tx_requests(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    app.ocpp.configuration.change("AuthorizeRemoteTxRequests", "true")
    csms.id_tags = {"BLOCKED1": "Blocked"}
    harness.sim.plug()
    await harness.advance(0.3)
    assert (await csms.call(CP, call.RemoteStartTransaction(id_tag="BLOCKED1"))).status == "Accepted"
    await harness.advance(2.0)
    await csms.wait_for(lambda: csms.count("Authorize") == 1)
    assert csms.count("StartTransaction") == 0
    assert app.controller.connector.status is Status.PREPARING


async def test_boot_pending_is_retried_and_nothing_else_is_sent(central_system: TestCentralSystem) -> None:  # noqa: F811
    central_system.boot_status = "Pending"
    central_system.heartbeat_interval = 1
    h = Harness(central_system, Path(tempfile.mkdtemp(prefix="evse-ocpp-", dir="/tmp")))
    task = asyncio.create_task(h.app.run(h.stop))
    try:
        await central_system.wait_for(lambda: central_system.count("BootNotification") == 2, timeout=5.0)
        assert set(h.actions()) == {"BootNotification"}
        central_system.boot_status = "Accepted"
        await central_system.wait_for(lambda: central_system.count("StatusNotification") >= 2, timeout=5.0)
    finally:
        h.stop.set()
        await task


def test_clock_aligned_boundaries() -> None:
    t = datetime(2026, 3, 29, 0, 7, 30, tzinfo=UTC)
    assert next_boundary(t, 900) == datetime(2026, 3, 29, 0, 15, tzinfo=UTC)
    assert next_boundary(datetime(2026, 3, 29, 23, 50, tzinfo=UTC), 900) == datetime(2026, 3, 30, 0, 0, tzinfo=UTC)


@given(st.datetimes(timezones=st.just(UTC)), st.sampled_from([60, 300, 900, 3600, 86400]))
def test_clock_aligned_boundary_properties(now: datetime, interval: int) -> None:
    b = next_boundary(now, interval)
    assert now < b <= now + timedelta(seconds=interval)
    midnight = b.replace(hour=0, minute=0, second=0, microsecond=0)
    assert (b - midnight).total_seconds() % interval == 0


@given(
    st.recursive(
        st.dictionaries(st.from_regex(r"[a-z][a-zA-Z]{0,12}", fullmatch=True), st.integers()),
        lambda inner: st.dictionaries(
            st.from_regex(r"[a-z][a-zA-Z]{0,12}", fullmatch=True), inner | st.lists(inner, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_cached_key_conversion_matches_the_ocpp_package(payload: dict[str, object]) -> None:
    assert snake_keys(payload) == camel_to_snake_case(payload)


async def test_clock_aligned_values_and_stop_txn_aligned_data(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    app.ocpp.configuration.change("StopTxnAlignedData", "Energy.Active.Import.Register")
    app.ocpp.service.transactions.clock_aligned_sample(harness.clock.now())  # outside a transaction: no transactionId
    await csms.wait_for(lambda: csms.count("MeterValues") == 1)
    assert "transactionId" not in csms.payloads("MeterValues")[0]
    harness.sim.plug()
    harness.sim.tap(bytes.fromhex("04A1B2C3"))
    await harness.advance(60.0, dt=1.0)
    app.ocpp.service.transactions.clock_aligned_sample(harness.clock.now())
    await csms.wait_for(lambda: csms.count("MeterValues") == 3)  # the Transaction.Begin readings, then the aligned
    aligned = csms.payloads("MeterValues")[2]
    assert aligned["transactionId"] == 1
    assert aligned["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"
    harness.sim.unplug()
    await harness.advance(0.5)
    await csms.wait_for(lambda: csms.count("StopTransaction") == 1)
    data = csms.payloads("StopTransaction")[0]["transactionData"]
    assert [d["sampledValue"][0]["context"] for d in data] == ["Transaction.Begin", "Sample.Clock", "Transaction.End"]


def _register(meter_value: dict[str, Any], context: str) -> float:
    (value,) = [
        float(v["value"])
        for v in meter_value["sampledValue"]
        if v["measurand"] == "Energy.Active.Import.Register" and v["context"] == context
    ]
    return value


async def test_transaction_begin_and_end_readings_are_meter_start_and_stop(harness: Harness) -> None:
    """Billing: the Transaction.Begin MeterValues and the StopTransaction's Begin/End readings carry exactly the
    registers in meterStart/meterStop, at the transaction's own timestamps."""
    csms, app = harness.csms, harness.app
    app.ocpp.configuration.change("StopTxnSampledData", "Energy.Active.Import.Register,Voltage")
    harness.sim.plug()
    harness.sim.tap(bytes.fromhex("04A1B2C3"))
    await harness.advance(120.0, dt=1.0)
    harness.sim.tap(bytes.fromhex("04A1B2C3"))
    await harness.advance(1.0)
    await csms.wait_for(lambda: csms.count("StopTransaction") == 1)
    start, stop = csms.payloads("StartTransaction")[0], csms.payloads("StopTransaction")[0]
    assert stop["meterStop"] - start["meterStart"] > 100  # two minutes of charging
    first = csms.payloads("MeterValues")[0]
    assert first["transactionId"] == 1
    (begin_mv,) = first["meterValue"]
    assert begin_mv["timestamp"] == start["timestamp"]
    assert _register(begin_mv, "Transaction.Begin") == start["meterStart"]
    begin, end = stop["transactionData"][0], stop["transactionData"][-1]
    assert (begin["timestamp"], end["timestamp"]) == (start["timestamp"], stop["timestamp"])
    assert _register(begin, "Transaction.Begin") == start["meterStart"]
    assert _register(end, "Transaction.End") == stop["meterStop"]
    assert {v["measurand"] for v in end["sampledValue"]} == {"Energy.Active.Import.Register", "Voltage"}


async def test_max_energy_on_invalid_id(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    app.ocpp.configuration.change("StopTransactionOnInvalidId", "false")
    app.ocpp.configuration.change("MaxEnergyOnInvalidId", "500")
    app.ocpp.configuration.change("LocalPreAuthorize", "true")
    app.ocpp.local_list.put("0BADCAFE", IdTagInfo(AuthStatus.ACCEPTED))
    csms.id_tags = {"0BADCAFE": "Invalid"}
    harness.sim.plug()
    harness.sim.tap(bytes.fromhex("0BADCAFE"))
    await harness.advance(3.0)
    await csms.wait_for(lambda: csms.count("StartTransaction") == 1)
    await harness.advance(60.0, dt=1.0)  # 22 kW: 500 Wh in about 80 s
    assert harness.sim.contactor.commanded
    await harness.advance(60.0, dt=1.0)
    await csms.wait_for(lambda: csms.count("StopTransaction") == 1)
    stop = csms.payloads("StopTransaction")[0]
    assert stop["reason"] == "DeAuthorized"
    assert 500 <= stop["meterStop"] - csms.payloads("StartTransaction")[0]["meterStart"] < 600


async def test_charger_initiated_data_transfer(harness: Harness) -> None:
    result = await harness.app.ocpp.service.data_transfer("org.example", "Hello", "{}")
    assert result.status == "Accepted"
    assert harness.csms.payloads("DataTransfer")[0] == {"vendorId": "org.example", "messageId": "Hello", "data": "{}"}


async def test_connection_timeout_set_by_the_csms_applies(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    assert (await csms.call(CP, call.ChangeConfiguration(key="ConnectionTimeOut", value="10"))).status == "Accepted"
    app.controller.connector.authorize("04A1B2C3")
    await harness.advance(0.5)
    assert app.controller.connector.status is Status.PREPARING
    await harness.advance(10.0, dt=0.5)
    assert app.controller.connector.status is Status.AVAILABLE
    assert not app.controller.connector.authorized
