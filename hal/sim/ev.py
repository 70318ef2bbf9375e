"""A simulated electric vehicle: the physical model behind every simulated device.

The car reacts to what it sees on the cable (pilot PWM, mains through the contactor) the way a
real one does -- with delays and ramps -- so the controller can be tested against realistic
timing without hardware. Time is whatever the caller passes to :meth:`SimulatedEV.update`;
nothing here reads a clock or sleeps, which keeps every run deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from hal.iec61851 import MIN_CURRENT_A, current_for_duty

#: Timer comparisons tolerate this much float noise (FakeClock sums many small steps).
_EPS: Final = 1e-9
#: While the taper makes the target depend on the SoC, integrate in steps no longer than this.
TAPER_STEP_S: Final = 0.1
#: The taper reaches its floor (6 A) here.
TAPER_END_SOC: Final = 99.9
FULL_SOC: Final = 100.0
#: Never take a step shorter than this, so a threshold a hair away cannot stall the loop.
_MIN_STEP_S: Final = 1e-6


@dataclass(frozen=True, slots=True)
class EVParams:
    """The car's fixed characteristics and starting state."""

    battery_kwh: float = 60.0
    soc_percent: float = 40.0
    max_current_a: float = 32.0
    phases: int = 3
    #: Time from first seeing a valid PWM (while willing to charge) to switching B -> C.
    request_delay_s: float = 1.0
    #: Delay after mains arrives (contactor closed while in C/D) before current starts.
    current_onset_s: float = 1.0
    #: Current moves toward its target at this rate, up and down.
    ramp_a_per_s: float = 10.0
    #: An EV in C that sees the PWM stop goes back to B after this.
    back_to_b_without_pwm_s: float = 0.5
    #: Above this SoC the current tapers linearly down to 6 A at 99.9 %.
    taper_start_soc: float = 95.0

    def __post_init__(self) -> None:
        if not self.battery_kwh > 0:
            raise ValueError(f"battery_kwh must be positive, got {self.battery_kwh!r}")
        if not 0.0 <= self.soc_percent <= FULL_SOC:
            raise ValueError(f"soc_percent must be 0..100, got {self.soc_percent!r}")
        if not 0.0 <= self.taper_start_soc <= FULL_SOC:
            raise ValueError(f"taper_start_soc must be 0..100, got {self.taper_start_soc!r}")
        if not (math.isfinite(self.max_current_a) and self.max_current_a >= 0):
            raise ValueError(f"max_current_a must be >= 0, got {self.max_current_a!r}")
        if self.phases not in (1, 2, 3):
            raise ValueError(f"phases must be 1, 2 or 3, got {self.phases!r}")
        if not self.ramp_a_per_s > 0:
            raise ValueError(f"ramp_a_per_s must be positive, got {self.ramp_a_per_s!r}")
        for name in ("request_delay_s", "current_onset_s", "back_to_b_without_pwm_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value!r}")


