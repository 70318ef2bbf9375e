"""The simulated bench: one EV model behind a full set of simulated devices.

It exists so the controller, the demo and the tests can run a whole charging session with no
hardware: the driver acts through the bench (plug, tap a card, inject a fault), the controller
acts through the devices, and the bench keeps the EV in step with the injected clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from hal.clock import Clock
from hal.iec61851 import PP_NOMINAL_OHM
from hal.interfaces import Hardware, Listener
from hal.sim.devices import (
    SimCardReader,
    SimContactor,
    SimControlPilot,
    SimEnergyMeter,
    SimFaultInputs,
    SimIndicator,
    SimProximityPilot,
)
from hal.sim.ev import EVParams, SimulatedEV

_log = logging.getLogger(__name__)

#: Everything :meth:`SimBench.inject` can break.
FAULT_KINDS: Final = (
    "rcd",
    "weld",
    "stuck-open",
    "cp-short",
    "diode",
    "overtemp",
    "meter",
    "reader",
    "pp-broken",
)
DEFAULT_EV: Final = EVParams()
#: A listener that keeps changing the bench while notified cannot loop forever.
_MAX_NOTIFY_ROUNDS: Final = 10


class SimBench:
    """One simulated charge point with one simulated EV, driven by ``clock``.

    Attributes: ``ev`` (:class:`SimulatedEV`), ``pilot``, ``proximity``, ``contactor``,
    ``faults``, ``meter``, ``reader``, ``indicator`` (the devices), ``clock``, ``phases``,
    ``voltage_v``, ``cable_a`` (None = tethered cable, no PP).
    """

    def __init__(
        self,
        clock: Clock,
        *,
        phases: int = 3,
        voltage_v: float = 230.0,
        cable_a: float | None = 32.0,
        feedback: bool = True,
        ev: EVParams = DEFAULT_EV,
        switch_delay_s: float = 0.02,
    ) -> None:
        if phases not in (1, 2, 3):
            raise ValueError(f"phases must be 1, 2 or 3, got {phases!r}")
        if not voltage_v > 0:
            raise ValueError(f"voltage_v must be positive, got {voltage_v!r}")
        if cable_a is not None and cable_a not in PP_NOMINAL_OHM:
            raise ValueError(f"cable_a must be one of {sorted(PP_NOMINAL_OHM)} or None, got {cable_a!r}")
        if not switch_delay_s >= 0:
            raise ValueError(f"switch_delay_s must be >= 0, got {switch_delay_s!r}")
        self.clock = clock
        self.phases = phases
        self.voltage_v = voltage_v
        self.cable_a = cable_a
        self._injected: set[str] = set()
        self._listeners: list[Listener] = []
        self._notifying = False
        self._notify_again = False
        self.ev = SimulatedEV(ev, now=clock.monotonic(), supply_phases=phases)
        self.pilot = SimControlPilot(self)
        self.proximity = SimProximityPilot(self)
        self.contactor = SimContactor(self, switch_delay_s=switch_delay_s, has_feedback=feedback)
        self.faults = SimFaultInputs(self)
        self.meter = SimEnergyMeter(self)
        self.reader = SimCardReader(self)
        self.indicator = SimIndicator()
        self._seen = self._observed()

    def hardware(self) -> Hardware:
        """The devices as the controller takes them (the same objects on every call)."""
        return Hardware(
            pilot=self.pilot,
            proximity=self.proximity,
            contactor=self.contactor,
            faults=self.faults,
            meter=self.meter,
            reader=self.reader,
            indicator=self.indicator,
            extras={"sim": self},
        )

    @property
    def injected(self) -> frozenset[str]:
        """The fault kinds now injected."""
        return frozenset(self._injected)

    # -- listeners --------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        """Register ``listener`` once (pilot, contactor and fault inputs all share this list)."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def _notify(self) -> None:
        """Call every listener now; a change made by a listener triggers one more round."""
        if self._notifying:
            self._notify_again = True
            return
        self._notifying = True
        try:
            for _ in range(_MAX_NOTIFY_ROUNDS):
                self._notify_again = False
                for listener in list(self._listeners):
                    try:
                        listener()
                    except Exception:
                        _log.exception("sim bench listener %r failed", listener)
                if not self._notify_again:
                    break
            else:
                _log.warning("sim bench listeners keep changing the bench; stopped notifying")
        finally:
            self._notifying = False

    # -- time -------------------------------------------------------------------------------
    def tick(self) -> None:
        """Advance the EV (and so the meter) to now; notify listeners if a reading changed.

        Idempotent at the same instant; call it as often as you like.
        """
        if self._advance():
            self._notify()

    def _observed(self) -> tuple[str, bool]:
        return self.ev.state, self.contactor.physical()

    def _advance(self) -> bool:
        """Bring the EV to now; True if the EV letter or the contacts changed since last seen."""
        now = self.clock.monotonic()
        switch_at = self.contactor.switch_at
        if self.ev.time < switch_at < now:
            self._update_ev(switch_at)  # the contacts moved in between: the EV sees it then
        self._update_ev(now)
        self._update_ev(now)  # record the inputs as they are now (zero-length step)
        seen = self._observed()
        changed = seen != self._seen
        self._seen = seen
        return changed

    def _update_ev(self, until: float) -> None:
        """Advance the EV with the inputs that held since its last update."""
        mains = self.contactor.physical(self.ev.time)
        self.ev.update(until, self.pilot.duty, mains, self.voltage_v)

    def _apply(self, action: Callable[[], None]) -> None:
        """Run a change at the present instant: catch up first, apply, re-settle, notify."""
        self.tick()
        action()
        self._advance()
        self._notify()

    # -- driver actions ---------------------------------------------------------------------
    def plug(self) -> None:
        self._apply(self.ev.plug)

    def unplug(self) -> None:
        self._apply(self.ev.unplug)

    def tap(self, uid: bytes) -> None:
        """Present a card to the reader."""
        self._apply(lambda: self.reader._put(uid))

    def set_ev_max_current(self, amps: float) -> None:
        self._apply(lambda: self.ev.set_max_current(amps))

    def set_ev_soc(self, percent: float) -> None:
        self._apply(lambda: self.ev.set_soc(percent))

    def ev_full(self) -> None:
        self._apply(self.ev.set_full)

    def set_ev_ventilation(self, on: bool) -> None:
        self._apply(lambda: self.ev.set_ventilation(on))

    def ev_request(self, on: bool) -> None:
        """The car asks for (True) or declines (False) energy."""
        self._apply(lambda: self.ev.set_wants_charge(on))

    @staticmethod
    def _check_kind(kind: str) -> str:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; valid kinds: {', '.join(FAULT_KINDS)}")
        return kind

    def inject(self, kind: str) -> None:
        """Break something; ``kind`` is one of :data:`FAULT_KINDS`."""
        self._check_kind(kind)

        def apply() -> None:
            self._injected.add(kind)
            if kind == "diode":
                self.ev.set_diode_ok(False)
            elif kind == "reader":
                self.reader._wake()

        self._apply(apply)

    def clear(self, kind: str | None = None) -> None:
        """Repair ``kind``, or everything when None."""
        kinds = set(FAULT_KINDS) if kind is None else {self._check_kind(kind)}

        def apply() -> None:
            self._injected -= kinds
            if "diode" in kinds:
                self.ev.set_diode_ok(True)

        self._apply(apply)

    # -- reporting --------------------------------------------------------------------------
    def snapshot(self) -> dict[str, object]:
        """The bench's state as plain JSON-able values (for `evse sim status` and logs)."""
        self.tick()
        ev = self.ev
        output = self.pilot.output
        return {
            "plugged": ev.plugged,
            "ev_state": ev.state,
            "soc_percent": round(ev.soc_percent, 3),
            "draw_a": round(ev.draw_a, 3),
            "ev_phases": ev.phases,
            "ev_max_current_a": ev.max_current_a,
            "ev_wants_charge": ev.wants_charge,
            "pilot": output if isinstance(output, float) else output.value,
            "contactor_commanded": self.contactor.commanded,
            "contactor_physical": self.contactor.physical(),
            "faults": sorted(self._injected),
            "energy_wh": round(ev.energy_wh, 3),
        }
