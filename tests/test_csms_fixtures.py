"""The two test central systems (tests/csms) work: a minimal ocpp.v16 charge point talks to both."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from csms.central import TestCentralSystem
from csms.fixtures import central_system_fixture, strict_csms_fixture  # noqa: F401
from csms.strict import StrictCentralSystem
from ocpp.exceptions import NotImplementedError as OCPPNotImplementedError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action, AuthorizationStatus, RegistrationStatus, ResetStatus, ResetType
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.protocol import State

CP_ID = "CP-1"


class MiniChargePoint(ChargePoint):
    """A charge point that only answers Reset (everything else: NotImplemented)."""

    def __init__(self, cp_id: str, connection: ClientConnection) -> None:
        super().__init__(cp_id, connection, response_timeout=10)
        self.resets: list[str] = []
        self.task: asyncio.Task[None] | None = None  # the receive loop (cp.start())

    @on(Action.reset)
    def on_reset(self, type: str, **kwargs: Any) -> call_result.Reset:
        self.resets.append(type)
        return call_result.Reset(status=ResetStatus.accepted)


@contextlib.asynccontextmanager
async def charge_point(base_url: str, cp_id: str = CP_ID, **kwargs: Any) -> AsyncIterator[MiniChargePoint]:
    """Connect, run the receive loop in a task, and tear both down afterwards."""
    ws = await connect(f"{base_url}/{cp_id}", subprotocols=["ocpp1.6"], open_timeout=5, **kwargs)  # type: ignore[list-item]
    assert ws.subprotocol == "ocpp1.6"
    cp = MiniChargePoint(cp_id, ws)
    task = asyncio.create_task(cp.start())
    cp.task = task
    try:
        yield cp
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosedOK, ConnectionClosedError):
            await task
        await ws.close()


def boot() -> call.BootNotification:
    return call.BootNotification(charge_point_model="PiEVSE", charge_point_vendor="pievse", firmware_version="0.1.0")


# ---------------------------------------------------------------------------------------------- Python central
async def test_boot_accepted_and_recorded_raw(central_system: TestCentralSystem) -> None:
    central_system.heartbeat_interval = 42
    auth = base64.b64encode(f"{CP_ID}:secret".encode()).decode()
    async with charge_point(central_system.url, additional_headers={"Authorization": f"Basic {auth}"}) as cp:
        result = await cp.call(boot())
        assert result.status == RegistrationStatus.accepted
        assert result.interval == 42
        assert central_system.connected(CP_ID)

    assert central_system.count("BootNotification") == 1
    rec = central_system.received[0]
    assert rec.charge_point_id == CP_ID and rec.action == "BootNotification"
    assert rec.payload == {"chargePointModel": "PiEVSE", "chargePointVendor": "pievse", "firmwareVersion": "0.1.0"}
    assert central_system.headers[CP_ID]["Authorization"] == f"Basic {auth}"
    assert central_system.paths[CP_ID] == f"/ocpp/{CP_ID}"
    directions = [d for cid, d, _ in central_system.frames if cid == CP_ID]
    assert directions == ["in", "out"]
    out = json.loads(central_system.frames[1][2])
    assert out[0] == 3 and out[2]["status"] == "Accepted" and out[2]["currentTime"].endswith("Z")
    await central_system.wait_for(lambda: not central_system.connected(CP_ID))


async def test_boot_status_authorize_table_and_transaction_ids(central_system: TestCentralSystem) -> None:
    central_system.boot_status = RegistrationStatus.pending
    central_system.id_tags = {"BLOCKED1": AuthorizationStatus.blocked}
    central_system.expiry_date = "2030-01-01T00:00:00Z"
    async with charge_point(central_system.url) as cp:
        assert (await cp.call(boot())).status == RegistrationStatus.pending
        assert (await cp.call(call.Authorize(id_tag="04A1B2C3"))).id_tag_info["status"] == "Accepted"
        blocked = await cp.call(call.Authorize(id_tag="BLOCKED1"))
        assert blocked.id_tag_info == {"status": "Blocked", "expiry_date": "2030-01-01T00:00:00Z"}
        ts = "2026-01-01T00:00:00Z"
        ids = [
            (await cp.call(call.StartTransaction(connector_id=1, id_tag="04A1B2C3", meter_start=0, timestamp=ts)))
            for _ in range(2)
        ]
        assert [r.transaction_id for r in ids] == [1, 2]
        stop = await cp.call(call.StopTransaction(meter_stop=10, timestamp=ts, transaction_id=1, id_tag="04A1B2C3"))
        assert stop.id_tag_info["status"] == "Accepted"
        for payload in (
            call.Heartbeat(),
            call.StatusNotification(connector_id=1, error_code="NoError", status="Available"),
            call.MeterValues(connector_id=1, meter_value=[{"timestamp": ts, "sampled_value": [{"value": "1"}]}]),
            call.DataTransfer(vendor_id="pievse"),
            call.DiagnosticsStatusNotification(status="Idle"),
            call.FirmwareStatusNotification(status="Idle"),
        ):
            await cp.call(payload, suppress=False)
    assert central_system.count("StartTransaction") == 2
    assert central_system.count("FirmwareStatusNotification") == 1


async def test_csms_initiated_call_round_trip(central_system: TestCentralSystem) -> None:
    async with charge_point(central_system.url) as cp:
        await cp.call(boot())
        result = await central_system.call(CP_ID, call.Reset(type=ResetType.soft))
        assert result.status == ResetStatus.accepted
        assert cp.resets == ["Soft"]
        with pytest.raises(OCPPNotImplementedError):  # CALLERROR raises (suppress=False)
            await central_system.call(CP_ID, call.UnlockConnector(connector_id=1))
        # arbitrary frames for bad-input tests
        await central_system.send_raw(CP_ID, '[2,"raw-1","FooBar",{}]')
        await central_system.wait_for(
            lambda: any(d == "in" and '"raw-1"' in t for _, d, t in central_system.frames),
        )


async def test_delay_answers_later(central_system: TestCentralSystem) -> None:
    central_system.delay = 0.2
    async with charge_point(central_system.url) as cp:
        assert (await cp.call(boot())).status == RegistrationStatus.accepted


async def test_refuse_answers_503(central_system: TestCentralSystem) -> None:
    central_system.refuse = True
    with pytest.raises(InvalidStatus) as err:
        await connect(f"{central_system.url}/{CP_ID}", subprotocols=["ocpp1.6"], open_timeout=5)  # type: ignore[list-item]
    assert err.value.response.status_code == 503
    assert central_system.refused == 1
    central_system.refuse = False
    async with charge_point(central_system.url) as cp:
        await cp.call(boot())


@pytest.mark.parametrize("close_frame", [True, False])
async def test_drop_is_noticed_by_the_client(central_system: TestCentralSystem, close_frame: bool) -> None:
    async with charge_point(central_system.url) as cp:
        await cp.call(boot())
        await central_system.drop(CP_ID, close_frame=close_frame)
        task = cp.task
        assert task is not None
        expected = ConnectionClosedOK if close_frame else ConnectionClosedError
        with pytest.raises(expected):
            await asyncio.wait_for(task, 5)
        ws: ClientConnection = cp._connection
        assert ws.state is State.CLOSED
        if close_frame:
            assert ws.close_code == 1001
        else:
            assert ws.protocol.close_rcvd is None  # no close frame: the TCP connection just ended
            assert ws.close_code == 1006
        assert not central_system.connected(CP_ID)


async def test_stall_reads_but_never_answers_nor_pongs(central_system: TestCentralSystem) -> None:
    central_system.stall = True
    async with charge_point(central_system.url, ping_interval=0.2, ping_timeout=0.2) as cp:
        pending = asyncio.create_task(cp.call(call.Heartbeat()))
        ws: ClientConnection = cp._connection
        # the keepalive ping gets no pong -> websockets fails the client connection: it sends a close frame
        # 1011 "keepalive ping timeout" and drops TCP without waiting for the answer (so close_code is 1006)
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.protocol.close_sent is not None
        assert ws.protocol.close_sent.code == 1011
        assert ws.protocol.close_sent.reason == "keepalive ping timeout"
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pending
    assert central_system.count("Heartbeat") == 1  # the frame was read and recorded ...
    assert [d for _, d, _ in central_system.frames] == ["in"]  # ... and never answered


async def test_websockets_answers_pings_even_if_the_handler_never_reads() -> None:
    """Why ``stall`` has to drop PONG frames: not reading is not enough, websockets pongs in data_received."""

    done = asyncio.Event()

    async def never_reads(connection: ServerConnection) -> None:
        await done.wait()

    async with serve(never_reads, "127.0.0.1", 0, ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/x", ping_interval=0.1, ping_timeout=0.1) as ws:
            await ws.send("unread")
            await asyncio.sleep(1.0)  # ten keepalive rounds
            assert ws.state is State.OPEN
            await asyncio.wait_for(await ws.ping(), 2)
            done.set()


# ---------------------------------------------------------------------------------------------- strict (ocpp-rpc)
async def test_strict_valid_boot_and_reset_round_trip(strict_csms: StrictCentralSystem) -> None:
    async with charge_point(strict_csms.url) as cp:
        result = await cp.call(boot())
        assert result.status == RegistrationStatus.accepted
        assert result.interval > 0
        await strict_csms.wait_for(lambda: strict_csms.connected(CP_ID))
        reply = await strict_csms.call(CP_ID, "Reset", {"type": "Soft"})
        assert reply == {"status": "Accepted"}
        assert cp.resets == ["Soft"]
        ts = "2026-01-01T00:00:00Z"
        first = await cp.call(call.StartTransaction(connector_id=1, id_tag="04A1B2C3", meter_start=0, timestamp=ts))
        second = await cp.call(call.StartTransaction(connector_id=1, id_tag="04A1B2C3", meter_start=5, timestamp=ts))
        assert second.transaction_id == first.transaction_id + 1
    await strict_csms.wait_for(lambda: not strict_csms.connected(CP_ID))
    assert strict_csms.received("BootNotification") == [
        {"chargePointModel": "PiEVSE", "chargePointVendor": "pievse", "firmwareVersion": "0.1.0"}
    ]
    assert strict_csms.violations == []
    dirs = [(f["dir"], f["frame"][0]) for f in strict_csms.frames]
    assert dirs[:4] == [("in", 2), ("out", 3), ("out", 2), ("in", 3)]


async def test_strict_rejects_invalid_boot_with_callerror(strict_csms: StrictCentralSystem) -> None:
    async with connect(f"{strict_csms.url}/{CP_ID}", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps([2, "bad-1", "BootNotification", {"chargePointVendor": "pievse"}]))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply[0] == 4 and reply[1] == "bad-1"
        assert reply[2] == "OccurrenceConstraintViolation"
        await ws.send(json.dumps([2, "good-1", "BootNotification", boot_payload()]))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply[0] == 3 and reply[2]["status"] == "Accepted"
        await strict_csms.wait_for(lambda: len(strict_csms.frames) >= 4)
    assert len(strict_csms.violations) == 1
    violation = strict_csms.violations[0]
    assert violation["dir"] == "in" and violation["frame"][1] == "bad-1"
    error = violation["errors"][0]
    assert error["kind"] == "strictValidationFailure" and error["method"] == "BootNotification"
    assert "chargePointModel" in error["message"]
    assert [f["errors"] for f in strict_csms.calls("BootNotification")] == [violation["errors"], []]


async def test_strict_refuse_and_drop(strict_csms: StrictCentralSystem) -> None:
    await strict_csms.set_refuse(True)
    with pytest.raises(InvalidStatus) as err:
        await connect(f"{strict_csms.url}/{CP_ID}", subprotocols=["ocpp1.6"], open_timeout=5)  # type: ignore[list-item]
    assert err.value.response.status_code == 503
    await strict_csms.set_refuse(False)
    async with charge_point(strict_csms.url) as cp:
        await cp.call(boot())
        await strict_csms.wait_for(lambda: strict_csms.connected(CP_ID))
        await strict_csms.drop(CP_ID, close_frame=False)
        with pytest.raises(ConnectionClosedError):
            assert cp.task is not None
            await asyncio.wait_for(cp.task, 5)


def boot_payload() -> dict[str, Any]:
    return {"chargePointModel": "PiEVSE", "chargePointVendor": "pievse", "firmwareVersion": "0.1.0"}
