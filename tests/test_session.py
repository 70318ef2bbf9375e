"""Authorization and session records: card taps through the SessionManager on simulated hardware."""

from __future__ import annotations

import asyncio

import pytest
from rig import Rig

from firmware.auth import AllowlistAuthorizer, AuthStatus, FreeAuthorizer, id_tag_from_uid
from firmware.charging.connector import Status
from firmware.metering import MeterSampler
from firmware.session import SessionManager
from hal.interfaces import CardTap, IndicatorPattern


def manager(rig: Rig, *, free: bool = False, allow: tuple[str, ...] = ("04A1B2C3",)) -> SessionManager:
    sampler = MeterSampler(rig.bench.meter, lambda active: rig.ctl.set_device_fault("meter", active))
    authorizer = FreeAuthorizer() if free else AllowlistAuthorizer(allow)
    return SessionManager(rig.ctl, authorizer, sampler, rig.clock, free_vend_id_tag="FREEVEND" if free else None)


async def settle(rig: Rig, sessions: SessionManager, seconds: float, dt: float = 0.1) -> None:
    end = rig.clock.monotonic() + seconds
    while True:
        await rig.step()
        await sessions.drain()
        if rig.clock.monotonic() >= end:
            return
        rig.clock.advance(dt)


def test_uid_to_id_tag() -> None:
    uid = bytes.fromhex("04a1b2c3d4e5f6")
    assert id_tag_from_uid(uid) == "04A1B2C3D4E5F6"
    assert id_tag_from_uid(uid, "reverse", "lower") == "f6e5d4c3b2a104"
    with pytest.raises(ValueError, match="11 bytes"):
        id_tag_from_uid(bytes(11))
    with pytest.raises(ValueError):
        id_tag_from_uid(b"")


async def test_allowlist_is_case_insensitive() -> None:
    auth = AllowlistAuthorizer(["04a1b2c3"])
    assert (await auth.authorize("04A1B2C3")).status is AuthStatus.ACCEPTED
    refused = await auth.authorize("DEADBEEF")
    assert refused.status is AuthStatus.INVALID and "not in auth.allowlist" in refused.reason


async def test_known_card_starts_and_same_card_stops_with_register_energy() -> None:
    rig = Rig()
    sessions = manager(rig)
    rig.bench.plug()
    await settle(rig, sessions, 0.5)
    decision = await sessions.handle_tap(CardTap(bytes.fromhex("04A1B2C3")))
    assert decision is not None and decision.accepted
    await settle(rig, sessions, 600.0, dt=0.5)
    assert rig.status is Status.CHARGING and rig.contactor_closed
    assert sessions.current is not None and sessions.current.meter_start_wh == pytest.approx(0.0)

    await sessions.handle_tap(CardTap(bytes.fromhex("04a1b2c3")))
    await settle(rig, sessions, 0.5)
    assert rig.status is Status.FINISHING and not rig.contactor_closed
    record = sessions.history[-1]
    assert record.stop_reason == "Local"
    register = (await rig.bench.meter.read()).energy_import_wh
    assert record.meter_stop_wh == pytest.approx(register, abs=1.0)
    # ~ 10 minutes at 32 A x 3 x 230 V, less the EV's start-up: the register, not a guess.
    assert 3000 < (record.energy_wh() or 0) < 3700


async def test_unknown_card_is_refused_and_shown() -> None:
    rig = Rig()
    sessions = manager(rig)
    rig.bench.plug()
    await settle(rig, sessions, 0.5)
    decision = await sessions.handle_tap(CardTap(bytes.fromhex("DEADBEEF")))
    assert decision is not None and decision.status is AuthStatus.INVALID
    await settle(rig, sessions, 0.2)
    assert IndicatorPattern.REJECTED in rig.bench.indicator.history
    await settle(rig, sessions, 5.0)
    assert rig.status is Status.PREPARING and not rig.contactor_closed
    assert rig.pilot_constant is not None  # no PWM for a refused card
    assert rig.bench.indicator.pattern is IndicatorPattern.WAITING


async def test_another_card_cannot_stop_a_session() -> None:
    rig = Rig()
    sessions = manager(rig, allow=("04A1B2C3", "11223344"))
    rig.bench.plug()
    await sessions.handle_tap(CardTap(bytes.fromhex("04A1B2C3")))
    await settle(rig, sessions, 5.0)
    assert rig.status is Status.CHARGING
    await sessions.handle_tap(CardTap(bytes.fromhex("11223344")))
    await settle(rig, sessions, 1.0)
    assert rig.status is Status.CHARGING and rig.contactor_closed


async def test_free_vend_starts_on_plug_in() -> None:
    rig = Rig()
    sessions = manager(rig, free=True)
    rig.bench.plug()
    await settle(rig, sessions, 5.0)
    assert rig.status is Status.CHARGING and rig.contactor_closed
    assert sessions.current is not None and sessions.current.id_tag == "FREEVEND"
    assert sessions.current.auth == "free vend (free)"
    rig.bench.unplug()
    await settle(rig, sessions, 0.5)
    assert sessions.history[-1].stop_reason == "EVDisconnected"


async def test_reader_failure_is_a_fault_that_recovers() -> None:
    rig = Rig()
    sessions = manager(rig)
    task = asyncio.create_task(sessions.run_reader(rig.bench.reader, retry_s=0.01, max_retry_s=0.02))
    try:
        rig.bench.inject("reader")
        for _ in range(50):
            await asyncio.sleep(0.005)
            if "reader" in rig.ctl._device_faults:
                break
        await rig.step()
        assert "reader" in rig.ctl.faults
        assert rig.status is Status.AVAILABLE  # a dead reader does not trip the charger
        rig.bench.clear("reader")
        rig.bench.plug()
        await asyncio.sleep(0.05)
        rig.bench.tap(bytes.fromhex("04A1B2C3"))
        for _ in range(100):
            await asyncio.sleep(0.01)
            await sessions.drain()
            if rig.ctl.connector.authorized:
                break
        assert rig.ctl.connector.authorized
    finally:
        task.cancel()


async def test_meter_fault_after_three_failed_reads_and_recovery() -> None:
    rig = Rig()
    faults: list[bool] = []
    sampler = MeterSampler(rig.bench.meter, faults.append)
    rig.bench.inject("meter")
    assert await sampler.sample() is None
    assert await sampler.sample() is None
    assert faults == []
    assert await sampler.sample() is None
    assert faults == [True]
    rig.bench.clear("meter")
    assert await sampler.sample() is not None
    assert faults == [True, False]
