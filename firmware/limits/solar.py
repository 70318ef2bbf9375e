"""Solar surplus charging: charge from what the PV system would otherwise export.

The grid meter sees the house, the charger and the PV system together (signed power: negative =
export). What the charger could take while the grid stays at about zero import is::

    surplus (A per phase) = (own power - grid power + allow_import_w) / (voltage x phases in use)

``own power`` is added back because the charger's present draw is part of the grid power but is
also what it would keep. Charging starts once the surplus has been >= 6 A (the IEC 61851 minimum)
for ``start_delay_s``, and stops once it has been below 6 A for ``stop_delay_s``: a passing cloud
must not toggle the contactor. While running the claim follows the surplus, rounded down to 0.5 A
and never below 6 A (below it the grid makes up the difference until the stop delay runs out).
While stopped the claim is 0 A, which pauses the charger (SuspendedEVSE).

Stale grid data pauses: a failed read holds the claim until the data is ``stale_after_s`` old,
then the claim falls to 0 A and the start delay begins anew once readings return. Keeping the last
value could charge from the grid for as long as the meter is gone (a cloud nobody sees), and
solar mode promises not to; the site fuse and the driver's boost are other sources' business.

:class:`SolarCore` is the pure logic (time comes in); :class:`SolarGuard` reads the grid meter and
submits the claim to the arbiter as source ``"solar"``, or withdraws it while disabled.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from firmware.limits.arbiter import Arbiter
from firmware.limits.polling import poll_forever, read_or_why_not
from firmware.metering import fresh_reading
from hal.clock import Clock
from hal.iec61851 import MIN_CURRENT_A
from hal.interfaces import EnergyMeter, MeterReading

log = logging.getLogger("firmware.limits.solar")

#: The arbiter source name of this limit.
SOURCE: Final = "solar"
#: The running claim is rounded down to this: never above the surplus, and meter noise below a step
#: does not move the PWM.
STEP_A: Final = 0.5
#: A phase of the charger's own meter carrying at least this is one the EV draws on.
PHASE_IN_USE_A: Final = 1.0
#: Grid phase voltages outside this fraction of nominal are not believed (a lost phase reads 0 V).
_PLAUSIBLE_V: Final = (0.8, 1.2)
_EPS: Final = 1e-9


@dataclass(frozen=True, slots=True)
class SolarParams:
    """The solar settings (``[solar]`` in the configuration)."""

    #: False: no solar claim at all (the guard withdraws it); the app's toggle and boost use this.
    enabled: bool = True
    #: Enough surplus must hold this long before charging starts.
    start_delay_s: float = 60.0
    #: Too little surplus must hold this long before charging stops (meanwhile it runs at 6 A).
    stop_delay_s: float = 300.0
    #: Grid import the driver accepts while charging on solar (W, total over the phases).
    allow_import_w: float = 0.0
    poll_interval_s: float = 2.0
    #: Grid data older than this is stale: the claim falls to 0 A.
    stale_after_s: float = 10.0
    #: Phases the EV is expected to draw on (1..3), used until the charger's own meter shows which
    #: phases carry current. Set 1 for a single-phase car to start at 1.4 kW instead of 4.1 kW.
    phases: int = 3
    #: Used when the grid meter reports no plausible voltage.
    nominal_voltage_v: float = 230.0
    #: A grid read that has not answered after this counts as failed (a hung bus must not stall the guard).
    read_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("start_delay_s", "stop_delay_s", "allow_import_w"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        for name in ("poll_interval_s", "stale_after_s", "nominal_voltage_v", "read_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.phases not in (1, 2, 3):
            raise ValueError(f"phases must be 1, 2 or 3, got {self.phases!r}")


@dataclass(frozen=True, slots=True)
class Surplus:
    """One grid reading's view of the surplus."""

    #: Signed grid power, + import / - export (W).
    grid_w: float
    #: The charger's own power (W, >= 0; 0 when unknown).
    own_w: float
    voltage_v: float
    #: Phases the surplus is spread over.
    phases: int
    #: own - grid + allow_import_w (W).
    watts: float
    #: Per phase, not rounded (A).
    amps: float


@dataclass(frozen=True, slots=True)
class SolarDecision:
    """The claim to submit: amperes per phase, and why."""

    current_a: float
    reason: str


def phases_in_use(params: SolarParams, own: MeterReading | None) -> int:
    """The phases the charger's own meter shows current on; ``params.phases`` when it shows none."""
    if own is None:
        return params.phases
    drawing = sum(1 for a in own.current_a if a is not None and math.isfinite(a) and abs(a) >= PHASE_IN_USE_A)
    return drawing or params.phases


