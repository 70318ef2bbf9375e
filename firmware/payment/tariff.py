"""The local tariff: the charger's own price list (the cost meter that applies it: :mod:`firmware.payment.cost`).

The backend's price (California Pricing, :mod:`firmware.payment.costmsg`) wins when it sends one; this local tariff
is for display and offline estimates, and is always labelled as the local estimate by whoever shows it.

Price components (all optional, all >= 0):

* **energy**: ``energy_per_kwh`` times the kWh read from the meter's import register (never integrated power).
* **time**: ``time_per_hour`` per hour. ``time_basis`` says which hours: ``"charging"`` = only while energy flows
  (the CA pricing ``chargingPrice.hourPrice`` sense, the default), ``"connected"`` = the whole session.
* **session fee**: ``session_fee`` once per session (CA ``flatFee``).
* **idle**: ``idle_per_hour`` for the time the car stays plugged in without drawing current after it has charged,
  beyond ``idle_grace_min`` minutes (CA ``idlePrice{graceMinutes, hourPrice}``). Each run of no current restarts the
  grace; time the *charger* withholds current (``Sample.evse_suspended``, e.g. an off-peak hold or load shedding)
  is never idle and also restarts it, because the driver cannot be blamed for it.
* **time-of-use bands**: ``"Mon-Fri 07:00-22:00 kwh=0.45 hour=1.20"`` replaces the energy and/or time price inside
  the band (a price left out keeps the base price). Days and times are written as in ``[offpeak] windows``
  (:mod:`firmware.limits.offpeak`): local wall-clock time in the tariff's IANA zone, so a band keeps its wall-clock
  edges across DST (a spring-forward night is an hour shorter, an edge inside the gap takes effect at the jump, an
  edge inside the repeated fall-back hour at its first pass). Bands must not overlap (checked on the weekly wall
  clock; touching is fine) and are rejected with the two bands and where they collide.

Money is ``decimal.Decimal`` at every boundary; floats are refused (``TypeError``) because they cannot hold most
decimal prices exactly; give prices as strings (``"0.39"``), ints or Decimals. Inside, each component is kept
exact as a ``fractions.Fraction``, since a per-hour price spread over seconds does not terminate in decimal
(1 s at 1.00/h = 0.000277...). Rounding happens once, at the end, to ``decimals`` places with ROUND_HALF_UP (a
tie rounds away from zero):

* ``total = round_half_up(energy + time + fee + idle)`` from the exact parts, and
* the displayed parts are the exact parts with that rounding *allocated* (largest remainder: each part is floored
  to ``decimals``, and the units the total still needs go to the parts with the largest cut-off remainders, ties
  in the order energy, time, fee, idle). So the shown parts always add up to the shown total, and each shown part
  is within one unit of the last place of its exact value.

Energy between two samples is split across price bands in proportion to the time spent in each (the meter gives
no finer information), and the same sample-to-sample stretch decides "charging": it is charging when the register
advanced or the current at its first sample was at least :data:`CHARGING_MIN_A`. Samples must not go back in time
and the register must not go backwards (``ValueError``).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Context, Decimal, InvalidOperation
from fractions import Fraction

from firmware.limits.offpeak import (
    DAY_NAMES,
    Window,
    format_window,
    load_zone,
    parse_window,
    window_occurrences,
    zone_name,
)

Price = Decimal | int | str
"""What a price may be given as; never a float."""

#: Below this current (A, on the highest phase) with an unchanged register, the car is not charging.
CHARGING_MIN_A = 1.0
#: Upper bound for any price or fee: catches a misplaced decimal point (e.g. cents typed as units times 1000).
MAX_PRICE = Decimal(1_000_000)
#: The idle grace can be at most a week.
MAX_GRACE_MIN = 7 * 24 * 60

_CURRENCY = re.compile(r"[A-Z]{3}")
_DAY_MIN = 24 * 60
_WEEK_MIN = 7 * _DAY_MIN
US_PER_HOUR = 3_600_000_000
_MWH_PER_WH = Decimal("0.001")
WIDE_CONTEXT = Context(prec=200)


# ── money at the boundary ──────────────────────────────────────────────────────────────────────────────────────


def to_money(value: object, what: str = "price") -> Decimal:
    """A non-negative, finite price as a Decimal; a float is a ``TypeError`` with the fix in the message."""
    if isinstance(value, float):
        raise TypeError(
            f'{what}: {value!r} is a float; give money as a string such as "{value}", an int or a Decimal '
            "(binary floats cannot hold most decimal prices exactly)"
        )
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise TypeError(f'{what} must be a Decimal, an int or a string such as "0.39", got {type(value).__name__}')
    if isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f'{what}: {value!r} is not a decimal number (write e.g. "0.39")') from None
    else:
        amount = Decimal(value)
    if not amount.is_finite():
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if amount < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    if amount > MAX_PRICE:
        raise ValueError(f"{what} {value!r} is above {MAX_PRICE}: check the decimal point")
    return amount + 0 if amount.is_zero() else amount  # -0 becomes 0


def register_wh(value: float | int | str | Decimal) -> Decimal:
    """A meter's import register (Wh) as an exact Decimal, to 1 mWh.

    Meters hand over floats; their shortest decimal form (``repr``) is taken and rounded half-up to 0.001 Wh,
    far below any meter's resolution, so float noise never reaches the money.
    """
    if isinstance(value, bool):
        raise TypeError("an energy register cannot be a bool")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"energy register must be finite, got {value!r}")
        value = repr(value)
    try:
        wh = Decimal(value)
    except (InvalidOperation, TypeError):
        raise ValueError(f"energy register {value!r} is not a number") from None
    if not wh.is_finite():
        raise ValueError(f"energy register must be finite, got {value!r}")
    if wh < 0:
        raise ValueError(f"energy register must not be negative, got {value!r}")
    return wh.quantize(_MWH_PER_WH, rounding="ROUND_HALF_UP", context=WIDE_CONTEXT)


def _half_up_units(x: Fraction) -> int:
    """``x`` rounded to an integer, ties away from zero."""
    units = math.floor(abs(x) + Fraction(1, 2))
    return -units if x < 0 else units


def _units_to_decimal(units: int, decimals: int) -> Decimal:
    return Decimal(units).scaleb(-decimals, context=WIDE_CONTEXT)


def round_money(value: Fraction | Decimal | int, decimals: int) -> Decimal:
    """``value`` rounded ROUND_HALF_UP to ``decimals`` places, as a Decimal with exactly that many places."""
    return _units_to_decimal(_half_up_units(Fraction(value) * 10**decimals), decimals)


def allocate(parts: Sequence[Fraction], decimals: int) -> tuple[tuple[Decimal, ...], Decimal]:
    """Round non-negative exact parts so that they add up to the rounded sum (largest-remainder allocation)."""
    if any(p < 0 for p in parts):
        raise ValueError("cost parts must not be negative")
    scale = 10**decimals
    total_units = _half_up_units(sum(parts, Fraction(0)) * scale)
    floors = [math.floor(p * scale) for p in parts]
    remainders = [p * scale - f for p, f in zip(parts, floors, strict=True)]
    missing = total_units - sum(floors)  # 0 <= missing <= number of parts with a remainder
    for i in sorted(range(len(parts)), key=lambda i: (-remainders[i], i))[:missing]:
        floors[i] += 1
    return tuple(_units_to_decimal(u, decimals) for u in floors), _units_to_decimal(total_units, decimals)


# ── time-of-use bands ──────────────────────────────────────────────────────────────────────────────────────────

_BAND_EXAMPLE = "expected '<days> HH:MM-HH:MM kwh=<price> hour=<price>', e.g. 'Mon-Fri 07:00-22:00 kwh=0.45'"
_BAND_KEYS = {"kwh": "energy_per_kwh", "hour": "time_per_hour"}


@dataclass(frozen=True)
class Band:
    """A time-of-use band: its weekly wall-clock window and the prices that replace the base inside it."""

    window: Window
    #: Price per kWh inside the band; None = the base price.
    energy_per_kwh: Decimal | None = None
    #: Price per hour inside the band; None = the base price.
    time_per_hour: Decimal | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.window, Window):
            raise TypeError(f"band window must be a Window, got {type(self.window).__name__}")
        for name in ("energy_per_kwh", "time_per_hour"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, to_money(value, f"band {format_window(self.window)} {name}"))
        if self.energy_per_kwh is None and self.time_per_hour is None:
            raise ValueError(f"band {format_window(self.window)} sets no price; {_BAND_EXAMPLE}")

    def __str__(self) -> str:
        return format_band(self)


def parse_band(text: object) -> Band:
    """One band from its config text; ``ValueError`` says what is wrong (the caller adds the config key)."""
    if not isinstance(text, str):
        raise ValueError(f"a band must be a string, got {type(text).__name__}; {_BAND_EXAMPLE}")
    tokens = text.split()
    prices: dict[str, Decimal] = {}
    while tokens and "=" in tokens[-1]:
        key, _, value = tokens.pop().partition("=")
        field_name = _BAND_KEYS.get(key.lower())
        if field_name is None:
            raise ValueError(f"{text!r}: unknown price {key!r} (use kwh=<price per kWh> and/or hour=<price per hour>)")
        if field_name in prices:
            raise ValueError(f"{text!r}: {key.lower()}= is given twice")
        try:
            prices[field_name] = to_money(value, f"{key.lower()} price")
        except (TypeError, ValueError) as e:
            raise ValueError(f"{text!r}: {e}") from None
    if not prices:
        raise ValueError(f"{text!r}: the band sets no price; {_BAND_EXAMPLE}")
    window = parse_window(" ".join(tokens))  # its errors already quote the window text
    return Band(window, prices.get("energy_per_kwh"), prices.get("time_per_hour"))


def format_band(band: Band) -> str:
    """The canonical text of a band; ``parse_band(format_band(b)) == b``."""
    parts = [format_window(band.window)]
    if band.energy_per_kwh is not None:
        parts.append(f"kwh={band.energy_per_kwh}")
    if band.time_per_hour is not None:
        parts.append(f"hour={band.time_per_hour}")
    return " ".join(parts)


def _week_spans(w: Window) -> list[tuple[int, int]]:
    """The window's occurrences as [start, end) minutes from Monday 00:00 (an end may pass the week's end)."""
    length = w.end_min - w.start_min + (_DAY_MIN if w.crosses_midnight else 0)
    return [(d * _DAY_MIN + w.start_min, d * _DAY_MIN + w.start_min + length) for d in sorted(w.days)]


def _week_time(minute: int) -> str:
    minute %= _WEEK_MIN
    day, rest = divmod(minute, _DAY_MIN)
    return f"{DAY_NAMES[day]} {rest // 60:02d}:{rest % 60:02d}"


def _collision(a: Window, b: Window) -> tuple[int, int] | None:
    """Where two windows overlap on the weekly wall clock (first such stretch), or None."""
    for a0, a1 in _week_spans(a):
        for b0, b1 in _week_spans(b):
            for shift in (-_WEEK_MIN, 0, _WEEK_MIN):
                lo, hi = max(a0, b0 + shift), min(a1, b1 + shift)
                if lo < hi:
                    return lo, hi
    return None


def check_bands(bands: Sequence[Band]) -> None:
    """``ValueError`` naming the first two bands that overlap and where; touching bands are fine."""
    for i, a in enumerate(bands):
        for b in bands[i + 1 :]:
            hit = _collision(a.window, b.window)
            if hit is not None:
                lo, hi = hit
                raise ValueError(
                    f"bands '{format_band(a)}' and '{format_band(b)}' overlap from {_week_time(lo)} to "
                    f"{_week_time(hi)}; a time may be in one band only"
                )


def _wall(t: datetime, tz: tzinfo) -> datetime:
    return t.astimezone(tz).replace(tzinfo=None)


def _occurrences(bands: Sequence[Band], tz: tzinfo, first: date, days: int) -> list[tuple[datetime, datetime, Band]]:
    """Each band's occurrences (UTC [from, to)), by start; the off-peak windows' DST rules
    (:func:`firmware.limits.offpeak.window_occurrences`): an existing time is its first occurrence (fold=0), a time
    in a spring-forward gap is the jump itself, so disjoint bands stay disjoint across DST."""
    out = [(a, b, band) for band in bands for a, b in window_occurrences(band.window, tz, first, days)]
    out.sort(key=lambda o: o[0])
    return out


def aware_utc(name: str, value: object) -> datetime:
    """``value`` as an aware datetime; ``ValueError`` naming ``name`` for anything else."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


