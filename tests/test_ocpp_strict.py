"""The whole charge point against the strict, schema-validating CSMS (npm ocpp-rpc, strictMode).

Every frame the charger sends (its CALLs and its CALLRESULTs to CSMS-initiated CALLs) is validated by ocpp-rpc
against the OCPP 1.6J JSON schemas; the test asserts that not one violation was recorded.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from csms.fixtures import strict_csms_fixture  # noqa: F401
from csms.strict import StrictCentralSystem
from ocpp_harness import OcppHarness

from firmware.charging.connector import Status

CP = "CP-STRICT"
CARD = "04A1B2C3"
MEASURANDS = "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,Current.Offered"


class StrictHarness(OcppHarness[StrictCentralSystem]):
    def __init__(self, csms: StrictCentralSystem, work: Path) -> None:
        super().__init__(csms, CP, response_timeout_s=5.0, work=work, serve_api=False)

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        return await self.csms.call(CP, action, payload, timeout=10.0)

    async def settle(self) -> None:
        """Let the charger's queue drain and the strict peer's frame log catch up."""
        await self.csms.wait_for(lambda: len(self.app.ocpp.outbox) == 0)
        await asyncio.sleep(0.1)


@pytest.fixture
async def strict(strict_csms: StrictCentralSystem) -> AsyncIterator[StrictHarness]:
    h = StrictHarness(strict_csms, Path(tempfile.mkdtemp(prefix="evse-strict-", dir="/tmp")))
    await h.start()
    yield h
    await h.close()


def charger_frames(csms: StrictCentralSystem) -> list[dict[str, Any]]:
    """Every frame the charger sent: inbound CALLs and CALLRESULT/CALLERROR frames, as the strict peer saw them."""
    return [f for f in csms.frames if f["dir"] == "in" and f["client"] == CP]


def describe(violations: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps({"raw": v["raw"], "errors": v["errors"]})[:1500] for v in violations)


async def test_every_frame_the_charger_sends_is_schema_valid(strict: StrictHarness) -> None:
    csms, app = strict.csms, strict.app
    await csms.wait_for(lambda: csms.count("StatusNotification") >= 2)

    # ---- a card-started session: Authorize, StartTransaction, MeterValues, StopTransaction with transactionData
    assert app.ocpp.configuration.change("MeterValuesSampledData", MEASURANDS) == "Accepted"
    assert app.ocpp.configuration.change("StopTxnSampledData", MEASURANDS) == "Accepted"
    strict.sim.plug()
    strict.sim.tap(bytes.fromhex(CARD))
    await strict.advance(3.0)
    assert app.controller.connector.status is Status.CHARGING
    await csms.wait_for(lambda: csms.count("StartTransaction") == 1)
    await strict.advance(30.0, dt=1.0)
    app.ocpp.service.transactions.sample_meter_values()
    # The Transaction.Begin readings right after StartTransaction, then the periodic sample.
    await csms.wait_for(lambda: csms.count("MeterValues") == 2)
    strict.sim.tap(bytes.fromhex(CARD))
    await strict.advance(1.0)
    await csms.wait_for(lambda: csms.count("StopTransaction") == 1)
    stop = csms.received("StopTransaction")[0]
    assert stop["reason"] == "Local" and stop["transactionData"]
    begin, end = stop["transactionData"][0], stop["transactionData"][-1]
    assert {s["context"] for s in begin["sampledValue"]} == {"Transaction.Begin"}
    assert {s["context"] for s in end["sampledValue"]} == {"Transaction.End"}
    measurands = {s.get("measurand") for s in end["sampledValue"]}
    assert "Energy.Active.Import.Register" in measurands
    start_mv, mv = csms.received("MeterValues")[0], csms.received("MeterValues")[1]
    assert {s["context"] for s in start_mv["meterValue"][0]["sampledValue"]} == {"Transaction.Begin"}
    assert {s.get("measurand") for s in mv["meterValue"][0]["sampledValue"]} >= {
        "Energy.Active.Import.Register",
        "Power.Active.Import",
        "Current.Import",
        "Voltage",
        "Current.Offered",
    }
    assert csms.received("Authorize")[0]["idTag"] == CARD
    strict.sim.unplug()
    await strict.advance(0.5)
    await strict.settle()

    # ---- CSMS-initiated
    strict.sim.plug()
    await strict.advance(0.5)
    assert (await strict.call("RemoteStartTransaction", {"idTag": "APPUSER1", "connectorId": 1}))["status"] == (
        "Accepted"
    )
    await strict.advance(3.0)
    await csms.wait_for(lambda: csms.count("StartTransaction") == 2)
    await strict.settle()
    tx_id = app.ocpp.outbox.transaction_id(app.sessions.current.transaction_ref)
    assert tx_id is not None
    assert (await strict.call("TriggerMessage", {"requestedMessage": "MeterValues", "connectorId": 1}))[
        "status"
    ] == "Accepted"
    await csms.wait_for(lambda: csms.count("MeterValues") == 4)
    assert (await strict.call("RemoteStopTransaction", {"transactionId": tx_id}))["status"] == "Accepted"
    await strict.advance(0.5)
    await csms.wait_for(lambda: csms.count("StopTransaction") == 2)
    assert csms.received("StopTransaction")[1]["reason"] == "Remote"
    strict.sim.unplug()
    await strict.advance(0.5)
    await strict.settle()

    everything = await strict.call("GetConfiguration", {})
    keys = {k["key"] for k in everything["configurationKey"]}
    assert {"HeartbeatInterval", "MeterValuesSampledData", "NumberOfConnectors"} <= keys
    some = await strict.call("GetConfiguration", {"key": ["HeartbeatInterval", "NoSuchKey"]})
    assert some["unknownKey"] == ["NoSuchKey"]
    assert (await strict.call("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "30"}))[
        "status"
    ] == "Accepted"
    assert (await strict.call("ChangeConfiguration", {"key": "Bogus", "value": "1"}))["status"] == "NotSupported"
    assert (await strict.call("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}))["status"] == (
        "Accepted"
    )
    await strict.advance(0.3)
    assert (await strict.call("ChangeAvailability", {"connectorId": 0, "type": "Operative"}))["status"] == "Accepted"
    await strict.advance(0.3)

    before = {a: csms.count(a) for a in ("StatusNotification", "Heartbeat", "BootNotification")}
    for message in ("StatusNotification", "Heartbeat", "BootNotification"):
        assert (await strict.call("TriggerMessage", {"requestedMessage": message}))["status"] == "Accepted"
        await csms.wait_for(lambda m=message: csms.count(m) > before[m])  # type: ignore[misc]

    assert (await strict.call("GetLocalListVersion", {}))["listVersion"] == 0
    full = {
        "listVersion": 1,
        "updateType": "Full",
        "localAuthorizationList": [
            {"idTag": "LOCAL001", "idTagInfo": {"status": "Accepted"}},
            {"idTag": "LOCAL002", "idTagInfo": {"status": "Blocked"}},
        ],
    }
    assert (await strict.call("SendLocalList", full))["status"] == "Accepted"
    diff = {
        "listVersion": 2,
        "updateType": "Differential",
        "localAuthorizationList": [{"idTag": "LOCAL002"}, {"idTag": "LOCAL003", "idTagInfo": {"status": "Accepted"}}],
    }
    assert (await strict.call("SendLocalList", diff))["status"] == "Accepted"
    assert (await strict.call("GetLocalListVersion", {}))["listVersion"] == 2
    assert app.ocpp.local_list.get("LOCAL003") is not None and app.ocpp.local_list.get("LOCAL002") is None
    assert (await strict.call("ClearCache", {}))["status"] == "Accepted"
    assert (await strict.call("DataTransfer", {"vendorId": "acme", "messageId": "x", "data": "y"}))["status"] in (
        "Accepted",
        "Rejected",
        "UnknownMessageId",
        "UnknownVendorId",
    )
    assert (await strict.call("UnlockConnector", {"connectorId": 1}))["status"] in (
        "Unlocked",
        "UnlockFailed",
        "NotSupported",
    )
    # Reservation: used by its idTag (StartTransaction carries reservationId), then one cancelled.
    expiry = (strict.clock.now() + timedelta(minutes=10)).isoformat()
    reserve = {"connectorId": 1, "expiryDate": expiry, "idTag": "04A1B2C3", "reservationId": 5}
    assert (await strict.call("ReserveNow", reserve))["status"] == "Accepted"
    assert (await strict.call("CancelReservation", {"reservationId": 5}))["status"] == "Accepted"
    assert (await strict.call("CancelReservation", {"reservationId": 5}))["status"] == "Rejected"
    assert (await strict.call("ReserveNow", {**reserve, "reservationId": 6}))["status"] == "Accepted"
    await strict.advance(0.3)
    strict.sim.plug()
    strict.sim.tap(bytes.fromhex("04A1B2C3"))
    await strict.advance(3.0)
    await csms.wait_for(lambda: any(p.get("reservationId") == 6 for p in csms.received("StartTransaction")))
    strict.sim.unplug()
    await strict.advance(0.5)
    for message in ("DiagnosticsStatusNotification", "FirmwareStatusNotification"):
        assert (await strict.call("TriggerMessage", {"requestedMessage": message}))["status"] == "Accepted"
        await csms.wait_for(lambda m=message: csms.count(m) >= 1)  # type: ignore[misc]
    await strict.settle()
    assert (await strict.call("Reset", {"type": "Soft"}))["status"] == "Accepted"
    await csms.wait_for(lambda: strict.app.restart_requested == "Soft")
    await asyncio.sleep(0.2)

    # ---- the verdict
    for action in (
        "BootNotification",
        "StatusNotification",
        "Heartbeat",
        "Authorize",
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
    ):
        assert csms.count(action) >= 1, action
    sent = charger_frames(csms)
    results = [f for f in sent if isinstance(f["frame"], list) and f["frame"][0] == 3]
    errors = [f for f in sent if isinstance(f["frame"], list) and f["frame"][0] == 4]
    assert len(results) >= 17 and not errors, describe(errors)
    violations = [v for v in csms.violations if v["client"] == CP]
    assert violations == [], describe(violations)


async def test_trigger_meter_values_outside_a_transaction_sends_one(strict: StrictHarness) -> None:
    """1.6 §5.17: after an Accepted TriggerMessage the requested message SHALL be sent (no transactionId here)."""
    csms = strict.csms
    await csms.wait_for(lambda: csms.count("StatusNotification") >= 2)
    await strict.advance(0.5)
    assert (await strict.call("TriggerMessage", {"requestedMessage": "MeterValues", "connectorId": 1}))[
        "status"
    ] == "Accepted"
    await csms.wait_for(lambda: csms.count("MeterValues") == 1, timeout=2.0)
    assert "transactionId" not in csms.received("MeterValues")[0]
    assert [v for v in csms.violations if v["client"] == CP] == []


async def test_extended_trigger_message_sends_the_security_extension_messages(strict: StrictHarness) -> None:
    """ExtendedTriggerMessage: SignedFirmwareStatusNotification and LogStatusNotification (Idle, no requestId while
    nothing runs), the 1.6 messages as TriggerMessage sends them, SignChargePointCertificate NotImplemented."""
    csms = strict.csms
    await csms.wait_for(lambda: csms.count("StatusNotification") >= 2)
    await strict.settle()

    async def trigger(message: str, **extra: Any) -> str:
        answer = await strict.call("ExtendedTriggerMessage", {"requestedMessage": message, **extra})
        return str(answer["status"])

    assert await trigger("FirmwareStatusNotification") == "Accepted"
    await csms.wait_for(lambda: csms.count("SignedFirmwareStatusNotification") == 1)
    assert csms.received("SignedFirmwareStatusNotification") == [{"status": "Idle"}]
    assert await trigger("LogStatusNotification") == "Accepted"
    await csms.wait_for(lambda: csms.count("LogStatusNotification") == 1)
    assert csms.received("LogStatusNotification") == [{"status": "Idle"}]
    heartbeats = csms.count("Heartbeat")
    assert await trigger("Heartbeat") == "Accepted"
    await csms.wait_for(lambda: csms.count("Heartbeat") == heartbeats + 1)
    statuses = csms.count("StatusNotification")
    assert await trigger("StatusNotification", connectorId=1) == "Accepted"
    await csms.wait_for(lambda: csms.count("StatusNotification") == statuses + 1)
    assert csms.received("StatusNotification")[-1]["connectorId"] == 1
    assert await trigger("MeterValues", connectorId=1) == "Accepted"
    await csms.wait_for(lambda: csms.count("MeterValues") == 1)
    assert await trigger("SignChargePointCertificate") == "NotImplemented"
    assert await trigger("Heartbeat", connectorId=2) == "Rejected"
    await strict.settle()
    assert csms.count("Heartbeat") == heartbeats + 1  # the refused ones sent nothing
    assert [v for v in csms.violations if v["client"] == CP] == []