def grid_voltage(params: SolarParams, grid: MeterReading) -> float:
    """The mean of the grid's plausible phase voltages, else nominal."""
    low, high = (f * params.nominal_voltage_v for f in _PLAUSIBLE_V)
    volts = [v for v in grid.voltage_v if v is not None and math.isfinite(v) and low <= v <= high]
    return sum(volts) / len(volts) if volts else params.nominal_voltage_v


def surplus(params: SolarParams, grid: MeterReading, own: MeterReading | None) -> Surplus | None:
    """The surplus one grid reading shows; None if it has no valid total power."""
    grid_w = grid.total_power_w
    if not math.isfinite(grid_w):
        return None
    own_w = 0.0 if own is None or not math.isfinite(own.total_power_w) else max(0.0, own.total_power_w)
    volts = grid_voltage(params, grid)
    phases = phases_in_use(params, own)
    watts = own_w - grid_w + params.allow_import_w
    return Surplus(grid_w, own_w, volts, phases, watts, watts / (volts * phases))


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _flow(grid_w: float) -> str:
    return f"{-grid_w:.0f} W export" if grid_w < 0 else f"{grid_w:.0f} W import"


class SolarCore:
    """The surplus logic: readings and failures in, the claim out. Pure: time is passed in.

    ``state`` is "starting" (no grid data yet), "waiting" (stopped), "running" or "stale".
    """

    def __init__(self, params: SolarParams, now: float) -> None:
        self.params = params
        self.started_at = now
        self.state = "starting"
        self.running = False
        self.claim = SolarDecision(0.0, "no grid meter reading yet: waiting")
        self.last: Surplus | None = None
        self.last_good_at: float | None = None
        self.last_error: str | None = None
        #: Since when the surplus has been enough / too little, without a break (None: not now).
        self._enough_since: float | None = None
        self._short_since: float | None = None

    def age(self, now: float) -> float:
        """Seconds since the last good grid reading (since start when there was none)."""
        return now - (self.started_at if self.last_good_at is None else self.last_good_at)

    def on_reading(self, grid: MeterReading, own: MeterReading | None, now: float) -> SolarDecision:
        """A grid reading arrived at ``now``; ``own`` is the charger's latest own reading (None = unknown)."""
        s = surplus(self.params, grid, own)
        if s is None:
            return self.on_failure("grid meter reading has no valid total power", now)
        if self.state == "stale":
            log.warning(
                "grid meter answers again after %.0f s: solar charging waits for the start delay", self.age(now)
            )
        if self.state in ("starting", "stale"):
            self.state = "waiting"
        self.last, self.last_good_at, self.last_error = s, now, None
        enough = s.amps >= MIN_CURRENT_A - _EPS
        if enough:
            self._short_since = None
            self._enough_since = now if self._enough_since is None else self._enough_since
        else:
            self._enough_since = None
            self._short_since = now if self._short_since is None else self._short_since
        # How long the surplus has been enough (or too little) without a break; 0 for the other one.
        enough_for = 0.0 if self._enough_since is None else now - self._enough_since
        short_for = 0.0 if self._short_since is None else now - self._short_since
        p = self.params
        if enough and not self.running and enough_for >= p.start_delay_s - _EPS:
            log.info("solar surplus %.1f A for %.0f s: charging starts", s.amps, enough_for)
            self.running, self.state = True, "running"
        if not enough and self.running and short_for >= p.stop_delay_s - _EPS:
            log.info("solar surplus %.1f A below %g A for %.0f s: charging stops", s.amps, MIN_CURRENT_A, short_for)
            self.running, self.state = False, "waiting"
        below = f"solar surplus {s.amps:.1f} A < {MIN_CURRENT_A:g} A for {_duration(short_for)}"
        if self.running and enough:
            amps = max(MIN_CURRENT_A, math.floor(s.amps / STEP_A + _EPS) * STEP_A)
            return self._set(amps, f"solar surplus {s.amps:.1f} A ({_flow(s.grid_w)})")
        if self.running:  # too little, but not for stop_delay_s yet: the IEC minimum, the grid gives the rest
            left = _duration(p.stop_delay_s - short_for)
            return self._set(MIN_CURRENT_A, f"{below}: {MIN_CURRENT_A:g} A, stop in {left}")
        if enough:
            wait = _duration(p.start_delay_s - enough_for)
            return self._set(0.0, f"solar surplus {s.amps:.1f} A >= {MIN_CURRENT_A:g} A: starting in {wait}")
        return self._set(0.0, f"{below}: waiting")

    def on_failure(self, error: str, now: float) -> SolarDecision:
        """A grid read failed at ``now``: hold the claim until the data is stale, then pause (0 A)."""
        self.last_error = error
        age = self.age(now)
        if self.state != "stale" and (self.last_good_at is None or age >= self.params.stale_after_s - _EPS):
            silent = "no grid meter reading yet" if self.last_good_at is None else f"grid meter silent {age:.0f} s"
            log.warning("%s (%s): solar charging paused until it answers", silent, error)
            self.state, self.running = "stale", False
            self._enough_since = self._short_since = None
            return self._set(0.0, f"{silent}: paused, solar surplus unknown")
        log.debug("grid meter read failed (data %.1f s old): %s", age, error)
        return self.claim

    def _set(self, amps: float, reason: str) -> SolarDecision:
        if (self.claim.current_a, self.claim.reason) != (amps, reason):
            self.claim = SolarDecision(amps, reason)
        return self.claim

    def describe(self, now: float) -> dict[str, Any]:
        """The status API's view of solar charging."""
        p, s = self.params, self.last
        start_in = stop_in = None
        if self._enough_since is not None and not self.running:
            start_in = round(max(0.0, self._enough_since + p.start_delay_s - now), 1)
        if self._short_since is not None and self.running:
            stop_in = round(max(0.0, self._short_since + p.stop_delay_s - now), 1)
        return {
            "state": self.state,
            "running": self.running,
            "claim_a": round(self.claim.current_a, 2),
            "reason": self.claim.reason,
            "surplus_a": None if s is None else round(s.amps, 2),
            "surplus_w": None if s is None else round(s.watts, 1),
            "grid_w": None if s is None else round(s.grid_w, 1),
            "own_w": None if s is None else round(s.own_w, 1),
            "voltage_v": None if s is None else round(s.voltage_v, 1),
            "phases": None if s is None else s.phases,
            "start_in_s": start_in,
            "stop_in_s": stop_in,
            "age_s": round(self.age(now), 1),
            "last_error": self.last_error,
            "start_delay_s": p.start_delay_s,
            "stop_delay_s": p.stop_delay_s,
            "allow_import_w": p.allow_import_w,
        }


