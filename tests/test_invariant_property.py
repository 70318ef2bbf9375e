"""Random event sequences against the real control loop: the safety invariant and the 5 s rule hold.

The checks use the simulation's ground truth (what the EV really does, which faults are really
injected, what the pilot really outputs), not the controller's own view of itself.
"""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rig import Rig

from firmware.charging.connector import Connector, StopReason
from hal.iec61851 import current_for_duty

#: Faults the controller must act on in the same step; weld and stuck-open are only knowable after
#: the mirror contact has disagreed for the feedback timeout.
IMMEDIATE_TRIPS = frozenset({"rcd", "overtemp", "cp-short", "diode", "pp-broken"})
KINDS = ["rcd", "weld", "stuck-open", "cp-short", "diode", "overtemp", "pp-broken"]

action = st.one_of(
    st.just(("plug",)),
    st.just(("unplug",)),
    st.just(("authorize",)),
    st.just(("stop",)),
    st.tuples(st.just("request"), st.booleans()),
    st.tuples(st.just("ventilation"), st.booleans()),
    st.just(("full",)),
    st.tuples(st.just("soc"), st.floats(0, 100)),
    st.tuples(st.just("fault"), st.sampled_from(KINDS)),
    st.tuples(st.just("clear"), st.sampled_from([*KINDS, None])),
    st.tuples(st.just("limit"), st.floats(0, 60)),
    st.just(("unlimit",)),
    st.tuples(st.just("operative"), st.booleans()),
    st.tuples(st.just("advance"), st.sampled_from([0.01, 0.05, 0.1, 0.3, 0.5, 1.0, 2.0, 4.9, 5.0, 7.0, 30.0])),
    st.tuples(st.just("jump"), st.sampled_from([-7200.0, -1.0, 3600.0, 86400.0])),
)

#: Time passing and limits moving are what most of a session is made of: drawn as often as the rest.
benign = st.one_of(
    st.tuples(st.just("advance"), st.sampled_from([0.05, 0.5, 1.0, 2.0, 5.0])),
    st.tuples(st.just("limit"), st.floats(0, 60)),
)


class Checker:
    def __init__(self, rig: Rig, ventilation_allowed: bool) -> None:
        self.rig = rig
        self.ventilation_allowed = ventilation_allowed
        self.offered = 0.0
        self.changed_at: float | None = None
        self.closed_steps = 0

    def offered_now(self) -> float:
        duty = self.rig.bench.pilot.duty
        return 0.0 if duty is None else (current_for_duty(duty) or 0.0)

    def check(self) -> None:
        rig, now = self.rig, self.rig.clock.monotonic()
        offered = self.offered_now()
        if rig.bench.contactor.commanded:
            self.closed_steps += 1
            ev = rig.bench.ev.state
            assert rig.ctl.connector.authorized, "closed without authorization"
            assert ev == "C" or (ev == "D" and self.ventilation_allowed), f"closed with the EV in {ev}"
            trips = IMMEDIATE_TRIPS if rig.bench.cable_a is not None else IMMEDIATE_TRIPS - {"pp-broken"}
            assert not (rig.bench.injected & trips), f"closed during {rig.bench.injected}"
            assert offered >= 6.0, f"closed while offering {offered} A"
        if abs(offered - self.offered) > 1e-6:
            if offered > self.offered and self.changed_at is not None:
                assert now - self.changed_at >= 5.0 - 1e-9, (
                    f"duty rose {self.offered:.1f}->{offered:.1f} A {now - self.changed_at:.2f} s after the last change"
                )
            self.offered, self.changed_at = offered, now


async def play(actions: list[tuple[object, ...]], ventilation_allowed: bool, cable: float | None) -> int:
    rig = Rig(ventilation_allowed=ventilation_allowed, cable_a=cable)
    checker = Checker(rig, ventilation_allowed)
    await rig.step()
    checker.check()
    for act in actions:
        name, *args = act
        b, c = rig.bench, rig.ctl.connector
        if name == "plug":
            b.plug()
        elif name == "unplug":
            b.unplug()
        elif name == "authorize":
            c.authorize("CARD1")
        elif name == "stop":
            c.request_stop(StopReason.LOCAL)
        elif name == "request":
            b.ev_request(bool(args[0]))
        elif name == "ventilation":
            b.set_ev_ventilation(bool(args[0]))
        elif name == "full":
            b.ev_full()
        elif name == "soc":
            b.set_ev_soc(float(args[0]))  # type: ignore[arg-type]
        elif name == "fault":
            b.inject(str(args[0]))
        elif name == "clear":
            b.clear(None if args[0] is None else str(args[0]))
        elif name == "limit":
            rig.arbiter.submit("manual", float(args[0]), rig.clock.monotonic(), reason="test")  # type: ignore[arg-type]
        elif name == "unlimit":
            rig.arbiter.withdraw("manual")
        elif name == "operative":
            c.operative = bool(args[0])
        elif name == "jump":
            rig.clock.jump(float(args[0]))  # type: ignore[arg-type]
        if name == "advance":
            remaining = float(args[0])  # type: ignore[arg-type]
            while remaining > 1e-9:
                dt = min(0.25, remaining)
                rig.clock.advance(dt)
                remaining -= dt
                await rig.step()
                checker.check()
        else:
            await rig.step()
            checker.check()
    return checker.closed_steps


CLOSED_STEPS: list[int] = []


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start_charging=st.booleans(),
    actions=st.lists(st.one_of(action, benign), min_size=1, max_size=40),
    ventilation_allowed=st.booleans(),
    cable=st.sampled_from([13.0, 32.0, None]),
)
def test_contactor_invariant_and_duty_rule_hold_for_random_sequences(
    start_charging: bool, actions: list[tuple[object, ...]], ventilation_allowed: bool, cable: float | None
) -> None:
    prefix: list[tuple[object, ...]] = [("plug",), ("authorize",), ("advance", 2.0)] if start_charging else []
    CLOSED_STEPS.append(asyncio.run(play(prefix + actions, ventilation_allowed, cable)))


def test_the_random_sequences_do_reach_charging() -> None:
    """Guard against a vacuous property: some generated sequences must really close the contactor."""
    if not CLOSED_STEPS:
        test_contactor_invariant_and_duty_rule_hold_for_random_sequences()
    assert sum(1 for n in CLOSED_STEPS if n > 0) >= 20


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    actions=st.lists(st.one_of(action, benign), min_size=1, max_size=40),
    ventilation_allowed=st.booleans(),
    cable=st.sampled_from([13.0, 32.0, None]),
)
def test_the_connector_pre_check_never_skips_a_rule_that_would_fire(
    actions: list[tuple[object, ...]], ventilation_allowed: bool, cable: float | None
) -> None:
    """The step's shortcut (no rule matches: skip the state machine) must agree with the machine: whenever the
    shortcut says no rule matches, the machine's own evaluate fires nothing either."""
    original = Connector._any_rule_matches
    checked = [0, 0]

    def checking(self: Connector) -> bool:
        matches = original(self)
        checked[matches] += 1
        if not matches:
            before = self.state
            assert self.evaluate() is False, f"a rule fires in {before} that the pre-check missed"
            assert self.state == before
        return matches

    Connector._any_rule_matches = checking  # type: ignore[method-assign]
    try:
        asyncio.run(play([("plug",), ("authorize",), ("advance", 2.0), *actions], ventilation_allowed, cable))
    finally:
        Connector._any_rule_matches = original  # type: ignore[method-assign]
    assert checked[0] > 0  # the shortcut was taken (and checked) in every run
