"""The simulated bench: one EV model behind a full set of simulated devices.

It exists so the controller, the demo and the tests can run a whole charging session with no
hardware: the driver acts through the bench (plug, tap a card, inject a fault), the controller
acts through the devices, and the bench keeps the EV in step with the injected clock.
"""

from __future__ import annotations

import logging
import math
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
    SimGridMeter,
    SimIndicator,
    SimProximityPilot,
    SimThermometer,
)
from hal.sim.ev import EVParams, SimulatedEV
from hal.sim.thermal import ThermalModel, ThermalModelParams

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
    # Peripherals that feed limits, not safety: losing them changes a limit, never trips the charger.
    "grid-meter",
    "thermometer",
)
DEFAULT_EV: Final = EVParams()
DEFAULT_THERMAL: Final = ThermalModelParams()
#: The house's own load: one current for every phase, or (L1, L2, L3).
HouseLoad = float | tuple[float, float, float]
#: The PV system's output: a total spread evenly over the three phases, or (L1, L2, L3), in watts.
PvPower = float | tuple[float, float, float]
#: A listener that keeps changing the bench while notified cannot loop forever.
_MAX_NOTIFY_ROUNDS: Final = 10


class SimBench:
    """One simulated charge point with one simulated EV, driven by ``clock``.

    Attributes: ``ev`` (:class:`SimulatedEV`), ``pilot``, ``proximity``, ``contactor``,
    ``faults``, ``meter``, ``reader``, ``indicator``, ``grid_meter``, ``thermometer`` (the
    devices), ``heat`` (the charger's :class:`ThermalModel`), ``clock``, ``phases``,
    ``voltage_v``, ``cable_a`` (None = tethered cable, no PP).

    Behind the grid meter sit the house load (:meth:`set_house_load`), the EV, and a PV system
    (:meth:`set_pv_power`) whose output the grid meter subtracts: it reads house + EV - PV.
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
        house_load_a: HouseLoad = 0.0,
        thermal: ThermalModelParams = DEFAULT_THERMAL,
        pv_power_w: PvPower = 0.0,
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
        self._injected: frozenset[str] = frozenset()  # replaced, never mutated: readers get it without a copy
        self._listeners: list[Listener] = []
        self._notifying = False
        self._notify_again = False
        self.ev = SimulatedEV(ev, now=clock.monotonic(), supply_phases=phases)
        self.heat = ThermalModel(thermal)
        self.ev.on_current = self.heat.advance  # the charger heats with the current the EV draws
        self._house_a = _house_triple(house_load_a)
        self._pv_w = _pv_triple(pv_power_w)
        self._house_wh = 0.0
        self._pv_wh = 0.0
        self._house_t = clock.monotonic()
        # The grid meter's registers follow the EV's linear current segments (see _integrate_grid).
        self._import_wh = 0.0
        self._export_wh = 0.0
        self.ev.on_segment = self._integrate_grid
        self.pilot = SimControlPilot(self)
        self.proximity = SimProximityPilot(self)
        self.contactor = SimContactor(self, switch_delay_s=switch_delay_s, has_feedback=feedback)
        self.faults = SimFaultInputs(self)
        self.meter = SimEnergyMeter(self)
        self.reader = SimCardReader(self)
        self.indicator = SimIndicator()
        self.grid_meter = SimGridMeter(self)
        self.thermometer = SimThermometer(self)
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
            grid_meter=self.grid_meter,
            thermometer=self.thermometer,
        )

    @property
    def house_load_a(self) -> tuple[float, float, float]:
        """The rest of the house's current per phase (A), as the grid meter sees it besides the EV."""
        return self._house_a

    @property
    def house_energy_wh(self) -> float:
        """Energy the house (without the EV) has imported, up to the last tick (Wh)."""
        return self._house_wh

    @property
    def pv_power_w(self) -> tuple[float, float, float]:
        """The PV system's output per phase (W), fed in behind the grid meter."""
        return self._pv_w

    @property
    def pv_energy_wh(self) -> float:
        """Energy the PV system has produced, up to the last tick (Wh)."""
        return self._pv_wh

    @property
    def grid_import_wh(self) -> float:
        """The grid meter's import register: energy taken from the grid, up to the last tick (Wh).

        Net-summed over the phases (as a bidirectional utility meter bills): while the three-phase
        total is negative the site exports, even if one phase alone still imports.
        """
        return self._import_wh

    @property
    def grid_export_wh(self) -> float:
        """The grid meter's export register (Wh). :class:`hal.interfaces.MeterReading` has no export field,
        so only the bench shows it."""
        return self._export_wh

    @property
    def injected(self) -> frozenset[str]:
        """The fault kinds now injected."""
        return self._injected

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
        self._integrate_house(now)
        switch_at = self.contactor.switch_at
        if self.ev.time < switch_at < now:
            self._update_ev(switch_at)  # the contacts moved in between: the EV sees it then
        held = self._update_ev(now)
        if self.contactor.physical(self.ev.time) != held:
            # Record the inputs as they are now (zero-length step). With the same inputs it would only settle
            # the EV again at the instant it was just settled at, which changes nothing: skipped then.
            self._update_ev(now)
        seen = self._observed()
        changed = seen != self._seen
        self._seen = seen
        return changed

    def _integrate_house(self, now: float) -> None:
        """House load and PV are constant between changes (each change ticks first): integrate exactly."""
        if now > self._house_t:
            hours = (now - self._house_t) / 3600.0
            self._house_wh += self.voltage_v * sum(self._house_a) * hours
            self._pv_wh += sum(self._pv_w) * hours
            self._house_t = now

    def _integrate_grid(self, seconds: float, i0: float, i1: float) -> None:
        """One stretch of EV current, linear from ``i0`` to ``i1``: add its import and export exactly.

        House load and PV hold still over it, so the site's net power is linear too; where it
        crosses zero the stretch is split there.
        """
        base = self.voltage_v * sum(self._house_a) - sum(self._pv_w)
        per_amp = self.voltage_v * self.ev.phases
        p0, p1 = base + per_amp * i0, base + per_amp * i1
        if p0 >= 0 and p1 >= 0:
            self._import_wh += (p0 + p1) / 2 * seconds / 3600.0
        elif p0 <= 0 and p1 <= 0:
            self._export_wh -= (p0 + p1) / 2 * seconds / 3600.0
        else:
            to_zero = seconds * p0 / (p0 - p1)  # where the line crosses 0 W
            first, second = p0 * to_zero / 2 / 3600.0, p1 * (seconds - to_zero) / 2 / 3600.0
            self._import_wh += max(first, second)
            self._export_wh -= min(first, second)

    def _update_ev(self, until: float) -> bool:
        """Advance the EV with the inputs that held since its last update; returns the contacts' state it used."""
        mains = self.contactor.physical(self.ev.time)
        self.ev.update(until, self.pilot.duty, mains, self.voltage_v)
        return mains

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

    # -- the site around the charger --------------------------------------------------------
    def set_house_load(self, amps: HouseLoad) -> None:
        """The house's own load (without the EV): one value for every phase, or (L1, L2, L3)."""
        load = _house_triple(amps)

        def apply() -> None:
            self._house_a = load

        self._apply(apply)

    def set_pv_power(self, watts: PvPower) -> None:
        """The PV system's output: a total (W) spread evenly over L1..L3, or (L1, L2, L3) in W.

        Unity power factor: the grid meter sees each phase's current fall by ``watts / voltage``.
        """
        pv = _pv_triple(watts)

        def apply() -> None:
            self._pv_w = pv

        self._apply(apply)

    def set_ambient_c(self, celsius: float) -> None:
        """The air around the charger; its hot spot keeps its rise above it."""
        self._apply(lambda: self.heat.set_ambient(celsius))

    def set_temperature_c(self, celsius: float) -> None:
        """Force the charger's temperature now (tests); it then follows the model again."""
        self._apply(lambda: self.heat.set_temperature(celsius))

    @staticmethod
    def _check_kind(kind: str) -> str:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; valid kinds: {', '.join(FAULT_KINDS)}")
        return kind

    def inject(self, kind: str) -> None:
        """Break something; ``kind`` is one of :data:`FAULT_KINDS`."""
        self._check_kind(kind)

        def apply() -> None:
            self._injected = self._injected | {kind}
            if kind == "diode":
                self.ev.set_diode_ok(False)
            elif kind == "reader":
                self.reader._wake()

        self._apply(apply)

    def clear(self, kind: str | None = None) -> None:
        """Repair ``kind``, or everything when None."""
        kinds = set(FAULT_KINDS) if kind is None else {self._check_kind(kind)}

        def apply() -> None:
            self._injected = self._injected - kinds
            if "diode" in kinds:
                self.ev.set_diode_ok(True)

        self._apply(apply)

    # -- reporting --------------------------------------------------------------------------
    def snapshot(self) -> dict[str, object]:
        """The bench's state as plain JSON-able values (for `evse sim status` and logs)."""
        self.tick()
        ev = self.ev
        output = self.pilot.output
        grid = self.grid_meter.reading()
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
            "house_load_a": list(self._house_a),
            "grid_current_a": [None if a is None else round(a, 3) for a in grid.current_a],
            "grid_power_w": [None if w is None else round(w, 1) for w in grid.power_w],
            "grid_import_wh": round(self._import_wh, 3),
            "grid_export_wh": round(self._export_wh, 3),
            "pv_power_w": round(sum(self._pv_w), 1),
            "pv_phase_w": [round(w, 1) for w in self._pv_w],
            "temperature_c": round(self.heat.temperature_c, 2),
            "ambient_c": self.heat.ambient_c,
        }


def _house_triple(amps: HouseLoad) -> tuple[float, float, float]:
    """One load for every phase, or three; each a finite number of amperes >= 0 (export comes from the PV system)."""
    values = (amps, amps, amps) if isinstance(amps, int | float) else tuple(amps)
    if len(values) != 3:
        raise ValueError(f"house load needs one value or three (L1, L2, L3), got {amps!r}")
    for value in values:
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"house load must be amperes >= 0 per phase, got {amps!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


def _pv_triple(watts: PvPower) -> tuple[float, float, float]:
    """A total spread evenly over three phases, or three values; each a finite number of watts >= 0."""
    values = (watts / 3, watts / 3, watts / 3) if isinstance(watts, int | float) else tuple(watts)
    if len(values) != 3:
        raise ValueError(f"PV power needs a total or three values (L1, L2, L3), got {watts!r}")
    for value in values:
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"PV power must be watts >= 0, got {watts!r}")
    return (float(values[0]), float(values[1]), float(values[2]))