# ── the tariff ─────────────────────────────────────────────────────────────────────────────────────────────────


class TimeBasis(enum.StrEnum):
    """Which hours the time price applies to."""

    CHARGING = "charging"  # only while energy flows
    CONNECTED = "connected"  # from session start to end, charging or not


@dataclass(frozen=True)
class Tariff:
    """The charger's own price list; prices are coerced with :func:`to_money` (floats refused)."""

    #: ISO 4217 code, e.g. "EUR".
    currency: str = "EUR"
    #: Places the cost is rounded to, 0..4.
    decimals: int = 2
    energy_per_kwh: Decimal = Decimal(0)
    time_per_hour: Decimal = Decimal(0)
    time_basis: TimeBasis = TimeBasis.CHARGING
    session_fee: Decimal = Decimal(0)
    idle_per_hour: Decimal = Decimal(0)
    idle_grace_min: int = 0
    bands: tuple[Band, ...] = ()
    #: The zone the bands' wall-clock times are read in.
    zone: tzinfo = field(default=UTC)

    def __post_init__(self) -> None:
        if not isinstance(self.currency, str) or not _CURRENCY.fullmatch(self.currency):
            raise ValueError(
                f"currency must be an ISO 4217 code of three capital letters (e.g. 'EUR'), got {self.currency!r}"
            )
        if isinstance(self.decimals, bool) or not isinstance(self.decimals, int) or not 0 <= self.decimals <= 4:
            raise ValueError(f"decimals must be an integer 0..4, got {self.decimals!r}")
        for name in ("energy_per_kwh", "time_per_hour", "session_fee", "idle_per_hour"):
            object.__setattr__(self, name, to_money(getattr(self, name), name))
        try:
            object.__setattr__(self, "time_basis", TimeBasis(self.time_basis))
        except ValueError:
            raise ValueError(f"time_basis must be 'charging' or 'connected', got {self.time_basis!r}") from None
        grace = self.idle_grace_min
        if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= MAX_GRACE_MIN:
            raise ValueError(f"idle_grace_min must be an integer 0..{MAX_GRACE_MIN} minutes, got {grace!r}")
        bands = tuple(self.bands)
        if not all(isinstance(b, Band) for b in bands):
            raise TypeError("bands must be Band objects (parse text with parse_band)")
        check_bands(bands)
        object.__setattr__(self, "bands", bands)
        if not isinstance(self.zone, tzinfo):
            raise TypeError(f"zone must be a tzinfo (e.g. ZoneInfo('Europe/Berlin')), got {self.zone!r}")

    @classmethod
    def from_config(
        cls,
        *,
        currency: str = "EUR",
        decimals: int = 2,
        energy_per_kwh: Price = 0,
        time_per_hour: Price = 0,
        time_basis: str = "charging",
        session_fee: Price = 0,
        idle_per_hour: Price = 0,
        idle_grace_min: int = 0,
        bands: Sequence[str] = (),
        timezone: str = "",
    ) -> Tariff:
        """Built from the ``[tariff]`` settings; ``ValueError``/``TypeError`` name the bad value."""
        parsed = []
        for i, text in enumerate(bands):
            try:
                parsed.append(parse_band(text))
            except ValueError as e:
                raise ValueError(f"band {i + 1}: {e}") from None
        return cls(
            currency=currency,
            decimals=decimals,
            energy_per_kwh=energy_per_kwh,  # type: ignore[arg-type]  # coerced by __post_init__
            time_per_hour=time_per_hour,  # type: ignore[arg-type]
            time_basis=time_basis,  # type: ignore[arg-type]
            session_fee=session_fee,  # type: ignore[arg-type]
            idle_per_hour=idle_per_hour,  # type: ignore[arg-type]
            idle_grace_min=idle_grace_min,
            bands=tuple(parsed),
            zone=load_zone(timezone),
        )

    @property
    def free(self) -> bool:
        """True when nothing is ever charged."""
        prices = [self.energy_per_kwh, self.time_per_hour, self.session_fee, self.idle_per_hour]
        prices += [p for b in self.bands for p in (b.energy_per_kwh, b.time_per_hour) if p is not None]
        return all(p == 0 for p in prices)

    def pieces(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime, Band | None]]:
        """``[start, end)`` cut at band edges: (from, to, band or None for the base prices), in order, in UTC."""
        t0, t1 = aware_utc("start", start), aware_utc("end", end)
        if t1 < t0:
            raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")
        if t1 == t0:
            return []
        if not self.bands:
            return [(t0, t1, None)]
        first = _wall(t0, self.zone).date() - timedelta(days=2)
        days = (_wall(t1, self.zone).date() - first).days + 2
        out: list[tuple[datetime, datetime, Band | None]] = []
        cursor = t0
        for a, b, band in _occurrences(self.bands, self.zone, first, days):
            a, b = max(a, cursor), min(b, t1)
            if a >= b:
                continue
            if a > cursor:
                out.append((cursor, a, None))
            out.append((a, b, band))
            cursor = b
        if cursor < t1:
            out.append((cursor, t1, None))
        return out

    def band_at(self, at: datetime) -> Band | None:
        """The band in force at ``at``, None for the base prices."""
        t = aware_utc("at", at)
        return self.pieces(t, t + timedelta(microseconds=1))[0][2]

    def prices_at(self, at: datetime) -> tuple[Decimal, Decimal]:
        """(price per kWh, price per hour) in force at ``at``."""
        return self._prices(self.band_at(at))

    def _prices(self, band: Band | None) -> tuple[Decimal, Decimal]:
        if band is None:
            return self.energy_per_kwh, self.time_per_hour
        energy = self.energy_per_kwh if band.energy_per_kwh is None else band.energy_per_kwh
        hourly = self.time_per_hour if band.time_per_hour is None else band.time_per_hour
        return energy, hourly

    def next_price_change(self, at: datetime) -> datetime | None:
        """The first instant (UTC) after ``at`` where the energy or time price changes; None within 8 days."""
        t = aware_utc("at", at)
        now = self._prices(self.band_at(t))
        for a, _b, band in self.pieces(t, t + timedelta(days=8)):
            if a > t and self._prices(band) != now:
                return a
        return None

    def describe(self) -> str:
        """The price list in one line, for a display or DefaultPrice text (labelled by the caller)."""
        c = self.currency
        parts = [f"{c} {self.energy_per_kwh}/kWh"]
        if self.time_per_hour:
            parts.append(f"{c} {self.time_per_hour}/h {self.time_basis.value}")
        if self.session_fee:
            parts.append(f"session fee {c} {self.session_fee}")
        if self.idle_per_hour:
            parts.append(f"idle {c} {self.idle_per_hour}/h after {self.idle_grace_min} min")
        parts += [format_band(b) for b in self.bands]
        if self.bands:
            parts.append(f"bands in {zone_name(self.zone)}")
        return ", ".join(parts)
