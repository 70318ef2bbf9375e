"""Site fuse protection: keep the house's main fuse from tripping while the car charges.

The grid (house) meter sits upstream of the charger and sees everything: the house's own load plus
the charger. Per phase the charger may take what the fuse leaves after the rest of the house and
a margin::

    allowed = fuse - (grid current - the charger's own current) - margin

taken as the minimum over the grid phases the charger is wired to. Drops apply at once (a fuse
does not wait); rises only once the higher value has held for ``rise_delay_s``, so a kettle that
switches off for a moment does not make the charger jump up and straight back down. When the grid
meter goes quiet the charger neither stops nor runs unguarded: it claims ``fallback_a``.

:class:`SiteFuseCore` is the pure logic (time comes in); :class:`SiteFuseGuard` reads the meter
and submits the claim to the arbiter as source ``"site"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from firmware.limits.arbiter import Arbiter
from firmware.limits.polling import poll_forever, read_or_why_not
from firmware.metering import fresh_reading
from hal.clock import Clock
from hal.interfaces import EnergyMeter, MeterReading

log = logging.getLogger("firmware.limits.site")

#: The arbiter source name of this limit.
SOURCE: Final = "site"
#: Claims are rounded down to this step: never above the computed headroom, and meter noise below a
#: step does not move the claim.
STEP_A: Final = 0.1
_EPS: Final = 1e-9


@dataclass(frozen=True, slots=True)
class SiteFuseParams:
    """The site fuse settings (``[site]`` in the configuration) and the charger's wiring."""

    #: The main fuse, per phase.
    fuse_a: float
    #: Kept free below the fuse (meter error, loads switching on between two reads).
    margin_a: float = 2.0
    #: Claimed while grid data is stale: neither stop nor full.
    fallback_a: float = 6.0
    #: Grid data older than this is stale (meter silent or failing).
    stale_after_s: float = 5.0
    #: More headroom must hold this long before the claim rises; drops apply at once.
    rise_delay_s: float = 10.0
    poll_interval_s: float = 1.0
    #: The grid phases (1..3) the charger's L1, L2, L3 are wired to, in that order: (1, 2, 3) for a
    #: straight three-phase install, (2,) for a single-phase charger on the grid's L2, (2, 3, 1) rotated.
    phases: tuple[int, ...] = (1, 2, 3)
    #: A grid read that has not answered after this counts as failed (a hung bus must not stall the guard).
    read_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fuse_a) and self.fuse_a > 0):
            raise ValueError(f"fuse_a must be a positive current, got {self.fuse_a!r}")
        if not (math.isfinite(self.margin_a) and 0 <= self.margin_a < self.fuse_a):
            raise ValueError(f"margin_a must be >= 0 and below the fuse, got {self.margin_a!r}")
        if not (math.isfinite(self.fallback_a) and self.fallback_a >= 0):
            raise ValueError(f"fallback_a must be >= 0, got {self.fallback_a!r}")
        for name in ("stale_after_s", "poll_interval_s", "read_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive, got {value!r}")
        if not (math.isfinite(self.rise_delay_s) and self.rise_delay_s >= 0):
            raise ValueError(f"rise_delay_s must be >= 0, got {self.rise_delay_s!r}")
        if not self.phases or len(set(self.phases)) != len(self.phases) or any(p not in (1, 2, 3) for p in self.phases):
            raise ValueError(f"phases must name distinct grid phases 1..3, got {self.phases!r}")


@dataclass(frozen=True, slots=True)
class PhaseHeadroom:
    """One grid phase the charger uses, as one grid reading shows it."""

    #: Grid phase number, 1..3.
    phase: int
    grid_a: float
    #: The charger's own current on this phase (0 when unknown).
    own_a: float
    #: The rest of the house: grid minus the charger, never below 0.
    other_a: float
    #: What the charger may take on this phase (>= 0, rounded down to :data:`STEP_A`).
    allowed_a: float