class SolarGuard:
    """Reads the grid meter, feeds :class:`SolarCore` and submits its claim as source "solar".

    ``own_reading`` returns the charger's latest own meter reading (e.g. ``MeterSampler.latest``). An
    enabled guard claims 0 A ("waiting") from construction on, before its first poll.
    """

    def __init__(
        self,
        grid_meter: EnergyMeter,
        arbiter: Arbiter,
        clock: Clock,
        own_reading: Callable[[], MeterReading | None],
        params: SolarParams,
        own_meter: EnergyMeter | None = None,
    ) -> None:
        self.meter = grid_meter
        self.own_meter = own_meter
        self.arbiter = arbiter
        self.clock = clock
        self.own_reading = own_reading
        self.params = params
        self.core = SolarCore(params, clock.monotonic())
        if params.enabled:
            # Claim 0 A from the start: a car that plugs in before the first poll must not charge from the grid.
            self._submit(self.core.claim)

    def _submit(self, decision: SolarDecision) -> None:
        self.arbiter.submit(SOURCE, decision.current_a, self.clock.monotonic(), reason=decision.reason)

    def set_enabled(self, enabled: bool) -> None:
        """Solar mode on or off at run time. Off withdraws the claim at once; on starts over with a 0 A
        claim (charging waits for ``start_delay_s`` of surplus), so turning it on never charges from the grid."""
        if enabled == self.params.enabled:
            return
        self.params = dataclasses.replace(self.params, enabled=enabled)
        now = self.clock.monotonic()
        self.core = SolarCore(self.params, now)
        log.info("solar charging %s", "enabled" if enabled else "disabled")
        if enabled:
            self._submit(self.core.claim)
        else:
            self.arbiter.withdraw(SOURCE)

    async def poll_once(self) -> SolarDecision | None:
        """One grid read, one update, one submit; returns the claim now standing (None while disabled)."""
        if not self.params.enabled:
            self.arbiter.withdraw(SOURCE)
            return None
        own = await fresh_reading(self.own_meter, self.own_reading, self.params.read_timeout_s)
        reading = await read_or_why_not(self.meter, self.params.read_timeout_s)
        if isinstance(reading, str):
            decision = self.core.on_failure(reading, self.clock.monotonic())
        else:
            decision = self.core.on_reading(reading, own, self.clock.monotonic())
        self._submit(decision)
        return decision

    async def run(self) -> None:
        """Poll every ``poll_interval_s`` until cancelled; the claim stays when stopped."""
        await poll_forever(self.poll_once, self.params.poll_interval_s, "solar")

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.params.enabled, **self.core.describe(self.clock.monotonic())}
