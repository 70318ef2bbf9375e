"""What a session costs by the local tariff: the exact components, the rounded cost, the cost meter fed with
meter samples, and summaries of many sessions. The pricing rules and the rounding are described in
:mod:`firmware.payment.tariff`."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from firmware.payment.tariff import (
    CHARGING_MIN_A,
    US_PER_HOUR,
    WIDE_CONTEXT,
    Tariff,
    TimeBasis,
    allocate,
    aware_utc,
    register_wh,
)
from hal.interfaces import MeterReading

# ── costs ──────────────────────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class ExactCost:
    """The unrounded components (exact rationals in the currency's units)."""

    energy: Fraction = Fraction(0)
    time: Fraction = Fraction(0)
    fee: Fraction = Fraction(0)
    idle: Fraction = Fraction(0)

    @property
    def total(self) -> Fraction:
        return self.energy + self.time + self.fee + self.idle

    def __add__(self, other: ExactCost) -> ExactCost:
        return ExactCost(
            self.energy + other.energy, self.time + other.time, self.fee + other.fee, self.idle + other.idle
        )


@dataclass(frozen=True)
class Cost:
    """A session's cost at one instant: rounded parts that add up to the rounded total, and what they came from."""

    currency: str
    decimals: int
    energy: Decimal
    time: Decimal
    fee: Decimal
    idle: Decimal
    total: Decimal
    exact: ExactCost
    #: Energy from the import register over the session so far (Wh).
    energy_wh: Decimal
    charging_time: timedelta
    connected_time: timedelta
    #: Idle time charged for (after the grace).
    idle_time: timedelta
    #: The instant this cost is for (UTC).
    at: datetime
    final: bool = False

    @classmethod
    def from_exact(
        cls,
        exact: ExactCost,
        currency: str,
        decimals: int,
        *,
        energy_wh: Decimal = Decimal(0),
        charging_time: timedelta = timedelta(0),
        connected_time: timedelta = timedelta(0),
        idle_time: timedelta = timedelta(0),
        at: datetime,
        final: bool = False,
    ) -> Cost:
        (energy, time_, fee, idle), total = allocate([exact.energy, exact.time, exact.fee, exact.idle], decimals)
        return cls(
            currency, decimals, energy, time_, fee, idle, total, exact, energy_wh, charging_time, connected_time,
            idle_time, at, final,
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """For the status API and the ledger: amounts as decimal strings (never floats)."""
        return {
            "currency": self.currency,
            "total": str(self.total),
            "energy": str(self.energy),
            "time": str(self.time),
            "fee": str(self.fee),
            "idle": str(self.idle),
            "energy_wh": str(self.energy_wh),
            "charging_s": self.charging_time.total_seconds(),
            "connected_s": self.connected_time.total_seconds(),
            "idle_s": self.idle_time.total_seconds(),
            "at": self.at.isoformat(),
            "final": self.final,
        }


@dataclass(frozen=True)
class Sample:
    """One meter sample for the cost meter: when, the import register, and the current (highest phase)."""

    at: datetime
    #: Import register (Wh), exact; use :func:`register_wh` or :meth:`from_reading` for a meter's float.
    energy_wh: Decimal
    current_a: float = 0.0
    #: The charger withholds current now (SuspendedEVSE: off-peak hold, load shedding, a paused session): not idle.
    evse_suspended: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", aware_utc("sample time", self.at))
        if isinstance(self.energy_wh, float):
            raise TypeError("Sample.energy_wh must be exact: pass register_wh(x) or use Sample.from_reading")
        object.__setattr__(self, "energy_wh", register_wh(self.energy_wh))
        current = self.current_a
        if (
            isinstance(current, bool)
            or not isinstance(current, int | float)
            or not math.isfinite(current)
            or current < 0
        ):
            raise ValueError(f"current must be a finite number >= 0 A, got {current!r}")

    @classmethod
    def from_reading(cls, at: datetime, reading: MeterReading, *, evse_suspended: bool = False) -> Sample:
        """From a meter snapshot; ``at`` is wall-clock time (the reading's own stamp is monotonic)."""
        amps = [a for a in reading.current_a if a is not None]
        return cls(at, register_wh(reading.energy_import_wh), max(amps, default=0.0), evse_suspended)


def _us(d: timedelta) -> int:
    return d // timedelta(microseconds=1)


@dataclass(frozen=True)
class _Tally:
    energy: Fraction = Fraction(0)
    time: Fraction = Fraction(0)
    idle: Fraction = Fraction(0)
    energy_wh: Decimal = Decimal(0)
    charging_time: timedelta = timedelta(0)
    idle_time: timedelta = timedelta(0)
    has_charged: bool = False
    #: Start of the current run of no current after charging (None while charging or before any charging).
    idle_since: datetime | None = None


def _advance(tariff: Tariff, tally: _Tally, s0: Sample, s1: Sample) -> _Tally:
    """Add the stretch from ``s0`` to ``s1``; pure."""
    span = s1.at - s0.at
    if span < timedelta(0):
        raise ValueError(f"sample at {s1.at.isoformat()} is before the previous one at {s0.at.isoformat()}")
    delta_wh = s1.energy_wh - s0.energy_wh
    if delta_wh < 0:
        raise ValueError(f"import register went backwards: {s0.energy_wh} Wh -> {s1.energy_wh} Wh")
    charging = delta_wh > 0 or s0.current_a >= CHARGING_MIN_A
    kwh = Fraction(delta_wh) / 1000
    span_us = _us(span)
    energy, time_cost = tally.energy, tally.time
    if span_us == 0:
        energy += kwh * Fraction(tariff.prices_at(s0.at)[0])
    for a, b, band in tariff.pieces(s0.at, s1.at):
        per_kwh, per_hour = tariff._prices(band)
        piece_us = _us(b - a)
        energy += kwh * Fraction(piece_us, span_us) * Fraction(per_kwh)
        if charging or tariff.time_basis is TimeBasis.CONNECTED:
            time_cost += Fraction(piece_us, US_PER_HOUR) * Fraction(per_hour)
    idle, idle_time, idle_since = tally.idle, tally.idle_time, tally.idle_since
    if charging or s0.evse_suspended or not tally.has_charged:
        idle_since = None
    else:
        if idle_since is None:
            idle_since = s0.at
        grace = timedelta(minutes=tariff.idle_grace_min)
        billed = max(timedelta(0), s1.at - idle_since - grace) - max(timedelta(0), s0.at - idle_since - grace)
        idle_time += billed
        idle += Fraction(_us(billed), US_PER_HOUR) * Fraction(tariff.idle_per_hour)
    return _Tally(
        energy=energy,
        time=time_cost,
        idle=idle,
        energy_wh=tally.energy_wh + delta_wh,
        charging_time=tally.charging_time + (span if charging else timedelta(0)),
        idle_time=idle_time,
        has_charged=tally.has_charged or charging,
        idle_since=idle_since,
    )


class CostMeter:
    """A session's running cost by the local tariff, fed with timestamped meter samples.

    Between samples the state of the last sample is assumed to hold: :meth:`running` at a later instant adds time
    and idle for the gap, but no energy (energy comes only from the register). Pure: time is passed in.
    """

    def __init__(self, tariff: Tariff, start: Sample) -> None:
        self.tariff = tariff
        self.start = start
        self._last = start
        self._tally = _Tally()
        self._final: Cost | None = None

    @property
    def last(self) -> Sample:
        return self._last

    @property
    def finished(self) -> bool:
        return self._final is not None

    def add(self, sample: Sample) -> None:
        """Account for the stretch since the previous sample; ``ValueError`` if time or the register went back."""
        if self._final is not None:
            raise ValueError("the session's cost is final; start a new CostMeter for a new session")
        self._tally = _advance(self.tariff, self._tally, self._last, sample)
        self._last = sample

    def exact(self, at: datetime | None = None) -> ExactCost:
        """The unrounded components at ``at`` (default: the last sample)."""
        tally = self._tally_at(at)
        return ExactCost(tally.energy, tally.time, Fraction(self.tariff.session_fee), tally.idle)

    def _tally_at(self, at: datetime | None) -> _Tally:
        if at is None or self._final is not None:
            return self._tally
        held = Sample(at, self._last.energy_wh, self._last.current_a, self._last.evse_suspended)
        return _advance(self.tariff, self._tally, self._last, held)

    def running(self, at: datetime | None = None) -> Cost:
        """The cost so far at ``at`` (not before the last sample; default: the last sample)."""
        if self._final is not None:
            return self._final
        when = self._last.at if at is None else aware_utc("at", at)
        tally = self._tally_at(when)
        return self._cost(tally, when, final=False)

    def finish(self, sample: Sample | None = None) -> Cost:
        """Close the session (with its last sample, e.g. the meterStop reading) and return the final cost."""
        if self._final is None:
            if sample is not None:
                self.add(sample)
            self._final = self._cost(self._tally, self._last.at, final=True)
        elif sample is not None:
            raise ValueError("the session's cost is already final")
        return self._final

    def _cost(self, tally: _Tally, at: datetime, *, final: bool) -> Cost:
        exact = ExactCost(tally.energy, tally.time, Fraction(self.tariff.session_fee), tally.idle)
        return Cost.from_exact(
            exact,
            self.tariff.currency,
            self.tariff.decimals,
            energy_wh=tally.energy_wh,
            charging_time=tally.charging_time,
            connected_time=at - self.start.at,
            idle_time=tally.idle_time,
            at=at,
            final=final,
        )


def session_cost(tariff: Tariff, samples: Iterable[Sample]) -> Cost:
    """The final cost of a whole session from its samples (the first is the start)."""
    it = iter(samples)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("a session needs at least its start sample") from None
    meter = CostMeter(tariff, first)
    for s in it:
        meter.add(s)
    return meter.finish()


@dataclass(frozen=True)
class CostSummary:
    """Totals over many sessions: the sums of what each session was billed (its rounded parts)."""

    currency: str
    decimals: int
    sessions: int
    energy: Decimal
    time: Decimal
    fee: Decimal
    idle: Decimal
    total: Decimal
    energy_wh: Decimal


def summarize(costs: Iterable[Cost], *, currency: str, decimals: int = 2) -> CostSummary:
    """Add up billed sessions exactly (Decimal addition of the rounded amounts, so it equals their sum).

    ``ValueError`` if a session is in another currency; ``decimals`` is the widest of the sessions' and the
    given one.
    """
    n = 0
    energy = time_ = fee = idle = total = Decimal(0)
    wh = Decimal(0)
    places = decimals
    for c in costs:
        if c.currency != currency:
            raise ValueError(f"cannot add a {c.currency} session to a {currency} summary")
        n += 1
        energy, time_, fee, idle, total = energy + c.energy, time_ + c.time, fee + c.fee, idle + c.idle, total + c.total
        wh += c.energy_wh
        places = max(places, c.decimals)
    q = Decimal(1).scaleb(-places)

    def exact(x: Decimal) -> Decimal:  # only adds trailing zeros: every amount has at most `places` places
        return x.quantize(q, context=WIDE_CONTEXT)

    return CostSummary(
        currency=currency,
        decimals=places,
        sessions=n,
        energy=exact(energy),
        time=exact(time_),
        fee=exact(fee),
        idle=exact(idle),
        total=exact(total),
        energy_wh=wh,
    )
