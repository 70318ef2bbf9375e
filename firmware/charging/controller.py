"""The control loop: read the pilot, PP, contactor feedback and fault inputs; run the connector's
state machine; drive the pilot and the contactor.

Every output goes through here, and the contactor only through :func:`safety.contactor_may_close`.
The loop wakes on any input change (the hal backends notify) and at least every ``tick_s``; it
never awaits the network or a slow bus. Order of outputs: open the contactor first, then change
the pilot, and close the contactor last.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from firmware.charging.connector import (
    SESSION_STATES,
    Connector,
    ConnectorEvent,
    ConnectorInputs,
    Status,
    StatusChanged,
)
from firmware.charging.pilot import EV_PRESENT, Letter, interpret
from firmware.charging.safety import (
    F_HOLD_S,
    ContactorSupervisor,
    DutyGovernor,
    InvariantInputs,
    contactor_may_close,
    quantise_current,
)
from firmware.limits.arbiter import Arbiter
from hal.clock import Clock
from hal.iec61851 import cable_ampacity, duty_for_current
from hal.interfaces import Hardware, IndicatorPattern, PilotConstant

log = logging.getLogger("firmware.charging")

#: Faults that do not stop charging: the session goes on and the fault is reported.
NON_TRIP_FAULTS: Final = frozenset({"reader"})
#: Faults that end only when the EV is unplugged (pilot back in A).
LATCHED_UNTIL_UNPLUG: Final = frozenset({"diode", "stuck-open", "pp-broken"})
#: Faults whose recovery can only be seen on a +12 V pilot: after the F hold the pilot is released.
SEEN_ON_PILOT: Final = frozenset({"cp-short", "pilot-fault"}) | LATCHED_UNTIL_UNPLUG

_INDICATOR: Final = {
    Status.AVAILABLE: IndicatorPattern.IDLE,
    Status.PREPARING: IndicatorPattern.WAITING,
    Status.CHARGING: IndicatorPattern.CHARGING,
    Status.SUSPENDED_EV: IndicatorPattern.SUSPENDED,
    Status.SUSPENDED_EVSE: IndicatorPattern.SUSPENDED,
    Status.FINISHING: IndicatorPattern.FINISHING,
    Status.FAULTED: IndicatorPattern.FAULT,
    Status.UNAVAILABLE: IndicatorPattern.UNAVAILABLE,
    Status.RESERVED: IndicatorPattern.RESERVED,
}


@dataclass(frozen=True, slots=True)
class FaultsChanged:
    """The set of active faults changed (also when the connector status did not)."""

    faults: frozenset[str]
    at: datetime


ControllerEvent = ConnectorEvent | FaultsChanged

PilotOutput = tuple[str, float]  # ("pwm", duty) | ("+12V", 100.0) | ("-12V", 0.0)
PLUS_12V: Final[PilotOutput] = ("+12V", 100.0)
MINUS_12V: Final[PilotOutput] = ("-12V", 0.0)


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    max_current_a: float = 32.0
    phases: int = 3
    tethered_cable: bool = False
    ventilation_allowed: bool = False
    connection_timeout_s: float = 60.0
    feedback_timeout_s: float = 0.5
    tick_s: float = 0.25
    #: With no EV, no authorization and no fault nothing is timed: wake less (every input change still wakes).
    idle_tick_s: float = 1.0


#: The control loop counts as healthy while its last step is at most this old (its idle tick is 1 s).
HEALTHY_S = 1.5


class ChargingController:
    def __init__(self, hardware: Hardware, arbiter: Arbiter, clock: Clock, settings: ControllerSettings) -> None:
        self.hw = hardware
        self.arbiter = arbiter
        self.clock = clock
        self.settings = settings
        self.connector = Connector()
        self.governor = DutyGovernor()
        self.supervisor = ContactorSupervisor(settings.feedback_timeout_s)
        #: Authorization without an EV expires after this (OCPP ConnectionTimeOut may change it).
        self.connection_timeout_s = settings.connection_timeout_s
        self.letter: Letter = "A"
        self.diode_verified = False
        self.faults: frozenset[str] = frozenset()
        self.offered_a = 0.0
        self.pilot_output: PilotOutput | None = None
        self._latched: set[str] = set()
        self._device_faults: set[str] = set()
        self._faulted_at: float | None = None
        self._listeners: list[Callable[[ControllerEvent], None]] = []
        self._wake = asyncio.Event()
        self._fault_events: list[FaultsChanged] = []
        self._flash: tuple[IndicatorPattern, float] | None = None
        self._indicated: IndicatorPattern | None = None
        #: Monotonic time of the last completed step: the board's watchdog latch is kicked only while it is recent.
        self.last_step_at: float | None = None
        for device in (hardware.pilot, hardware.contactor, hardware.faults):
            device.subscribe(self.wake)
        arbiter.submit("config", settings.max_current_a, clock.monotonic(), reason="charger.max_current_a")
        arbiter.subscribe(self.wake)

    # ---- wiring -------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def add_listener(self, listener: Callable[[ControllerEvent], None]) -> None:
        self._listeners.append(listener)

    def flash(self, pattern: IndicatorPattern, seconds: float = 2.0) -> None:
        """Show ``pattern`` briefly (a card accepted or refused), then the status again."""
        self._flash = (pattern, self.clock.monotonic() + seconds)
        self.wake()

    def set_device_fault(self, kind: str, active: bool) -> None:
        """Faults found by other tasks (meter, card reader)."""
        if active and kind not in self._device_faults:
            self._device_faults.add(kind)
            self.wake()
        elif not active and kind in self._device_faults:
            log.info("%s works again", kind)
            self._device_faults.discard(kind)
            self.wake()

    # ---- lifecycle ----------------------------------------------------------------------
    def enter_safe_state(self, pilot: PilotOutput = PLUS_12V) -> None:
        """Contactor open, then pilot to a constant level (never leaves PWM running)."""
        self.hw.contactor.command(False)
        self._set_pilot(pilot)
        self.offered_a = 0.0

    async def run(self) -> None:
        """The control loop; on any error or cancellation the charger is left safe (contactor open, F)."""
        loop = asyncio.get_running_loop()
        self.enter_safe_state()
        try:
            while True:
                await self.step()  # never suspends (the connector's machine is synchronous): cancels land below
                timer = loop.call_later(
                    self.settings.idle_tick_s if self.idle else self.settings.tick_s, self._wake.set
                )
                await self._wake.wait()
                timer.cancel()
                self._wake.clear()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.critical("control loop failed; contactor opened, pilot in F", exc_info=True)
            raise
        finally:
            self.enter_safe_state(MINUS_12V)

    # ---- one step -------------------------------------------------------------------------
    async def step(self) -> None:
        now = self.clock.monotonic()
        out = self.pilot_output
        reading = interpret(self.hw.pilot.read(), out is not None and out[0] == "pwm", self.letter)
        pilot_forced_low = out == MINUS_12V
        letter: Letter = reading.letter
        if letter != self.letter and not pilot_forced_low:
            log.info("pilot %s -> %s", self.letter, letter)
        if not pilot_forced_low:
            self.letter = letter
        detected = self._detect_faults(reading.diode_ok, pilot_forced_low, now)
        self._update_faults(detected | set(self.hw.faults.active()) | self._device_faults)
        trip = self.faults - NON_TRIP_FAULTS

        limit = quantise_current(self.arbiter.decide(now).current_a)
        self.connector.fault_hold_done = self._faulted_at is not None and now - self._faulted_at >= F_HOLD_S
        inputs = ConnectorInputs(
            letter=self.letter if not pilot_forced_low else "F",
            trip_faults=frozenset(trip),
            limit_a=limit,
            ventilation_allowed=self.settings.ventilation_allowed,
            connection_timeout_s=self.connection_timeout_s,
            monotonic=now,
            wall=self.clock.now(),
        )
        self.connector.step(inputs)
        status = self.connector.status
        if status is Status.FAULTED:
            self._faulted_at = self._faulted_at if self._faulted_at is not None else now
        else:
            self._faulted_at = None
        self._apply_outputs(status, limit, trip, now)
        self._dispatch_events()
        self.last_step_at = now

    def _detect_faults(self, diode_ok: bool | None, pilot_forced_low: bool, now: float) -> set[str]:
        found: set[str] = set()
        if not pilot_forced_low:
            if self.letter == "A":
                if self._latched:
                    log.info("EV unplugged: clearing %s", ", ".join(sorted(self._latched)))
                self._latched.clear()
                self.diode_verified = False
                self.arbiter.withdraw("cable")
            elif self.letter == "E":
                found.add("cp-short")
            elif self.letter == "F":
                found.add("pilot-fault")
            if diode_ok is False:
                self._latch("diode", "EV diode missing or shorted: negative PWM half not at -12 V")
            elif diode_ok:
                self.diode_verified = True
            if self.letter in EV_PRESENT and not self.settings.tethered_cable:
                self._check_proximity(now)
        if self.pilot_output is None or self.pilot_output[0] != "pwm":
            self.diode_verified = False
        contactor = self.hw.contactor
        verdict = self.supervisor.observe(contactor.commanded, contactor.feedback(), now)
        if verdict == "weld":
            found.add("weld")
        elif verdict == "stuck-open":
            self._latch("stuck-open", "contactor commanded closed but its mirror contact stays open")
        return found | self._latched

    def _check_proximity(self, now: float) -> None:
        ohms = self.hw.proximity.read_ohms()
        amps = cable_ampacity(ohms)
        if amps is None:
            self._latch("pp-broken", f"proximity pilot reads {ohms:.0f} ohm: no valid cable coding")
            return
        self.arbiter.submit("cable", amps, now, reason=f"PP {ohms:.0f} ohm = {amps:g} A cable")

    def _latch(self, kind: str, why: str) -> None:
        if kind not in self._latched:
            log.error("fault %s: %s", kind, why)
            self._latched.add(kind)

    def _update_faults(self, active: set[str]) -> None:
        new = frozenset(active)
        if new != self.faults:
            self._fault_events.append(FaultsChanged(new, self.clock.now()))
        for kind in sorted(new - self.faults):
            if kind not in self._latched:
                log.error("fault %s raised", kind)
        for kind in sorted(self.faults - new):
            log.warning("fault %s cleared", kind)
        self.faults = new

    def _apply_outputs(self, status: Status, limit: float, trip: frozenset[str], now: float) -> None:
        wanted = limit if status in (Status.CHARGING, Status.SUSPENDED_EV) and self.connector.authorized else 0.0
        offered = self.governor.apply(wanted, now)
        if offered != self.offered_a:
            log.info("offered current %.1f A -> %.1f A", self.offered_a, offered)
            self.offered_a = offered

        if status is Status.FAULTED:
            hold = self._faulted_at is not None and now - self._faulted_at < F_HOLD_S
            pilot = MINUS_12V if hold or (trip - SEEN_ON_PILOT) else PLUS_12V
        elif status is Status.UNAVAILABLE and not self.connector.operative:
            pilot = MINUS_12V
        elif offered > 0:
            pilot = ("pwm", duty_for_current(offered))
        else:
            pilot = PLUS_12V

        allowed, why = contactor_may_close(
            InvariantInputs(
                authorized=self.connector.authorized,
                pilot=self.letter,
                ventilation_allowed=self.settings.ventilation_allowed,
                diode_verified=self.diode_verified,
                trip_faults=trip,
                offered_a=offered if pilot[0] == "pwm" else 0.0,
            )
        )
        close = status is Status.CHARGING and allowed
        contactor = self.hw.contactor
        if contactor.commanded and not close:
            contactor.command(False)
            log.info("contactor opened: %s", why if not allowed else f"connector {status.value}")
        self._set_pilot(pilot)
        if close and not contactor.commanded:
            contactor.command(True)
            log.info("contactor closed: %.1f A offered, pilot %s", offered, self.letter)
        pattern = _INDICATOR[status]
        if self._flash is not None:
            if now < self._flash[1]:
                pattern = self._flash[0]
            else:
                self._flash = None
        if pattern is not self._indicated:
            self.hw.indicator.show(pattern)
            self._indicated = pattern

    def _set_pilot(self, pilot: PilotOutput) -> None:
        if pilot == self.pilot_output:
            return
        if pilot[0] == "pwm":
            self.hw.pilot.set_duty(pilot[1])
        else:
            self.hw.pilot.set_constant(PilotConstant.PLUS_12V if pilot == PLUS_12V else PilotConstant.MINUS_12V)
        log.debug("pilot output %s", pilot)
        self.pilot_output = pilot

    def _dispatch_events(self) -> None:
        events: list[ControllerEvent] = [*self._fault_events, *self.connector.events]
        self._fault_events, self.connector.events = [], []
        for event in events:
            if isinstance(event, StatusChanged):
                log.info("connector %s -> %s (%s)", event.previous.value, event.status.value, event.reason)
            for listener in self._listeners:
                try:
                    listener(event)
                except Exception:
                    log.exception("connector event listener failed on %s", event)

    # ---- status ---------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Nothing timed is pending: no EV, no authorization, no fault, no contactor check running."""
        return (
            self.connector.status is Status.AVAILABLE
            and not self.connector.authorized
            and not self.faults
            and self.supervisor.deadline() is None
            and not self.hw.contactor.commanded
        )

    def healthy(self) -> bool:
        """The loop stepped recently: the only condition under which the board latch and systemd's watchdog are fed
        (its idle tick is 1 s, so a gap over ``HEALTHY_S`` means it is stuck)."""
        return self.last_step_at is not None and self.clock.monotonic() - self.last_step_at <= HEALTHY_S

    @property
    def in_session(self) -> bool:
        return self.connector.status in SESSION_STATES

    def status(self) -> dict[str, object]:
        out = self.pilot_output or PLUS_12V
        return {
            "state": "F" if out == MINUS_12V else self.letter,
            "connector_status": self.connector.status.value,
            "contactor": "closed" if self.hw.contactor.commanded else "open",
            "contactor_feedback": _feedback_text(self.hw.contactor.feedback()),
            "duty_percent": round(out[1], 2),
            "offered_a": round(self.offered_a, 1),
            "faults": sorted(self.faults),
        }


def _feedback_text(feedback: bool | None) -> str | None:
    return None if feedback is None else ("closed" if feedback else "open")
