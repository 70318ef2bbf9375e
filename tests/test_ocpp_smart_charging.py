"""OCPP 1.6 SmartCharging end to end: the whole charge point (FakeClock) against the test central systems.

Measured here (``pytest -s -k follows`` prints it): latency from each period boundary of a TxProfile to the PWM
change and to the simulated EV's draw reaching the new limit, in simulated time at 50 ms steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from csms.central import TestCentralSystem
from csms.fixtures import central_system_fixture, strict_csms_fixture  # noqa: F401
from csms.strict import StrictCentralSystem
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from ocpp.charge_point import snake_to_camel_case
from ocpp.messages import MessageType, get_validator
from ocpp.v16 import call
from ocpp_harness import OcppHarness, settings_for

from firmware.app import ChargePointApp
from firmware.charging.connector import Status
from firmware.ocpp.v16.electrical import electrical
from firmware.ocpp.v16.meter_values import iso
from firmware.ocpp.v16.smart_charging import CLAIM, MAX_COMPOSITE_S
from hal.clock import FakeClock, SystemClock
from hal.iec61851 import duty_for_current
from hal.interfaces import MeterReading

CP = "CP-SC1"
CARD = "04A1B2C3"


def profile(
    pid: int,
    purpose: str,
    periods: list[tuple[int, float] | tuple[int, float, int]],
    *,
    stack: int = 0,
    kind: str = "Absolute",
    start: datetime | None = None,
    unit: str = "A",
    duration: int | None = None,
    tx: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """csChargingProfiles as a CSMS sends it (camelCase)."""
    schedule: dict[str, Any] = {
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": [
            {"startPeriod": p[0], "limit": p[1], **({"numberPhases": p[2]} if len(p) > 2 else {})} for p in periods
        ],
    }
    if start is not None:
        schedule["startSchedule"] = iso(start)
    if duration is not None:
        schedule["duration"] = duration
    out: dict[str, Any] = {
        "chargingProfileId": pid,
        "stackLevel": stack,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": schedule,
        **extra,
    }
    if tx is not None:
        out["transactionId"] = tx
    return out


class Harness(OcppHarness[TestCentralSystem]):
    def __init__(self, csms: TestCentralSystem, work: Path | None = None) -> None:
        super().__init__(csms, CP, work=work)

    @property
    def smart(self) -> Any:
        return self.app.ocpp.service.smart_charging

    async def call(self, payload: Any) -> Any:
        return await self.csms.call(CP, payload)

    async def set_profile(self, connector: int, data: dict[str, Any]) -> str:
        result = await self.call(call.SetChargingProfile(connector_id=connector, cs_charging_profiles=data))
        return str(result.status)

    async def step(self, seconds: float, dt: float = 0.05) -> list[tuple[datetime, float | None, float]]:
        """Advance simulated time; wake what the harness wakes, plus the meter (its readings carry the
        smart-charging due check, as they do in production). Returns (wall, duty, EV draw) per step."""
        samples = []
        for _ in range(round(seconds / dt)):
            self.clock.advance(dt)
            self.sim.tick()
            self.app.controller.wake()
            self.app.sampler.wake()
            await asyncio.sleep(0.003)
            samples.append((self.clock.now(), self.sim.pilot.duty, self.sim.ev.draw_a))
        return samples

    async def charge(self) -> int:
        """A card-started transaction with the EV drawing its full current; returns the transactionId."""
        self.sim.plug()
        self.sim.tap(bytes.fromhex(CARD))
        await self.step(3.0, dt=0.1)
        assert self.app.controller.connector.status is Status.CHARGING
        await self.csms.wait_for(lambda: self.csms.count("StartTransaction") == 1)
        await self.csms.wait_for(lambda: len(self.app.ocpp.outbox) == 0)
        await self.step(6.0, dt=0.1)
        record = self.app.sessions.current
        tx_id = self.app.ocpp.outbox.transaction_id(record.transaction_ref)
        assert tx_id is not None
        return int(tx_id)

    def claim(self) -> Any:
        return self.app.arbiter.get(CLAIM)

    def rows(self, sql: str = "SELECT profile_id, purpose, transaction_ref FROM charging_profiles") -> list[Any]:
        with sqlite3.connect(self.work / "evse.db") as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
async def harness(central_system: TestCentralSystem) -> AsyncIterator[Harness]:
    h = Harness(central_system)
    await h.start()
    yield h
    await h.close()


def first_at(samples: list[tuple[datetime, float | None, float]], index: int, ok: Any) -> datetime:
    hit = next((s[0] for s in samples if ok(s[index])), None)
    assert hit is not None, samples[-3:]
    return hit


# ---- acceptance -------------------------------------------------------------------------------------------------
async def test_three_period_tx_profile_is_followed_then_cleared(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    tx_id = await harness.charge()
    assert harness.sim.ev.draw_a == pytest.approx(32.0)
    start = harness.clock.now() + timedelta(seconds=10.02)  # boundaries fall between two 50 ms steps
    limits = [26.0, 20.0, 26.0]  # 6 A steps: the EV's 10 A/s ramp follows in 0.6 s; 20 s apart (5 s rule)
    tx_profile = profile(12, "TxProfile", [(0, 26), (20, 20), (40, 26)], stack=1, start=start, duration=60, tx=tx_id)
    assert await harness.set_profile(1, tx_profile) == "Accepted"
    assert harness.claim() is None  # the schedule has not started yet
    assert harness.rows() == [(12, "TxProfile", app.sessions.current.transaction_ref)]

    composite = await harness.call(call.GetCompositeSchedule(connector_id=1, duration=90, charging_rate_unit="A"))
    assert composite.status == "Accepted" and composite.connector_id == 1
    assert composite.schedule_start == iso(harness.clock.now())
    got = [(p["start_period"], p["limit"]) for p in composite.charging_schedule["charging_schedule_period"]]
    assert got == [(0, 32.0), (10, 26.0), (30, 20.0), (50, 26.0), (70, 32.0)]
    assert composite.charging_schedule["duration"] == 90 and composite.charging_schedule["charging_rate_unit"] == "A"
    watts = await harness.call(call.GetCompositeSchedule(connector_id=1, duration=90, charging_rate_unit="W"))
    got_w = [(p["start_period"], p["limit"]) for p in watts.charging_schedule["charging_schedule_period"]]
    assert got_w == [(0, 22080.0), (10, 17940.0), (30, 13800.0), (50, 17940.0), (70, 22080.0)]

    samples = await harness.step(72.0)
    figures = []
    for n, (offset, amps) in enumerate([(0, limits[0]), (20, limits[1]), (40, limits[2]), (60, 32.0)]):
        boundary = start + timedelta(seconds=offset)
        window = [s for s in samples if s[0] >= boundary - timedelta(seconds=0.05)]
        duty = duty_for_current(amps)
        pwm = first_at(window, 1, lambda d, duty=duty: d is not None and abs(d - duty) < 1e-6)
        draw = first_at(window, 2, lambda a, amps=amps: abs(a - amps) <= 0.1)
        figures.append((n + 1, amps, (pwm - boundary).total_seconds(), (draw - boundary).total_seconds()))
    for n, amps, pwm_s, draw_s in figures:
        print(f"boundary {n} -> {amps:g} A: PWM after {pwm_s:.3f} s, EV draw after {draw_s:.3f} s (simulated)")
        assert 0 <= pwm_s < 1.0 and 0 <= draw_s < 1.0
    # Between boundaries the offered current is exactly the period's limit.
    mid = next(s for s in samples if s[0] >= start + timedelta(seconds=25))
    assert mid[1] == pytest.approx(duty_for_current(20.0)) and mid[2] == pytest.approx(20.0)

    # The schedule ran out: the claim is gone and the EV is back at the configured maximum.
    assert harness.claim() is None and harness.sim.ev.draw_a == pytest.approx(32.0)
    current = profile(13, "TxProfile", [(0, 16)], stack=1, kind="Relative")
    assert await harness.set_profile(1, current) == "Accepted"  # same purpose + stack level: replaces 12
    assert harness.rows() == [(13, "TxProfile", app.sessions.current.transaction_ref)]
    claim = harness.claim()
    assert claim.current_a == 16.0 and claim.reason == "TxProfile 13 stack 1 period 1: 16 A"
    await harness.step(2.0)
    assert harness.sim.ev.draw_a == pytest.approx(16.0)

    cleared = await harness.call(call.ClearChargingProfile(id=13))
    assert cleared.status == "Accepted"
    assert harness.claim() is None and harness.rows() == []
    await harness.step(7.0)  # a rise waits for the 5 s PWM rule
    assert harness.sim.pilot.duty == pytest.approx(duty_for_current(32.0))
    assert harness.sim.ev.draw_a == pytest.approx(32.0)
    assert (await harness.call(call.ClearChargingProfile(id=13))).status == "Unknown"
    assert csms.count("StopTransaction") == 0


async def test_tx_profile_without_a_transaction_is_rejected(harness: Harness) -> None:
    start = harness.clock.now()
    assert await harness.set_profile(1, profile(1, "TxProfile", [(0, 10)], start=start)) == "Rejected"
    assert harness.claim() is None and harness.rows() == []
    composite = await harness.call(call.GetCompositeSchedule(connector_id=1, duration=60))
    assert composite.charging_schedule["charging_schedule_period"] == [{"start_period": 0, "limit": 32.0}]


async def test_tx_profile_is_deleted_when_its_transaction_stops(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    start = harness.clock.now()
    assert await harness.set_profile(0, profile(1, "TxDefaultProfile", [(0, 20)], start=start)) == "Accepted"
    tx_id = await harness.charge()
    assert harness.claim().current_a == 20.0
    assert await harness.set_profile(1, profile(2, "TxProfile", [(0, 10)], start=start, tx=tx_id + 1)) == "Rejected"
    assert await harness.set_profile(1, profile(2, "TxProfile", [(0, 10)], start=start, tx=tx_id)) == "Accepted"
    assert harness.claim().current_a == 10.0 and harness.claim().reason.startswith("TxProfile 2 ")
    ref = app.sessions.current.transaction_ref
    assert harness.rows() == [(1, "TxDefaultProfile", None), (2, "TxProfile", ref)]

    harness.sim.tap(bytes.fromhex(CARD))
    await harness.step(1.0)
    await csms.wait_for(lambda: csms.count("StopTransaction") == 1)
    assert csms.payloads("StopTransaction")[0]["transactionId"] == tx_id
    assert harness.rows() == [(1, "TxDefaultProfile", None)]
    assert harness.claim().current_a == 20.0  # the default applies again
    assert "TxDefaultProfile 1" in harness.claim().reason


async def test_remote_start_with_a_tx_profile(harness: Harness) -> None:
    csms, app = harness.csms, harness.app
    harness.sim.plug()
    await harness.step(0.5)
    wrong = profile(5, "TxDefaultProfile", [(0, 10)], kind="Relative")
    rejected = await harness.call(call.RemoteStartTransaction(id_tag="APP1", connector_id=1, charging_profile=wrong))
    assert rejected.status == "Rejected"
    named = profile(5, "TxProfile", [(0, 10)], kind="Relative", tx=3)
    rejected = await harness.call(call.RemoteStartTransaction(id_tag="APP1", connector_id=1, charging_profile=named))
    assert rejected.status == "Rejected"
    assert harness.rows() == []

    tx_profile = profile(5, "TxProfile", [(0, 10), (30, 16)], kind="Relative")
    accepted = await harness.call(
        call.RemoteStartTransaction(id_tag="APP1", connector_id=1, charging_profile=tx_profile)
    )
    assert accepted.status == "Accepted"
    await harness.step(3.0, dt=0.1)
    await csms.wait_for(lambda: csms.count("StartTransaction") == 1)
    assert app.controller.connector.status is Status.CHARGING
    ref = app.sessions.current.transaction_ref
    assert harness.rows() == [(5, "TxProfile", ref)]
    assert harness.claim().current_a == 10.0
    await harness.step(4.0)
    assert harness.sim.ev.draw_a == pytest.approx(10.0)
    # Relative: 30 s after the transaction started the second period begins.
    await harness.step(30.0, dt=0.1)
    assert harness.claim().current_a == 16.0 and harness.sim.ev.draw_a == pytest.approx(16.0)


async def test_limits_above_the_configured_maximum_never_raise_the_current(harness: Harness) -> None:
    start = harness.clock.now()
    assert await harness.set_profile(0, profile(1, "TxDefaultProfile", [(0, 63)], start=start)) == "Accepted"
    await harness.charge()
    assert harness.claim().current_a == 63.0
    decision = harness.app.arbiter.decide(harness.clock.monotonic())
    assert decision.current_a == 32.0 and decision.winner.source != CLAIM
    assert harness.app.controller.offered_a == 32.0 and harness.sim.ev.draw_a == pytest.approx(32.0)
    composite = await harness.call(call.GetCompositeSchedule(connector_id=1, duration=300))
    assert composite.charging_schedule["charging_schedule_period"] == [{"start_period": 0, "limit": 32.0}]


async def test_watt_profile_converts_with_voltage_and_phases(harness: Harness) -> None:
    start = harness.clock.now()
    watts = profile(1, "TxDefaultProfile", [(0, 6900), (600, 4600, 1)], start=start, unit="W")
    assert await harness.set_profile(0, watts) == "Accepted"
    claim = harness.claim()
    assert claim.current_a == 10.0  # 6900 W / 230 V / 3 phases (no EV yet: the wired phases)
    assert claim.reason == "TxDefaultProfile 1 stack 0 period 1: 6900 W = 10 A per phase at 230 V x 3"
    await harness.charge()
    assert harness.sim.ev.draw_a == pytest.approx(10.0)
    await harness.step(600.0, dt=1.0)
    # numberPhases 1, but the EV draws on 3 phases and cannot be switched: the power limit holds.
    assert harness.claim().current_a == pytest.approx(6.6)
    assert harness.claim().phases == 1 and "4600 W = 6.6 A per phase at 230 V x 3" in harness.claim().reason
    composite = await harness.call(call.GetCompositeSchedule(connector_id=1, duration=60, charging_rate_unit="W"))
    assert composite.charging_schedule["charging_schedule_period"] == [
        {"start_period": 0, "limit": 4600.0, "number_phases": 1}
    ]


async def test_profiles_survive_a_restart_and_a_cut_transaction_drops_its_tx_profile(
    central_system: TestCentralSystem,
) -> None:
    work = Path(tempfile.mkdtemp(prefix="evse-sc-", dir="/tmp"))
    first = Harness(central_system, work)
    await first.start()
    start = first.clock.now()
    try:
        cp_max = profile(7, "ChargePointMaxProfile", [(0, 24)], start=start)
        assert await first.set_profile(0, cp_max) == "Accepted"
        daily = profile(
            8, "TxDefaultProfile", [(0, 18)], stack=2, kind="Recurring", recurrencyKind="Daily", start=start
        )
        assert await first.set_profile(1, daily) == "Accepted"
        tx_id = await first.charge()
        assert await first.set_profile(1, profile(9, "TxProfile", [(0, 12)], start=start, tx=tx_id)) == "Accepted"
        assert [r[0] for r in first.rows()] == [7, 8, 9]
    finally:
        await first.close()  # like a power cut: the transaction is still open on disk

    second = Harness(central_system, work)
    await second.start()
    try:
        await central_system.wait_for(lambda: central_system.count("StopTransaction") == 1)
        assert central_system.payloads("StopTransaction")[0]["reason"] == "PowerLoss"
        assert second.rows() == [(7, "ChargePointMaxProfile", None), (8, "TxDefaultProfile", None)]
        assert second.claim().current_a == 18.0 and second.claim().reason.startswith("TxDefaultProfile 8 stack 2")
        composite = await second.call(call.GetCompositeSchedule(connector_id=0, duration=60))
        assert composite.charging_schedule["charging_schedule_period"] == [{"start_period": 0, "limit": 24.0}]
        stored = json.loads(second.rows("SELECT profile FROM charging_profiles WHERE profile_id = 8")[0][0])
        assert stored["recurrencyKind"] == "Daily" and stored["chargingSchedule"]["chargingSchedulePeriod"] == [
            {"startPeriod": 0, "limit": 18.0}
        ]
    finally:
        await second.close()


# ---- validation and housekeeping on the wire -----------------------------------------------------------------------
async def test_set_profile_rules(harness: Harness) -> None:
    start = harness.clock.now()
    ok = profile(1, "TxDefaultProfile", [(0, 16)], start=start)
    cases = [
        (1, profile(2, "ChargePointMaxProfile", [(0, 16)], start=start)),  # ChargePointMax only on connector 0
        (2, ok),  # no connector 2
        (0, profile(2, "TxDefaultProfile", [(0, 16)], stack=9, start=start)),  # above ChargeProfileMaxStackLevel 8
        (0, profile(2, "TxDefaultProfile", [(i * 60, 16) for i in range(97)], start=start)),  # > 96 periods
        (0, profile(2, "TxDefaultProfile", [(5, 16)], start=start)),  # first period must start at 0
        (0, profile(2, "TxDefaultProfile", [(0, 16), (0, 8)], start=start)),  # periods must increase
        (0, profile(2, "TxDefaultProfile", [(0, -1)], start=start)),  # negative limit
        (0, profile(2, "TxDefaultProfile", [(0, 16, 4)], start=start)),  # numberPhases 1..3
        (0, profile(2, "TxDefaultProfile", [(0, 16)])),  # Absolute needs startSchedule
        (0, profile(2, "TxDefaultProfile", [(0, 16)], kind="Recurring", start=start)),  # needs recurrencyKind
        (0, profile(2, "TxDefaultProfile", [(0, 16)], start=start, validTo=iso(start))),  # already expired
        (0, profile(2, "TxDefaultProfile", [(0, 16)], start=start, validFrom="tomorrow")),
        (0, profile(2, "TxDefaultProfile", [(0, 16)], start=start, tx=1)),  # transactionId only on a TxProfile
    ]
    for connector, data in cases:
        assert await harness.set_profile(connector, data) == "Rejected", data
    assert harness.rows() == []
    assert await harness.set_profile(0, {**ok, "stackLevel": 3}) == "Accepted"
    assert await harness.set_profile(0, ok) == "Accepted"  # the same id replaces
    assert harness.rows("SELECT profile_id, stack_level FROM charging_profiles") == [(1, 0)]
    # Connector 0: stack levels 0..8 (ids 1..9); connector 1: stack levels 0..6 (ids 10..16).
    for pid in range(2, 17):
        connector, stack = (0, pid - 1) if pid <= 9 else (1, pid - 10)
        data = profile(pid, "TxDefaultProfile", [(0, 16)], stack=stack, start=start)
        assert await harness.set_profile(connector, data) == "Accepted", pid
    assert len(harness.rows()) == 16
    extra = profile(17, "TxDefaultProfile", [(0, 16)], stack=7, start=start)
    assert await harness.set_profile(1, extra) == "Rejected"  # MaxChargingProfilesInstalled 16
    assert await harness.set_profile(0, profile(18, "ChargePointMaxProfile", [(0, 30)], start=start)) == "Rejected"
    assert await harness.set_profile(1, {**extra, "stackLevel": 6}) == "Accepted"  # replaces id 16: room enough
    assert harness.rows("SELECT COUNT(*), MAX(profile_id) FROM charging_profiles") == [(16, 17)]


async def test_malformed_requests_get_callerrors_and_the_charger_carries_on(harness: Harness) -> None:
    csms = harness.csms
    bad = {
        "sc-1": ["SetChargingProfile", {"connectorId": 0, "csChargingProfiles": {"chargingProfileId": 1}}],
        "sc-2": ["SetChargingProfile", {"connectorId": 0, "csChargingProfiles": {**profile(1, "Nope", [(0, 1)])}}],
        "sc-3": ["SetChargingProfile", {"connectorId": "0", "csChargingProfiles": profile(1, "TxProfile", [(0, 1)])}],
        "sc-4": ["GetCompositeSchedule", {"connectorId": 1}],
        "sc-5": ["ClearChargingProfile", {"stackLevel": "high"}],
    }
    for unique_id, (action, payload) in bad.items():
        await csms.send_raw(CP, json.dumps([2, unique_id, action, payload]))
    answers = await csms.wait_for(
        lambda: (
            found
            if len(found := [json.loads(f[2]) for f in csms.frames if f[1] == "in" and '"sc-' in f[2]]) == len(bad)
            else None
        )
    )
    codes = {a[1]: (a[0], a[2]) for a in answers}
    assert codes == {
        "sc-1": (4, "ProtocolError"),
        "sc-2": (4, "FormationViolation"),
        "sc-3": (4, "TypeConstraintViolation"),
        "sc-4": (4, "ProtocolError"),
        "sc-5": (4, "TypeConstraintViolation"),
    }
    assert (await harness.call(call.GetCompositeSchedule(connector_id=2, duration=60))).status == "Rejected"
    assert (await harness.call(call.GetCompositeSchedule(connector_id=1, duration=0))).status == "Rejected"
    assert harness.app.ocpp.service.online


async def test_clear_by_criteria(harness: Harness) -> None:
    start = harness.clock.now()
    for pid, connector, purpose, stack in [
        (1, 0, "ChargePointMaxProfile", 0),
        (2, 0, "TxDefaultProfile", 0),
        (3, 0, "TxDefaultProfile", 1),
        (4, 1, "TxDefaultProfile", 1),
    ]:
        data = profile(pid, purpose, [(0, 20 - pid)], stack=stack, start=start)
        assert await harness.set_profile(connector, data) == "Accepted"
    assert harness.claim().current_a == 16.0  # connector 1's own TxDefault (4) beats connector 0's
    clear = harness.call
    assert (await clear(call.ClearChargingProfile(connector_id=1, charging_profile_purpose="TxProfile"))).status == (
        "Unknown"
    )
    assert (await clear(call.ClearChargingProfile(connector_id=1))).status == "Accepted"
    assert [r[0] for r in harness.rows()] == [1, 2, 3]
    assert harness.claim().current_a == 17.0  # stack 1 on connector 0
    by_stack = call.ClearChargingProfile(stack_level=1, charging_profile_purpose="TxDefaultProfile")
    assert (await clear(by_stack)).status == "Accepted"
    assert [r[0] for r in harness.rows()] == [1, 2]
    assert (await clear(call.ClearChargingProfile())).status == "Accepted"
    assert harness.rows() == [] and harness.claim() is None
    assert (await clear(call.ClearChargingProfile())).status == "Unknown"


async def test_offline_the_profiles_keep_working(harness: Harness) -> None:
    csms = harness.csms
    start = harness.clock.now()
    periods = [(0, 20), (120, 12)]
    assert await harness.set_profile(0, profile(1, "TxDefaultProfile", periods, start=start)) == "Accepted"
    await csms.stop()
    await harness.step(0.5)
    assert not harness.app.ocpp.service.online
    await harness.step(120.0, dt=0.5)
    assert harness.claim().current_a == 12.0 and "period 2" in harness.claim().reason


async def test_with_the_strict_csms_every_reply_is_schema_valid(strict_csms: StrictCentralSystem) -> None:
    csms = strict_csms
    h = OcppHarness(csms, "CP-SC-STRICT", response_timeout_s=5.0, serve_api=False)
    await h.start()
    try:

        async def ask(action: str, payload: dict[str, Any]) -> Any:
            return await csms.call("CP-SC-STRICT", action, payload, timeout=10.0)

        start = h.clock.now()
        watts = profile(1, "TxDefaultProfile", [(0, 7000), (60, 3333.3, 1)], start=start, unit="W", duration=300)
        assert (await ask("SetChargingProfile", {"connectorId": 0, "csChargingProfiles": watts}))["status"] == (
            "Accepted"
        )
        cp_max = profile(2, "ChargePointMaxProfile", [(0, 25.5)], start=start)
        assert (await ask("SetChargingProfile", {"connectorId": 0, "csChargingProfiles": cp_max}))["status"] == (
            "Accepted"
        )
        tx = profile(3, "TxProfile", [(0, 10)], start=start)
        assert (await ask("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": tx}))["status"] == "Rejected"
        for unit in ("A", "W"):
            got = await ask("GetCompositeSchedule", {"connectorId": 1, "duration": 600, "chargingRateUnit": unit})
            assert got["status"] == "Accepted" and got["chargingSchedule"]["chargingRateUnit"] == unit
        got = await ask("GetCompositeSchedule", {"connectorId": 1, "duration": 600})
        limits = [p["limit"] for p in got["chargingSchedule"]["chargingSchedulePeriod"]]
        # 7000 W / (230 V x 3), 3333.3 W / 230 V on one phase (no EV yet), then the ChargePointMax profile.
        assert limits == [10.1, 14.4, 25.5]
        assert (await ask("GetCompositeSchedule", {"connectorId": 3, "duration": 60}))["status"] == "Rejected"
        h.sim.plug()
        await h.advance(0.5)
        remote = {
            "idTag": "APP1",
            "connectorId": 1,
            "chargingProfile": profile(4, "TxProfile", [(0, 8)], kind="Relative"),
        }
        assert (await ask("RemoteStartTransaction", remote))["status"] == "Accepted"
        await h.advance(3.0)
        await csms.wait_for(lambda: csms.count("StartTransaction") == 1)
        assert h.app.arbiter.get(CLAIM).current_a == 8.0
        assert (await ask("ClearChargingProfile", {"id": 4}))["status"] == "Accepted"
        assert (await ask("ClearChargingProfile", {"chargingProfilePurpose": "TxProfile"}))["status"] == "Unknown"
        assert (await ask("ClearChargingProfile", {}))["status"] == "Accepted"
        configuration = await ask(
            "GetConfiguration", {"key": ["SupportedFeatureProfiles", "ChargingScheduleMaxPeriods"]}
        )
        values = {k["key"]: k["value"] for k in configuration["configurationKey"]}
        assert "SmartCharging" in values["SupportedFeatureProfiles"].split(",")
        assert values["ChargingScheduleMaxPeriods"] == "96"
        await asyncio.sleep(0.2)
    finally:
        await h.close()
    sent = [f for f in csms.frames if f["dir"] == "in" and f["client"] == "CP-SC-STRICT"]
    assert [f for f in sent if isinstance(f["frame"], list) and f["frame"][0] == 4] == []
    assert [v for v in csms.violations if v["client"] == "CP-SC-STRICT"] == []


# ---- the service on its own (no CSMS link): properties, conversions, the timer --------------------------------------
def offline_app(work: Path, clock: Any) -> ChargePointApp:
    """A charge point built but not run: its smart charging works on the store and the arbiter alone."""
    return ChargePointApp(settings_for("ws://127.0.0.1:9/ocpp", work, "CP-UNIT"), clock=clock)


def reading(volts: tuple[float | None, ...], amps: tuple[float | None, ...]) -> MeterReading:
    return MeterReading(volts, amps, (None, None, None), 0.0, 0.0)  # type: ignore[arg-type]


def test_electrical_uses_the_measured_voltage_of_the_phases_in_use() -> None:
    e = electrical(reading((240.0, 250.0, 230.0), (16.0, 16.0, 0.0)), 230.0, 3)
    assert (e.voltage_v, e.phases_in_use) == (245.0, 2)
    assert e.to_amps(11760, "W", None) == pytest.approx(24.0)  # 11760 W / 245 V / 2 phases in use
    assert e.to_amps(11760, "W", 3) == pytest.approx(16.0)
    assert e.to_amps(11760, "W", 1) == pytest.approx(24.0)  # the EV uses 2: the power limit holds
    assert e.to_amps(16, "A", 1) == 16.0 and e.to_watts(16.0, 3) == pytest.approx(11760.0)
    idle = electrical(reading((240.0, 0.0, 1e9), (0.0, 0.0, None)), 230.0, 3)
    assert (idle.voltage_v, idle.phases_in_use) == (240.0, None)  # implausible voltages ignored
    assert idle.to_amps(7200, "W", None) == pytest.approx(10.0)  # the wired phases
    assert electrical(None, 230.0, 1).to_amps(2300, "W", 3) == pytest.approx(10.0)  # never more than wired
    assert electrical(reading((None, None, None), (None, None, None)), 220.0, 3).voltage_v == 220.0


async def test_on_a_real_clock_the_claim_changes_at_the_boundary_without_any_poke(tmp_path: Path) -> None:
    app = offline_app(tmp_path, SystemClock())
    smart = app.ocpp.service.smart_charging
    try:
        begin = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
        while (boundary := begin + timedelta(seconds=2)) - datetime.now(UTC) < timedelta(seconds=0.3):
            begin += timedelta(seconds=1)  # leave at least 0.3 s before the boundary
        assert smart.set_profile(0, profile(1, "TxDefaultProfile", [(0, 16), (2, 10)], start=begin)) == "Accepted"
        assert app.arbiter.get(CLAIM).current_a == 16.0
        task = asyncio.create_task(smart.run())
        try:
            while app.arbiter.get(CLAIM).current_a != 10.0:
                assert datetime.now(UTC) - boundary < timedelta(seconds=1), "the claim did not change"
                await asyncio.sleep(0.001)
            latency = (datetime.now(UTC) - boundary).total_seconds()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        print(f"real clock: claim changed {latency * 1000:.1f} ms after the period boundary")
        assert 0 <= latency < 0.25
    finally:
        app.ocpp.store.close()


_GCS = get_validator(MessageType.CallResult, "GetCompositeSchedule", "1.6", parse_float=Decimal)


def check_composite(answer: dict[str, Any], duration: int, unit: str) -> list[dict[str, Any]]:
    """Schema-valid (as the ocpp package validates it), ordered, merged, never above the charger's maximum."""
    wire = snake_to_camel_case({"status": "Accepted", **answer})
    _GCS.validate(json.loads(json.dumps(wire), parse_float=Decimal))
    periods: list[dict[str, Any]] = wire["chargingSchedule"]["chargingSchedulePeriod"]
    assert periods and periods[0]["startPeriod"] == 0
    starts = [p["startPeriod"] for p in periods]
    assert starts == sorted(set(starts)) and starts[-1] < duration
    cap = 32.0 if unit == "A" else 32.0 * 230.0 * 3
    assert all(0 <= p["limit"] <= cap for p in periods)
    pairs = [(p["limit"], p.get("numberPhases")) for p in periods]
    assert all(a != b for a, b in itertools.pairwise(pairs))
    return periods