@dataclass(frozen=True, slots=True)
class SiteDecision:
    """The claim to submit: amperes per phase, and why."""

    current_a: float
    reason: str


def _floor_step(amps: float) -> float:
    return max(0.0, math.floor(amps / STEP_A + _EPS) * STEP_A)


def headroom(params: SiteFuseParams, grid: MeterReading, own: MeterReading | None) -> list[PhaseHeadroom] | None:
    """Per wired phase: other load and allowed charger current. None if a wired phase has no valid grid current."""
    rows: list[PhaseHeadroom] = []
    for index, phase in enumerate(params.phases):
        grid_a = grid.current_a[phase - 1]
        if grid_a is None or not math.isfinite(grid_a):
            return None
        own_value = None if own is None else own.current_a[index]
        own_a = own_value if own_value is not None and math.isfinite(own_value) else 0.0
        # A charger current above the grid's (meters read at different instants) would make the rest
        # of the house negative and the headroom larger than the fuse: count it as 0 instead.
        other = max(0.0, grid_a - own_a)
        allowed = _floor_step(params.fuse_a - other - params.margin_a)
        rows.append(PhaseHeadroom(phase, grid_a, own_a, other, allowed))
    return rows


def explain(params: SiteFuseParams, row: PhaseHeadroom) -> str:
    return (
        f"fuse {params.fuse_a:g} A - other load {row.other_a:.1f} A (L{row.phase}) - margin {params.margin_a:g} A"
        f" = {row.allowed_a:.1f} A"
    )


class SiteFuseCore:
    """The site limit's logic: readings and failures in, the claim out. Pure: time is passed in.

    ``state`` is "starting" (no grid data yet), "ok" (fresh data) or "stale" (claiming the fallback).
    """

    def __init__(self, params: SiteFuseParams, now: float) -> None:
        self.params = params
        self.started_at = now
        self.state = "starting"
        self.claim: SiteDecision | None = None
        self.last_good_at: float | None = None
        self.last_rows: list[PhaseHeadroom] = []
        #: L1..L3 currents of the last good grid reading.
        self.last_grid_a: tuple[float | None, float | None, float | None] | None = None
        self.last_error: str | None = None
        #: A pending rise: (since, lowest allowance seen since then, its reason).
        self._rise: tuple[float, float, str] | None = None

    def age(self, now: float) -> float:
        """Seconds since the last good grid reading (since start when there was none)."""
        return now - (self.started_at if self.last_good_at is None else self.last_good_at)

    def on_reading(self, grid: MeterReading, own: MeterReading | None, now: float) -> SiteDecision:
        """A grid reading arrived at ``now``; ``own`` is the charger's latest own reading (None = unknown)."""
        rows = headroom(self.params, grid, own)
        if rows is None:
            wired = ", ".join(f"L{p}" for p in self.params.phases)
            return self.on_failure(f"grid meter reading lacks a valid current on a wired phase ({wired})", now)
        if self.state == "stale":
            log.warning(
                "grid meter answers again after %.0f s without data: site limit follows the readings", self.age(now)
            )
        self.state = "ok"
        self.last_good_at = now
        self.last_rows = rows
        self.last_grid_a = grid.current_a
        self.last_error = None
        tightest = min(rows, key=lambda r: (r.allowed_a, r.phase))
        return self._follow(tightest.allowed_a, explain(self.params, tightest), now)

    def on_failure(self, error: str, now: float) -> SiteDecision:
        """A grid read failed at ``now``: hold the claim until the data is stale, then fall back."""
        self.last_error = error
        age = self.age(now)
        if self.state != "stale" and (self.last_good_at is None or age >= self.params.stale_after_s - _EPS):
            fallback = self.params.fallback_a
            if self.last_good_at is None:
                silent = "no grid meter reading yet"
                log.warning("no grid meter reading since start (%s): site limit falls back to %g A", error, fallback)
            else:
                silent = f"grid meter silent {age:.0f} s"
                log.warning(
                    "grid meter silent for %.0f s (%s): site limit falls back to %g A until it answers",
                    age,
                    error,
                    fallback,
                )
            self.state = "stale"
            self.claim = SiteDecision(fallback, f"{silent}: fallback {fallback:g} A")
            self._rise = None
        else:
            log.debug("grid meter read failed (data %.1f s old): %s", age, error)
        if self.claim is None:  # unreachable: without a claim there was no good reading, so stale was entered
            raise AssertionError("site limit without a claim")
        return self.claim

    def _follow(self, allowed: float, reason: str, now: float) -> SiteDecision:
        """Drop at once; rise to the lowest value seen once higher values have held ``rise_delay_s``."""
        claim = self.claim
        if claim is None or allowed <= claim.current_a:
            self._rise = None
            if claim is None or allowed < claim.current_a:
                claim = self.claim = SiteDecision(allowed, reason)
            return claim
        since, lowest, why = self._rise if self._rise is not None else (now, allowed, reason)
        if allowed < lowest:
            lowest, why = allowed, reason
        self._rise = (since, lowest, why)
        if now - since >= self.params.rise_delay_s - _EPS:
            claim = self.claim = SiteDecision(lowest, why)
            self._rise = None
        return claim

    def describe(self, now: float) -> dict[str, Any]:
        """The status API's view of the site limit."""
        rise = self._rise
        return {
            "state": self.state,
            "fuse_a": self.params.fuse_a,
            "margin_a": self.params.margin_a,
            "fallback_a": self.params.fallback_a,
            "claim_a": None if self.claim is None else round(self.claim.current_a, 2),
            "reason": None if self.claim is None else self.claim.reason,
            "age_s": round(self.age(now), 1),
            "last_error": self.last_error,
            "grid_a": None
            if self.last_grid_a is None
            else [None if a is None else round(a, 2) for a in self.last_grid_a],
            "phases": [
                {
                    "phase": f"L{r.phase}",
                    "grid_a": round(r.grid_a, 2),
                    "own_a": round(r.own_a, 2),
                    "other_a": round(r.other_a, 2),
                    "allowed_a": round(r.allowed_a, 2),
                }
                for r in self.last_rows
            ],
            "rise_pending": None
            if rise is None
            else {"to_a": round(rise[1], 2), "in_s": round(max(0.0, rise[0] + self.params.rise_delay_s - now), 1)},
        }