class SimulatedEV:
    """The car on the far end of the cable: pilot state, current draw and battery.

    :meth:`update` takes the inputs (duty seen on the pilot, mains present) that held since the
    previous update, advances to ``now`` and records them as the inputs from ``now`` on. A caller
    that changes an input therefore updates once just before the change (old inputs) and once at
    the same instant after it (new inputs), which is what :class:`hal.sim.SimBench` does.
    Commands (:meth:`plug`, :meth:`set_wants_charge`, ...) act at the time of the last update.
    """

    def __init__(self, params: EVParams | None = None, *, now: float = 0.0, supply_phases: int = 3) -> None:
        self.params = params or EVParams()
        self._supply_phases = supply_phases
        self._t = now
        self._plugged = False
        self._wants_charge = True
        self._ventilation = False
        self._diode_ok = True
        self._soc = self.params.soc_percent
        self._max_a = self.params.max_current_a
        self._draw = 0.0
        self._energy_wh = 0.0
        self._requesting = False
        self._offered: float | None = None
        self._mains = False
        # Since when the EV has been willing to charge and seeing a valid PWM (None: not now).
        self._seen_since: float | None = None
        # Since when a requesting EV has seen no valid PWM.
        self._pwm_lost_since: float | None = None
        # Since when the EV has been in C/D with mains present.
        self._powered_since: float | None = None
        #: Called for every stretch of model time as (seconds, mean of current² over it, A²), in
        #: order, so a model that depends on the current (the charger's heating) follows it exactly.
        self.on_current: Callable[[float, float], None] | None = None
        #: Called for the same stretches as (seconds, current at its start, current at its end, A): the
        #: current is linear within each, so a register that needs more than i² (the grid meter's import
        #: and export, which depend on the sign of house + EV - PV) can integrate it exactly.
        self.on_segment: Callable[[float, float, float], None] | None = None

    # -- what the outside world can observe ------------------------------------------------
    @property
    def time(self) -> float:
        """Monotonic time the model has been advanced to."""
        return self._t

    @property
    def plugged(self) -> bool:
        return self._plugged

    @property
    def wants_charge(self) -> bool:
        return self._wants_charge

    @property
    def ventilation(self) -> bool:
        return self._ventilation

    @property
    def diode_ok(self) -> bool:
        return self._diode_ok

    @property
    def soc_percent(self) -> float:
        return self._soc

    @property
    def max_current_a(self) -> float:
        return self._max_a

    @property
    def draw_a(self) -> float:
        """Current drawn on each phase in use (A)."""
        return self._draw

    @property
    def phases(self) -> int:
        """Phases the car draws on: its own, limited by what the supply has."""
        return min(self.params.phases, self._supply_phases)

    @property
    def energy_wh(self) -> float:
        """Energy taken from the supply since the model was created (Wh)."""
        return self._energy_wh

    @property
    def offered_a(self) -> float | None:
        """Current decoded from the duty last seen, None without a valid PWM."""
        return self._offered

    @property
    def requesting(self) -> bool:
        """True while the car asks for energy (state C or D)."""
        return self._requesting

    @property
    def state(self) -> str:
        """The pilot state letter the car presents: A, B, C or D."""
        if not self._plugged:
            return "A"
        if self._requesting:
            return "D" if self._ventilation else "C"
        return "B"

    # -- driver / test commands -------------------------------------------------------------
    def plug(self) -> None:
        self._plugged = True
        self._settle()

    def unplug(self) -> None:
        self._plugged = False
        self._settle()

    def set_wants_charge(self, on: bool) -> None:
        """The car's own wish to charge (timer, user); False sends it back to B at once."""
        self._wants_charge = on
        self._settle()

    def set_max_current(self, amps: float) -> None:
        """The onboard charger's limit; lowering it takes effect at once (the car's own choice)."""
        if not (math.isfinite(amps) and amps >= 0):
            raise ValueError(f"max current must be >= 0 A, got {amps!r}")
        self._max_a = amps
        self._draw = min(self._draw, amps)
        self._settle()

    def set_soc(self, percent: float) -> None:
        if not (math.isfinite(percent) and 0.0 <= percent <= FULL_SOC):
            raise ValueError(f"SoC must be 0..100 %, got {percent!r}")
        self._soc = percent
        self._settle()

    def set_full(self) -> None:
        """Battery full: the car stops drawing and goes back to B."""
        self.set_soc(FULL_SOC)

    def set_ventilation(self, on: bool) -> None:
        """A car that needs ventilation asks with D instead of C."""
        self._ventilation = on

    def set_diode_ok(self, ok: bool) -> None:
        """False simulates a shorted pilot diode (the EVSE sees -high in the PWM low half)."""
        self._diode_ok = ok

    # -- the model --------------------------------------------------------------------------
    def update(self, now: float, duty_percent: float | None, contactor_closed: bool, voltage_v: float) -> None:
        """Advance to ``now`` with the given inputs (held since the previous update).

        ``duty_percent`` None means no PWM (constant +12 V or -12 V). Long steps are integrated
        exactly between events (timers, end of ramp, SoC thresholds), in sub-steps of at most
        :data:`TAPER_STEP_S` only while the taper is active.
        """
        if now < self._t - _EPS:
            raise ValueError(f"time went back: {now!r} < {self._t!r}")
        self._offered = None if duty_percent is None else current_for_duty(duty_percent)
        self._mains = contactor_closed
        self._settle()
        while self._t < now:
            self._step(min(now, self._next_event()), voltage_v)
            self._settle()

    def _settle(self) -> None:
        """Apply every state change due at the current time (no time passes)."""
        t = self._t
        if self._soc >= FULL_SOC - _EPS:
            self._soc = FULL_SOC
        elif self._soc < self.params.taper_start_soc <= self._soc + _EPS:
            self._soc = self.params.taper_start_soc
        willing = self._plugged and self._wants_charge and self._soc < FULL_SOC
        pwm = self._offered is not None
        if willing and pwm:
            if self._seen_since is None:
                self._seen_since = t
        else:
            self._seen_since = None
        if self._requesting:
            if not willing:
                self._requesting = False
            elif pwm:
                self._pwm_lost_since = None
            elif self._pwm_lost_since is None:
                self._pwm_lost_since = t
            lost = self._pwm_lost_since
            if lost is not None and t >= lost + self.params.back_to_b_without_pwm_s - _EPS:
                self._requesting = False
        elif self._seen_since is not None and t >= self._seen_since + self.params.request_delay_s - _EPS:
            self._requesting = True
        if not self._requesting:
            self._pwm_lost_since = None
        if self._requesting and self._mains:
            if self._powered_since is None:
                self._powered_since = t
        else:
            self._powered_since = None
        if not self._may_draw():
            self._draw = 0.0

    def _may_draw(self) -> bool:
        return (
            self._requesting
            and self._offered is not None
            and self._powered_since is not None
            and self._t >= self._powered_since + self.params.current_onset_s - _EPS
        )

    def _next_event(self) -> float:
        """The next timer expiry after now (inf if none)."""
        p = self.params
        candidates: list[float] = []
        if not self._requesting and self._seen_since is not None:
            candidates.append(self._seen_since + p.request_delay_s)
        if self._requesting and self._pwm_lost_since is not None:
            candidates.append(self._pwm_lost_since + p.back_to_b_without_pwm_s)
        if self._powered_since is not None:
            candidates.append(self._powered_since + p.current_onset_s)
        return min((c for c in candidates if c > self._t + _EPS), default=math.inf)

    def _taper_a(self) -> float:
        start = self.params.taper_start_soc
        top = self._max_a
        if self._soc <= start or top <= MIN_CURRENT_A:
            return top
        span = TAPER_END_SOC - start
        fraction = 1.0 if span <= 0 else min(1.0, (self._soc - start) / span)
        return top - (top - MIN_CURRENT_A) * fraction

    def _target_a(self) -> float:
        if self._offered is None or not self._may_draw():
            return 0.0
        return max(0.0, min(self._offered, self._max_a, self._taper_a()))

    def _step(self, t_end: float, voltage_v: float) -> None:
        """Integrate from now toward ``t_end`` with the inputs and target fixed; may stop early."""
        dt = t_end - self._t
        target = self._target_a()
        i0 = self._draw
        phases = self.phases
        if voltage_v > 0 and max(i0, target) > 0:
            # % SoC per ampere-second on every phase in use.
            soc_per_as = voltage_v * phases / 3600.0 / (self.params.battery_kwh * 10.0)
            start = self.params.taper_start_soc
            if self._soc >= start:
                dt = min(dt, TAPER_STEP_S)
            threshold = start if self._soc < start else FULL_SOC
            rate = max(i0, target) * soc_per_as  # may underflow to 0 for a vanishing current
            if rate > 0:
                dt = min(dt, max(_MIN_STEP_S, (threshold - self._soc) / rate))
        amp_seconds, i1 = self._ramp(i0, target, dt)
        if dt > 0:
            self._report_current(i0, target, dt)
        energy_wh = voltage_v * amp_seconds * phases / 3600.0
        self._energy_wh += energy_wh
        self._soc = min(FULL_SOC, self._soc + energy_wh / (self.params.battery_kwh * 10.0))
        self._draw = i1
        self._t = t_end if dt >= t_end - self._t else self._t + dt

    def _report_current(self, i0: float, target: float, dt: float) -> None:
        """Tell :attr:`on_current` and :attr:`on_segment` about this step: the ramp part, then the constant part."""
        listener = self.on_current
        segment = self.on_segment
        if listener is None and segment is None:
            return
        t_ramp = min(dt, abs(target - i0) / self.params.ramp_a_per_s)
        if t_ramp > 0:
            i1 = i0 + math.copysign(self.params.ramp_a_per_s * t_ramp, target - i0)
            if listener is not None:
                listener(t_ramp, (i0 * i0 + i0 * i1 + i1 * i1) / 3.0)  # mean of i² over a linear ramp
            if segment is not None:
                segment(t_ramp, i0, i1)
        if dt - t_ramp > 0:
            if listener is not None:
                listener(dt - t_ramp, target * target)
            if segment is not None:
                segment(dt - t_ramp, target, target)

    def _ramp(self, i0: float, target: float, dt: float) -> tuple[float, float]:
        """Ampere-seconds drawn over ``dt`` while moving from ``i0`` toward ``target``; end current."""
        if i0 == target:
            return target * dt, target
        t_ramp = abs(target - i0) / self.params.ramp_a_per_s
        if t_ramp >= dt:
            i1 = i0 + math.copysign(self.params.ramp_a_per_s * dt, target - i0)
            return (i0 + i1) / 2.0 * dt, i1
        return (i0 + target) / 2.0 * t_ramp + target * (dt - t_ramp), target