_T0 = datetime(2026, 1, 1, tzinfo=UTC)
_limits = st.integers(0, 800).map(lambda n: n / 10)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**33), 2**33) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def wire_profiles(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly plausible SetChargingProfile payloads, some broken in one place (they come from outside)."""
    unit = draw(st.sampled_from(["A", "W"]))
    n = draw(st.integers(1, 100))
    starts = sorted(draw(st.sets(st.integers(1, 86_400), min_size=n - 1, max_size=n - 1)))
    scale = 1.0 if unit == "A" else 690.0
    periods: list[Any] = [
        (s, round(draw(_limits) * scale, 1), *draw(st.sampled_from([(), (1,), (3,)]))) for s in [0, *starts]
    ]
    kind = draw(st.sampled_from(["Absolute", "Recurring", "Relative"]))
    extra: dict[str, Any] = {}
    if kind == "Recurring":
        extra["recurrencyKind"] = draw(st.sampled_from(["Daily", "Weekly"]))
    data = profile(
        draw(st.integers(1, 40)),
        draw(st.sampled_from(["ChargePointMaxProfile", "TxDefaultProfile", "TxProfile"])),
        periods,
        stack=draw(st.integers(0, 10)),
        kind=kind,
        start=None if kind == "Relative" else _T0 + timedelta(hours=draw(st.integers(-48, 48))),
        unit=unit,
        duration=draw(st.none() | st.integers(1, 3 * 86_400)),
        **extra,
    )
    broken = draw(st.integers(0, 5))
    if broken == 0:
        data[draw(st.sampled_from(sorted(data)))] = draw(_json)
    elif broken == 1:
        data["chargingSchedule"][draw(st.sampled_from(sorted(data["chargingSchedule"])))] = draw(_json)
    elif broken == 2:
        data["validTo"] = draw(st.sampled_from([iso(_T0 - timedelta(hours=1)), iso(_T0 + timedelta(hours=1)), "x"]))
    return data


def test_set_clear_and_composite_properties(tmp_path: Path) -> None:
    clock = FakeClock(_T0)
    app = offline_app(tmp_path, clock)
    smart = app.ocpp.service.smart_charging
    db = tmp_path / "evse.db"

    def stored() -> set[int]:
        with sqlite3.connect(db) as conn:
            return {row[0] for row in conn.execute("SELECT profile_id FROM charging_profiles")}

    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        batch=st.lists(st.tuples(st.sampled_from([0, 0, 1, 2, -1]), wire_profiles()), min_size=1, max_size=6),
        clear=st.none()
        | st.tuples(
            st.none() | st.integers(1, 40),
            st.sampled_from([None, 0, 1]),
            st.sampled_from([None, "TxDefaultProfile", "ChargePointMaxProfile"]),
            st.none() | st.integers(0, 10),
        ),
        ask=st.tuples(st.sampled_from([0, 1, 2]), st.integers(-5, 4 * 86_400), st.sampled_from([None, "A", "W"])),
    )
    def check(
        batch: list[tuple[int, dict[str, Any]]],
        clear: tuple[int | None, int | None, str | None, int | None] | None,
        ask: tuple[int, int, str | None],
    ) -> None:
        for connector, data in batch:
            held = smart.remote_start_profile(data, connector)  # the same parser, RemoteStartTransaction rules
            assert held is None or (held.purpose == "TxProfile" and held.transaction_id is None)
            before = {i.profile.profile_id: i for i in smart.profiles.all()}
            status = smart.set_profile(connector, data)
            event(f"SetChargingProfile {status}")
            after = {i.profile.profile_id: i for i in smart.profiles.all()}
            assert status in ("Accepted", "Rejected")
            if status == "Rejected":
                assert after == before
            else:
                new = after[data["chargingProfileId"]].profile
                assert new.purpose != "TxProfile"  # no transaction runs here
                assert new.stack_level <= 8 and len(new.schedule.periods) <= 96 and connector in (0, 1)
                same_slot = (new.purpose, new.stack_level, connector)
                twins = [i.profile for i in after.values() if i.profile != new]
                assert all((p.purpose, p.stack_level, p.connector_id) != same_slot for p in twins)  # replaced
            assert len(after) <= 16 and stored() == set(after)
        if clear is not None:
            before_ids = set(stored())
            status = smart.clear_profiles(*clear)
            event(f"ClearChargingProfile {status}")
            assert status == ("Accepted" if stored() != before_ids else "Unknown")
            pid, connector, purpose, stack = clear
            for item in smart.profiles.all():
                p = item.profile
                if pid is not None:
                    assert p.profile_id != pid
                else:
                    assert not (
                        (connector is None or p.connector_id == connector)
                        and (purpose is None or p.purpose == purpose)
                        and (stack is None or p.stack_level == stack)
                    )
        connector, duration, unit = ask
        answer = asyncio.run(smart.composite(connector, duration, unit))
        if connector == 2 or duration < 1:
            assert answer is None
            return
        assert answer is not None
        covered = min(duration, MAX_COMPOSITE_S)
        assert answer["charging_schedule"]["duration"] == covered
        periods = check_composite(answer, covered, unit or "A")
        if connector == 1 and (unit or "A") == "A":
            claim = app.arbiter.get(CLAIM)
            assert periods[0]["limit"] == (32.0 if claim is None else min(claim.current_a, 32.0))

    try:
        check()
    finally:
        app.ocpp.store.close()


def test_composite_at_the_configured_limits_stays_fast(tmp_path: Path) -> None:
    """16 profiles x 96 periods (W and A, daily recurring), GetCompositeSchedule over the full 2 days."""
    app = offline_app(tmp_path, FakeClock(_T0))
    smart = app.ocpp.service.smart_charging
    try:
        for pid in range(1, 17):
            purpose, stack = ("ChargePointMaxProfile", pid - 1) if pid <= 9 else ("TxDefaultProfile", pid - 10)
            unit = "W" if pid % 2 else "A"
            scale = 690.0 if unit == "W" else 1.0
            periods: list[Any] = [(i * 900 + (pid if i else 0), (6 + (i * 7 + pid) % 26) * scale) for i in range(96)]
            data = profile(pid, purpose, periods, stack=stack, kind="Recurring", start=_T0, unit=unit,
                           recurrencyKind="Daily")  # fmt: skip
            assert smart.set_profile(0, data) == "Accepted", pid
        assert smart.set_profile(0, profile(17, "TxDefaultProfile", [(0, 6)], stack=7, start=_T0)) == "Rejected"
        began = time.perf_counter()
        answer = asyncio.run(smart.composite(1, 10 * 86_400, "W"))
        elapsed = time.perf_counter() - began
        assert answer is not None
        periods = check_composite(answer, MAX_COMPOSITE_S, "W")
        print(f"worst-case GetCompositeSchedule (16 x 96 periods, 2 days): {elapsed:.2f} s, {len(periods)} periods")
        assert len(periods) > 96 and elapsed < 5.0
    finally:
        app.ocpp.store.close()
