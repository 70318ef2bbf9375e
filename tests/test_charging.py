"""The IEC 61851 state machine through the real control loop on simulated hardware, fake clock.

Every test asserts what the hardware sees: the contactor command, the pilot output (duty or a
constant level) and the connector status the CSMS would be told.
"""

from __future__ import annotations

import pytest
from rig import Rig

from firmware.charging.connector import Status, StatusChanged, StopReason
from hal.interfaces import PilotConstant
from hal.sim import EVParams

PLUS = PilotConstant.PLUS_12V
MINUS = PilotConstant.MINUS_12V


async def test_idle_is_available_with_plus_12v_and_open_contactor() -> None:
    rig = Rig()
    await rig.run(1.0)
    assert rig.status is Status.AVAILABLE
    assert rig.pilot_constant is PLUS
    assert not rig.contactor_closed


async def test_a_to_b_is_preparing_without_pwm_until_authorized() -> None:
    rig = Rig()
    rig.bench.plug()
    await rig.run(5.0)
    assert rig.status is Status.PREPARING
    assert rig.pilot_constant is PLUS  # B1: no PWM without authorization
    assert not rig.contactor_closed


async def test_whole_session_b_c_charging_then_unplug() -> None:
    rig = Rig()
    rig.bench.plug()
    await rig.run(0.5)
    rig.ctl.connector.authorize("CARD1")
    await rig.step()
    assert rig.status is Status.SUSPENDED_EV
    assert rig.duty == pytest.approx(32 / 0.6)
    assert not rig.contactor_closed

    # The EV asks for energy (B->C) after its own delay; the contactor must close within 3 s of C.
    await rig.until(lambda: rig.bench.ev.state == "C", 5.0)
    took = await rig.until(lambda: rig.contactor_closed, 3.0)
    assert took < 3.0
    assert rig.status is Status.CHARGING
    await rig.run(10.0)
    assert rig.bench.ev.draw_a == pytest.approx(32.0, abs=0.1)

    # Unplug while charging (C->A): contactor open in the very step that sees it.
    rig.bench.unplug()
    await rig.step()
    assert not rig.contactor_closed
    assert rig.status is Status.AVAILABLE
    assert rig.pilot_constant is PLUS
    assert [s.reason for s in rig.stops()] == [StopReason.EV_DISCONNECTED]


async def test_c_to_b_opens_at_once_and_b_to_c_closes_again() -> None:
    rig = Rig()
    await rig.charging()
    rig.bench.ev_request(False)
    await rig.step()
    assert not rig.contactor_closed
    assert rig.status is Status.SUSPENDED_EV
    assert rig.duty == pytest.approx(32 / 0.6)  # the offer stands; the EV just paused
    rig.bench.ev_request(True)
    took = await rig.until(lambda: rig.contactor_closed, 3.0)
    assert took < 3.0
    assert rig.status is Status.CHARGING


async def test_b_to_a_while_suspended_ends_the_session() -> None:
    rig = Rig()
    rig.bench.plug()
    rig.bench.ev_request(False)
    rig.ctl.connector.authorize("CARD1")
    await rig.run(2.0)
    assert rig.status is Status.SUSPENDED_EV
    rig.bench.unplug()
    await rig.step()
    assert rig.status is Status.AVAILABLE
    assert rig.pilot_constant is PLUS
    assert [s.reason for s in rig.stops()] == [StopReason.EV_DISCONNECTED]


async def test_state_d_charges_only_where_ventilation_is_allowed() -> None:
    rig = Rig(ventilation_allowed=True)
    rig.bench.set_ev_ventilation(True)
    await rig.charging()
    assert rig.bench.ev.state == "D"
    assert rig.status is Status.CHARGING

    rig = Rig(ventilation_allowed=False)
    rig.bench.set_ev_ventilation(True)
    rig.bench.plug()
    rig.ctl.connector.authorize("CARD1")
    await rig.until(lambda: rig.bench.ev.state == "D", 5.0)
    await rig.step()
    assert rig.status is Status.SUSPENDED_EVSE
    assert not rig.contactor_closed
    assert rig.pilot_constant is PLUS  # the offer is withdrawn
    await rig.run(10.0)
    assert not rig.contactor_closed


