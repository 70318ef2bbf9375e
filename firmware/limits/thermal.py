"""Thermal derating: less current when the charger's own temperature sensor reads hot.

Terminals, contactor and cable heat with the current squared. Below ``derate_start_c`` the charger
may give its full current; from there the claim falls linearly to 6 A at ``cutoff_c``; above the
cutoff it claims 0 (the connector pauses) and stays paused until the temperature has fallen below
``cutoff_c - hysteresis_c``, so it does not cycle on and off around the cutoff. A claim rises only
when the temperature has fallen ``rise_deadband_c`` further than the value it stands for, so sensor
noise around a point of the curve does not move the PWM every poll. A thermometer that stops
answering (or reads nonsense) is not trusted to be cool: the claim falls to ``failure_a``, and a
paused charger stays paused.

This is the soft limit; the hard-wired over-temperature input ("overtemp") still trips the charger.
:class:`ThermalCore` is pure (time comes in); :class:`ThermalGuard` reads the sensor and submits
the claim to the arbiter as source ``"thermal"``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any, Final

from firmware.limits.arbiter import Arbiter
from hal.clock import Clock
from hal.iec61851 import MIN_CURRENT_A
from hal.interfaces import DeviceError, Thermometer

log = logging.getLogger("firmware.limits.thermal")

#: The arbiter source name of this limit.
SOURCE: Final = "thermal"
_EPS: Final = 1e-9


@dataclass(frozen=True, slots=True)
class ThermalParams:
    """The derating curve (``[thermal]`` in the configuration) and how the sensor is polled."""

    derate_start_c: float = 60.0
    cutoff_c: float = 80.0
    hysteresis_c: float = 5.0
    #: Claimed below ``derate_start_c``: the charger's rating, so the curve starts where the charger does.
    full_a: float = 32.0
    #: Claimed when the thermometer fails (never more than the claim standing then).
    failure_a: float = MIN_CURRENT_A
    #: A reading older than this means the thermometer has failed (one glitch does not move the claim).
    stale_after_s: float = 10.0
    poll_interval_s: float = 2.0
    #: A claim rises only when the curve allows more even this much hotter.
    rise_deadband_c: float = 1.0
    #: The curve is rounded down to steps of this: temperature moves slowly, and every step is a PWM change.
    step_a: float = 1.0
    #: Readings outside this range are a broken sensor (a DS18B20 says -127 or 85 when it fails).
    plausible_min_c: float = -40.0
    plausible_max_c: float = 150.0

    def __post_init__(self) -> None:
        for name in ("derate_start_c", "cutoff_c", "plausible_min_c", "plausible_max_c"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite temperature, got {getattr(self, name)!r}")
        if not self.cutoff_c > self.derate_start_c:
            raise ValueError(f"cutoff_c ({self.cutoff_c!r}) must be above derate_start_c ({self.derate_start_c!r})")
        if not self.plausible_max_c > self.plausible_min_c:
            raise ValueError("plausible_max_c must be above plausible_min_c")
        for name in ("hysteresis_c", "rise_deadband_c"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not (math.isfinite(self.full_a) and self.full_a >= MIN_CURRENT_A):
            raise ValueError(f"full_a must be at least {MIN_CURRENT_A:g} A, got {self.full_a!r}")
        if not (math.isfinite(self.failure_a) and self.failure_a >= 0):
            raise ValueError(f"failure_a must be >= 0, got {self.failure_a!r}")
        if not (math.isfinite(self.step_a) and self.step_a > 0):
            raise ValueError(f"step_a must be positive, got {self.step_a!r}")
        for name in ("stale_after_s", "poll_interval_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive, got {value!r}")


@dataclass(frozen=True, slots=True)
class ThermalDecision:
    """The claim to submit: amperes per phase, and why."""

    current_a: float
    reason: str


def derate_a(params: ThermalParams, celsius: float) -> float:
    """The curve without memory: full up to the start, linear to 6 A at the cutoff, 0 above it.

    The slope is rounded down to ``step_a`` and never goes below 6 A.
    """
    if celsius > params.cutoff_c:
        return 0.0
    if celsius <= params.derate_start_c:
        return params.full_a
    fraction = (celsius - params.derate_start_c) / (params.cutoff_c - params.derate_start_c)
    amps = params.full_a - (params.full_a - MIN_CURRENT_A) * fraction
    return max(MIN_CURRENT_A, math.floor(amps / params.step_a + _EPS) * params.step_a)


class ThermalCore:
    """The derating logic: temperatures and failures in, the claim out. Pure: time is passed in.

    ``state`` is "starting" (no reading yet), "ok", "derating", "paused" or "failed".
    """

    def __init__(self, params: ThermalParams, now: float) -> None:
        self.params = params
        self.started_at = now
        self.state = "starting"
        self.paused = False
        self.claim: ThermalDecision | None = None
        self.last_c: float | None = None
        self.last_good_at: float | None = None
        self.last_error: str | None = None

    def age(self, now: float) -> float:
        return now - (self.started_at if self.last_good_at is None else self.last_good_at)

    def on_reading(self, celsius: float, now: float) -> ThermalDecision:
        p = self.params
        if not (math.isfinite(celsius) and p.plausible_min_c <= celsius <= p.plausible_max_c):
            return self.on_failure(f"implausible reading {celsius!r} °C", now)
        if self.state == "failed":
            log.warning("thermometer reads again (%.1f °C) after %.0f s: derating follows it", celsius, self.age(now))
        self.last_c = celsius
        self.last_good_at = now
        self.last_error = None
        resume_below = p.cutoff_c - p.hysteresis_c
        if celsius > p.cutoff_c and not self.paused:
            log.warning("charger at %.1f °C, above the %g °C cutoff: charging paused", celsius, p.cutoff_c)
            self.paused = True
        elif self.paused and celsius < resume_below:
            log.warning("charger cooled to %.1f °C (below %g °C): charging resumes", celsius, resume_below)
            self.paused = False
        if self.paused:
            self.state = "paused"
            reason = f"{celsius:.1f} °C above cutoff {p.cutoff_c:g} °C: paused until below {resume_below:g} °C"
            return self._set(0.0, reason)
        self.state = "ok" if celsius <= p.derate_start_c else "derating"
        now_a = derate_a(p, celsius)
        claim = self.claim
        if claim is not None and now_a >= claim.current_a:
            # Hold unless the curve gives more even a deadband hotter: no chatter on sensor noise.
            # (Capped at the cutoff: just after a resume the deadband must not reach into the paused range.)
            rise_a = derate_a(p, min(celsius + p.rise_deadband_c, p.cutoff_c))
            if rise_a <= claim.current_a:
                return claim
            now_a = rise_a
        if now_a >= p.full_a:
            reason = f"{celsius:.1f} °C, below derate start {p.derate_start_c:g} °C: full {p.full_a:g} A"
        else:
            reason = f"{celsius:.1f} °C, derating {p.derate_start_c:g}-{p.cutoff_c:g} °C: {now_a:.1f} A"
        return self._set(now_a, reason)

    def on_failure(self, error: str, now: float) -> ThermalDecision:
        """A read failed: hold the claim until the data is stale, then claim ``failure_a`` (never more)."""
        self.last_error = error
        age = self.age(now)
        if self.state != "failed" and (self.last_good_at is None or age >= self.params.stale_after_s - _EPS):
            held = self.claim
            amps = self.params.failure_a if held is None else min(self.params.failure_a, held.current_a)
            log.warning(
                "thermometer failed (%s), no reading for %.0f s: thermal limit %g A until it reads again",
                error,
                age,
                amps,
            )
            self.state = "failed"
            paused = " while paused" if self.paused else ""
            return self._set(amps, f"thermometer failed{paused} ({error}): {amps:g} A")
        log.debug("thermometer read failed (reading %.1f s old): %s", age, error)
        if self.claim is None:  # unreachable: without a claim there was no good reading, so it failed above
            raise AssertionError("thermal limit without a claim")
        return self.claim

    def _set(self, amps: float, reason: str) -> ThermalDecision:
        claim = self.claim
        if claim is None or claim.current_a != amps or claim.reason != reason:
            claim = self.claim = ThermalDecision(amps, reason)
        return claim

    def describe(self, now: float) -> dict[str, Any]:
        p = self.params
        return {
            "state": self.state,
            "temperature_c": None if self.last_c is None else round(self.last_c, 2),
            "age_s": round(self.age(now), 1),
            "claim_a": None if self.claim is None else round(self.claim.current_a, 2),
            "reason": None if self.claim is None else self.claim.reason,
            "derate_start_c": p.derate_start_c,
            "cutoff_c": p.cutoff_c,
            "resume_below_c": p.cutoff_c - p.hysteresis_c,
            "last_error": self.last_error,
        }


class ThermalGuard:
    """Reads the thermometer, feeds :class:`ThermalCore` and submits its claim as source "thermal"."""

    def __init__(self, thermometer: Thermometer, arbiter: Arbiter, clock: Clock, params: ThermalParams) -> None:
        self.thermometer = thermometer
        self.arbiter = arbiter
        self.clock = clock
        self.params = params
        self.core = ThermalCore(params, clock.monotonic())

    async def poll_once(self) -> ThermalDecision:
        """One read, one update, one submit; returns the claim now standing."""
        try:
            celsius = self.thermometer.read_c()
        except DeviceError as exc:
            decision = self.core.on_failure(str(exc), self.clock.monotonic())
        except Exception as exc:  # a driver bug must not end thermal protection: count it as a failed read
            log.exception("thermometer read raised an unexpected error")
            decision = self.core.on_failure(f"{type(exc).__name__}: {exc}", self.clock.monotonic())
        else:
            decision = self.core.on_reading(celsius, self.clock.monotonic())
        self.arbiter.submit(SOURCE, decision.current_a, self.clock.monotonic(), reason=decision.reason)
        return decision

    async def run(self) -> None:
        """Poll every ``poll_interval_s`` until cancelled; the claim stays when stopped."""
        task = asyncio.current_task()
        while True:
            try:
                await self.poll_once()
            except Exception:
                log.exception("thermal poll failed")
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # a driver swallowed our cancellation: honour it here
            await asyncio.sleep(self.params.poll_interval_s)

    def describe(self) -> dict[str, Any]:
        return self.core.describe(self.clock.monotonic())