class SiteFuseGuard:
    """Reads the grid meter, feeds :class:`SiteFuseCore` and submits its claim as source "site".

    ``own_reading`` returns the charger's latest own meter reading (e.g. ``MeterSampler.latest``).
    """

    def __init__(
        self,
        grid_meter: EnergyMeter,
        arbiter: Arbiter,
        clock: Clock,
        own_reading: Callable[[], MeterReading | None],
        params: SiteFuseParams,
        own_meter: EnergyMeter | None = None,
    ) -> None:
        self.meter = grid_meter
        self.arbiter = arbiter
        self.clock = clock
        self.own_reading = own_reading
        self.own_meter = own_meter
        self.params = params
        self.core = SiteFuseCore(params, clock.monotonic())

    async def poll_once(self) -> SiteDecision:
        """One grid read, one update, one submit; returns the claim now standing."""
        own = await fresh_reading(self.own_meter, self.own_reading, self.params.read_timeout_s)
        reading = await read_or_why_not(self.meter, self.params.read_timeout_s)
        if isinstance(reading, str):
            decision = self.core.on_failure(reading, self.clock.monotonic())
        else:
            decision = self.core.on_reading(reading, own, self.clock.monotonic())
        self.arbiter.submit(SOURCE, decision.current_a, self.clock.monotonic(), reason=decision.reason)
        return decision

    async def run(self) -> None:
        """Poll every ``poll_interval_s`` until cancelled; the claim stays when stopped (no limit would be worse)."""
        await poll_forever(self.poll_once, self.params.poll_interval_s, "site fuse")

    def describe(self) -> dict[str, Any]:
        return self.core.describe(self.clock.monotonic())