async def test_d_to_c_and_back_while_charging() -> None:
    rig = Rig(ventilation_allowed=True)
    await rig.charging()
    rig.bench.set_ev_ventilation(True)
    await rig.run(0.5)
    assert rig.bench.ev.state == "D"
    assert rig.contactor_closed and rig.status is Status.CHARGING
    rig.bench.set_ev_ventilation(False)
    await rig.run(0.5)
    assert rig.bench.ev.state == "C"
    assert rig.contactor_closed and rig.status is Status.CHARGING


async def test_state_e_cp_short_while_charging() -> None:
    rig = Rig()
    await rig.charging()
    rig.bench.inject("cp-short")
    await rig.step()
    assert not rig.contactor_closed
    assert rig.status is Status.FAULTED
    assert rig.pilot_constant is MINUS
    assert "cp-short" in rig.ctl.faults
    assert [s.reason for s in rig.stops()] == [StopReason.OTHER]
    # While the short stays, the connector stays Faulted; once removed it recovers.
    await rig.run(2.0)
    assert rig.status is Status.FAULTED and not rig.contactor_closed
    rig.bench.clear("cp-short")
    await rig.run(1.0)
    assert rig.status is Status.PREPARING
    assert rig.pilot_constant is PLUS
    assert not rig.contactor_closed


async def test_state_f_is_held_at_least_300_ms_after_a_fault() -> None:
    rig = Rig()
    await rig.charging()
    rig.bench.inject("rcd")
    await rig.step()
    assert not rig.contactor_closed and rig.pilot_constant is MINUS
    t_fault = rig.clock.monotonic()
    rig.clock.advance(0.05)
    rig.bench.clear("rcd")
    held = 0.0
    while rig.pilot_constant is MINUS:
        held = rig.clock.monotonic() - t_fault
        rig.clock.advance(0.01)
        await rig.step()
        assert held < 2.0
    assert held >= 0.3 - 1e-9
    await rig.step()  # the first reading on the released (+12 V) pilot
    assert rig.status is Status.PREPARING


async def test_rcd_keeps_f_while_tripped() -> None:
    rig = Rig()
    rig.bench.inject("rcd")
    await rig.run(3.0)
    assert rig.status is Status.FAULTED
    assert rig.pilot_constant is MINUS


async def test_fault_while_charging_overtemp() -> None:
    rig = Rig()
    await rig.charging()
    rig.bench.inject("overtemp")
    await rig.step()
    assert not rig.contactor_closed
    assert rig.status is Status.FAULTED
    assert rig.pilot_constant is MINUS
    rig.bench.clear("overtemp")
    await rig.run(1.0)
    # The session ended with the fault: the driver must authorize again.
    assert rig.status is Status.PREPARING
    assert not rig.contactor_closed
    assert rig.pilot_constant is PLUS


async def test_ev_full_goes_c_to_b_and_opens() -> None:
    rig = Rig(ev=EVParams(soc_percent=99.9, battery_kwh=10.0))
    await rig.charging()
    await rig.until(lambda: rig.bench.ev.state == "B", 600.0, dt=0.5)
    await rig.step()
    assert not rig.contactor_closed
    assert rig.status is Status.SUSPENDED_EV
    assert rig.bench.ev.soc_percent >= 99.9


async def test_ev_full_command() -> None:
    rig = Rig()
    await rig.charging()
    rig.bench.ev_full()
    await rig.step()
    assert not rig.contactor_closed
    assert rig.status is Status.SUSPENDED_EV


