"""The charge point's OCPP 1.6J client against a real central system on loopback (ocpp package, CSMS role)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from csms.central import TestCentralSystem
from csms.fixtures import central_system  # noqa: F401
from ocpp.v16 import call

from firmware.app import ChargePointApp, demo_settings
from firmware.charging.connector import Status
from firmware.config import Settings, default_settings
from firmware.ocpp.connection import Backoff
from hal.clock import FakeClock

CP = "CP-T1"


def settings_for(url: str, work: Path, mode: str = "ocpp") -> Settings:
    s = demo_settings(default_settings(), work)
    return replace(
        s,
        charger=replace(s.charger, id=CP),
        ocpp=replace(s.ocpp, url=url),
        auth=replace(s.auth, mode=mode),
    )


class Harness:
    def __init__(self, csms: TestCentralSystem, work: Path) -> None:
        self.csms = csms
        self.clock = FakeClock()
        self.app = ChargePointApp(
            settings_for(csms.url, work),
            clock=self.clock,
            sim_tick_s=0.005,
            meter_interval_s=0.01,
            ocpp_response_timeout_s=2.0,
            ocpp_backoff=Backoff(initial_s=0.02, maximum_s=0.1),
        )
        self.restarts: list[str] = []
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def sim(self):  # type: ignore[no-untyped-def]
        assert self.app.sim is not None
        return self.app.sim

    async def start(self) -> None:
        self.task = asyncio.create_task(self.app.run(self.stop))
        await self.csms.wait_for(lambda: self.app.ocpp.service.online)

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task

    async def advance(self, seconds: float, dt: float = 0.1) -> None:
        for _ in range(round(seconds / dt)):
            self.clock.advance(dt)
            self.sim.tick()
            self.app.controller.wake()
            await asyncio.sleep(0.002)

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
    app.ocpp.service.sample_meter_values()
    await csms.wait_for(lambda: csms.count("MeterValues") == 1)
    harness.sim.tap(bytes.fromhex("04A1B2C3"))
    await harness.advance(1.0)
    await csms.wait_for(lambda: csms.count("StopTransaction") == 1)

    assert csms.payloads("Authorize")[0]["idTag"] == "04A1B2C3"
    start = csms.payloads("StartTransaction")[0]
    assert start["connectorId"] == 1 and start["idTag"] == "04A1B2C3"
    mv = csms.payloads("MeterValues")[0]
    assert mv["transactionId"] == 1
    energy = [s for s in mv["meterValue"][0]["sampledValue"] if s["measurand"] == "Energy.Active.Import.Register"]
    assert float(energy[0]["value"]) > start["meterStart"]
    stop = csms.payloads("StopTransaction")[0]
    assert stop["transactionId"] == 1 and stop["reason"] == "Local"
    assert stop["meterStop"] >= round(float(energy[0]["value"]))
    tx_actions = [a for a in harness.actions() if a in ("StartTransaction", "MeterValues", "StopTransaction")]
    assert tx_actions == ["StartTransaction", "MeterValues", "StopTransaction"]
    charging = [p for p in csms.payloads("StatusNotification") if p["connectorId"] == 1 and p["status"] == "Charging"]
    assert charging
    assert len(app.ocpp.outbox) == 0


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
    app.ocpp.service.sample_meter_values()
    harness.sim.unplug()
    await harness.advance(0.5)
    assert len(app.ocpp.outbox) == 3  # Start, MeterValues, Stop: on disk, waiting
    csms.received.clear()
    await csms.start(port=port)
    await csms.wait_for(lambda: csms.count("StopTransaction") == 1, timeout=10.0)
    tx = [r for r in csms.received if r.action in ("StartTransaction", "MeterValues", "StopTransaction")]
    assert [r.action for r in tx] == ["StartTransaction", "MeterValues", "StopTransaction"]
    tx_id = csms.payloads("StopTransaction")[0]["transactionId"]
    assert csms.payloads("MeterValues")[0]["transactionId"] == tx_id
    assert csms.payloads("StopTransaction")[0]["reason"] == "EVDisconnected"
    assert len(app.ocpp.outbox) == 0