async def test_weld_detected_when_opening() -> None:
    rig = Rig()
    await rig.charging()
    rig.bench.inject("weld")
    rig.bench.ev_request(False)  # the EV stops: we open, the mirror contact says still closed
    await rig.step()
    assert not rig.contactor_closed
    await rig.run(0.4)
    assert rig.status is Status.SUSPENDED_EV
    await rig.run(0.2)
    assert rig.status is Status.FAULTED
    assert "weld" in rig.ctl.faults
    assert rig.pilot_constant is MINUS
    assert not rig.contactor_closed
    await rig.run(5.0)
    assert rig.status is Status.FAULTED and rig.pilot_constant is MINUS
    rig.bench.clear("weld")
    await rig.run(1.0)
    assert rig.status is Status.PREPARING


async def test_weld_detected_while_idle() -> None:
    rig = Rig()
    rig.bench.inject("weld")
    await rig.run(1.0)
    assert rig.status is Status.FAULTED
    assert not rig.contactor_closed


async def test_stuck_open_detected_and_latched_until_unplug() -> None:
    rig = Rig()
    rig.bench.inject("stuck-open")
    rig.bench.plug()
    rig.ctl.connector.authorize("CARD1")
    await rig.until(lambda: rig.contactor_closed, 5.0)
    await rig.run(0.6)
    assert rig.status is Status.FAULTED
    assert "stuck-open" in rig.ctl.faults
    assert not rig.contactor_closed
    rig.bench.clear("stuck-open")
    await rig.run(3.0)
    assert rig.status is Status.FAULTED  # latched: the EV must be unplugged first
    rig.bench.unplug()
    await rig.run(1.0)
    assert rig.status is Status.AVAILABLE
    assert rig.pilot_constant is PLUS


async def test_pp_caps_the_offered_current() -> None:
    rig = Rig(cable_a=13.0)
    await rig.charging()
    assert rig.duty == pytest.approx(13 / 0.6)
    assert rig.bench.ev.draw_a <= 13.0 + 1e-6
    limits = rig.arbiter.describe(rig.clock.monotonic())
    assert limits["winner"]["source"] == "cable"  # type: ignore[index]


async def test_pp_smaller_than_a_later_limit_still_wins() -> None:
    rig = Rig(cable_a=20.0)
    await rig.charging()
    rig.arbiter.submit("manual", 25.0, rig.clock.monotonic(), reason="test")
    await rig.run(6.0)
    assert rig.duty == pytest.approx(20 / 0.6)


async def test_tethered_cable_ignores_pp() -> None:
    rig = Rig(cable_a=None, max_current_a=16.0)
    await rig.charging()
    assert rig.duty == pytest.approx(16 / 0.6)


async def test_pp_broken_is_a_fault_and_never_closes() -> None:
    rig = Rig()
    rig.bench.inject("pp-broken")
    rig.bench.plug()
    rig.ctl.connector.authorize("CARD1")
    await rig.run(5.0)
    assert rig.status is Status.FAULTED
    assert "pp-broken" in rig.ctl.faults
    assert not rig.contactor_closed


async def test_diode_failure_never_closes() -> None:
    rig = Rig()
    rig.bench.inject("diode")
    rig.bench.plug()
    rig.ctl.connector.authorize("CARD1")
    closed_ever = False
    for _ in range(100):
        rig.clock.advance(0.05)
        await rig.step()
        closed_ever |= rig.contactor_closed
    assert not closed_ever
    assert rig.status is Status.FAULTED
    assert "diode" in rig.ctl.faults
    rig.bench.clear("diode")
    rig.bench.unplug()
    await rig.run(1.0)
    assert rig.status is Status.AVAILABLE


async def test_limit_below_6_a_pauses_and_resumes_after_5_s() -> None:
    rig = Rig()
    await rig.charging()
    rig.arbiter.submit("manual", 5.0, rig.clock.monotonic(), reason="test")
    await rig.step()
    assert not rig.contactor_closed
    assert rig.status is Status.SUSPENDED_EVSE
    assert rig.pilot_constant is PLUS  # never an illegal duty below 6 A
    paused_at = rig.clock.monotonic()
    rig.arbiter.submit("manual", 10.0, rig.clock.monotonic(), reason="test")
    await rig.until(lambda: rig.duty is not None, 10.0)
    assert rig.clock.monotonic() - paused_at >= 5.0 - 1e-9
    assert rig.duty == pytest.approx(10 / 0.6)
    await rig.until(lambda: rig.contactor_closed, 5.0)
    assert rig.status is Status.CHARGING


async def test_duty_drop_is_immediate_and_rise_waits_5_s() -> None:
    rig = Rig()
    await rig.charging()
    await rig.run(6.0)
    rig.arbiter.submit("manual", 16.0, rig.clock.monotonic(), reason="test")
    await rig.step()
    assert rig.duty == pytest.approx(16 / 0.6)  # safety drop: at once
    dropped_at = rig.clock.monotonic()
    rig.clock.advance(1.0)
    rig.arbiter.withdraw("manual")
    await rig.until(lambda: rig.duty != pytest.approx(16 / 0.6), 10.0, dt=0.1)
    assert rig.clock.monotonic() - dropped_at >= 5.0 - 1e-9
    assert rig.duty == pytest.approx(32 / 0.6)
    assert rig.contactor_closed


async def test_authorization_without_ev_expires() -> None:
    rig = Rig(connection_timeout_s=30.0)
    rig.ctl.connector.authorize("CARD1")
    await rig.step()
    assert rig.status is Status.PREPARING
    assert rig.pilot_constant is PLUS
    await rig.run(29.0, dt=0.5)
    assert rig.status is Status.PREPARING
    await rig.run(1.5, dt=0.5)
    assert rig.status is Status.AVAILABLE
    assert not rig.ctl.connector.authorized


async def test_card_first_then_plug_starts_session() -> None:
    rig = Rig()
    rig.ctl.connector.authorize("CARD1")
    await rig.run(3.0)
    rig.bench.plug()
    await rig.until(lambda: rig.contactor_closed, 5.0)
    assert rig.status is Status.CHARGING


async def test_local_stop_goes_finishing_then_available_on_unplug() -> None:
    rig = Rig()
    await rig.charging()
    rig.ctl.connector.request_stop(StopReason.LOCAL, "card presented again")
    await rig.step()
    assert not rig.contactor_closed
    assert rig.status is Status.FINISHING
    assert rig.pilot_constant is PLUS
    await rig.run(3.0)
    assert rig.status is Status.FINISHING
    rig.bench.unplug()
    await rig.step()
    assert rig.status is Status.AVAILABLE
    assert [s.reason for s in rig.stops()] == [StopReason.LOCAL]


async def test_unavailable_holds_f_and_refuses_authorization() -> None:
    rig = Rig()
    rig.ctl.connector.operative = False
    await rig.step()
    assert rig.status is Status.UNAVAILABLE
    assert rig.pilot_constant is MINUS
    rig.bench.plug()
    assert not rig.ctl.connector.authorize("CARD1")
    await rig.run(2.0)
    assert not rig.contactor_closed
    rig.ctl.connector.operative = True
    await rig.run(0.5)
    assert rig.status is Status.PREPARING


async def test_status_changes_are_events_with_reasons() -> None:
    rig = Rig()
    await rig.charging()
    rig.bench.unplug()
    await rig.step()
    changes = [(e.previous.value, e.status.value) for e in rig.events if isinstance(e, StatusChanged)]
    assert changes == [
        ("Available", "Preparing"),
        ("Preparing", "SuspendedEV"),
        ("SuspendedEV", "Charging"),
        ("Charging", "Available"),
    ]
    assert all(e.reason for e in rig.events if isinstance(e, StatusChanged))


async def test_meter_fault_reported_by_sampler_trips() -> None:
    rig = Rig()
    await rig.charging()
    rig.ctl.set_device_fault("meter", True)
    await rig.step()
    assert not rig.contactor_closed
    assert rig.status is Status.FAULTED


async def test_reader_fault_does_not_stop_charging() -> None:
    rig = Rig()
    await rig.charging()
    rig.ctl.set_device_fault("reader", True)
    await rig.run(1.0)
    assert rig.contactor_closed
    assert rig.status is Status.CHARGING
    assert "reader" in rig.ctl.faults


async def test_control_loop_crash_leaves_contactor_open_and_pilot_f() -> None:
    import asyncio

    rig = Rig()
    task = asyncio.create_task(rig.ctl.run())
    rig.bench.plug()
    rig.ctl.connector.authorize("CARD1")
    for _ in range(200):
        rig.clock.advance(0.05)
        rig.bench.tick()
        await asyncio.sleep(0.002)
        if rig.contactor_closed:
            break
    assert rig.contactor_closed and not task.done()

    def boom(inputs: object) -> None:
        raise RuntimeError("simulated bug")

    rig.ctl.connector.step = boom  # type: ignore[method-assign,assignment]
    rig.ctl.wake()
    with pytest.raises(RuntimeError, match="simulated bug"):
        await asyncio.wait_for(task, 5.0)
    assert not rig.contactor_closed
    assert rig.pilot_constant is MINUS


async def test_control_loop_cancelled_while_charging_leaves_contactor_open_and_pilot_f() -> None:
    """Shutdown (a cancel) while a session charges ends with the contactor open and the pilot at -12 V."""
    import asyncio

    rig = Rig()
    task = asyncio.create_task(rig.ctl.run())
    rig.bench.plug()
    rig.ctl.connector.authorize("CARD1")
    for _ in range(200):
        rig.clock.advance(0.05)
        rig.bench.tick()
        await asyncio.sleep(0.002)
        if rig.contactor_closed:
            break
    assert rig.contactor_closed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2.0)
    assert rig.pilot_constant is MINUS
    assert not rig.contactor_closed


async def drive_ev_to(rig: Rig, letter: str) -> None:
    """Put the simulated EV in ``letter`` the way a car does it (plug, S2 switch, ventilation)."""
    b = rig.bench
    if letter == "A":
        b.unplug()
    else:
        if not b.ev.plugged:
            b.plug()
        b.set_ev_ventilation(letter == "D")
        b.ev_request(letter in ("C", "D"))
    await rig.run(2.0)
    assert b.ev.state == letter


#: Pilot letter in an authorized session -> (connector status, contactor closed, PWM offered).
#: "A" first means authorized and waiting for the EV; "A" last means the EV left and the session ended.
EXPECTED = {
    "A-first": (Status.PREPARING, False, False),
    "A-last": (Status.AVAILABLE, False, False),
    "B": (Status.SUSPENDED_EV, False, True),
    "C": (Status.CHARGING, True, True),
    "D": (Status.CHARGING, True, True),
}


def assert_outputs(rig: Rig, key: str) -> None:
    status, closed, pwm = EXPECTED[key]
    assert rig.status is status, key
    assert rig.contactor_closed is closed, key
    if pwm:
        assert rig.duty == pytest.approx(32 / 0.6), key
    else:
        assert rig.pilot_constant is PLUS, key


@pytest.mark.parametrize(("start", "end"), [(s, e) for s in "ABCD" for e in "ABCD" if s != e])
async def test_every_pilot_transition_between_a_b_c_d(start: str, end: str) -> None:
    """Each pair X->Y in an authorized session (ventilation allowed): status, contactor and PWM at both ends."""
    rig = Rig(ventilation_allowed=True)
    rig.ctl.connector.authorize("CARD1")
    await drive_ev_to(rig, start)
    assert_outputs(rig, "A-first" if start == "A" else start)
    await drive_ev_to(rig, end)
    assert_outputs(rig, "A-last" if end == "A" else end)
