"""OCPP 1.6 smart charging: profiles and the composite schedule, as pure functions.

No I/O, no clock: every function takes the instant(s) it is asked about. The result feeds the limit
arbiter (``firmware.limits.arbiter``) as the "ocpp" claim.

Rules (standards digest §2.6, OCPP 1.6 §3.13):

* Per purpose, the profile with the highest ``stack_level`` that is valid (``valid_from <= t < valid_to``),
  matches the connector and has a period active at ``t`` wins. A profile whose schedule does not cover ``t``
  (before its start, after its ``duration``) does not count, so lower stack levels show through.
* ChargePointMaxProfile lives on connector 0 and applies to every connector. A TxDefaultProfile on connector 0
  applies to all connectors, but one installed on the asked connector that applies at ``t`` takes precedence
  over all connector-0 TxDefaultProfiles (whatever their stack level); when none of the connector's own applies,
  the connector-0 ones show through. TxProfile only with a transaction (``tx_start`` set) and, when both sides
  name one, the same transaction id. Connector 0 (the whole charge point) sees only ChargePointMaxProfile.
* Limit = min(ChargePointMax, TxProfile if one applies else TxDefault), compared in amperes via ``to_amps``.
* Kinds: Absolute runs from ``start_schedule``; Relative from ``tx_start`` (no transaction: not applicable);
  Recurring repeats from ``start_schedule`` every day/week.

Recurrence and DST (a deliberate choice): a Recurring profile restarts at the same *wall-clock* time in the
time zone ``tz`` (default UTC), so "22:00 daily" stays 22:00 local across DST changes. Within one occurrence
``start_period_s`` and ``duration_s`` count real elapsed seconds from that occurrence's start; an occurrence
always ends at the next one (a 23 h day truncates, a 25 h day extends the last period). A start falling in the
spring-forward gap is resolved with ``fold=0`` (e.g. 02:30 Berlin becomes 03:30 CEST); in the fall-back overlap
the first (summer-time) instance is used.

All datetimes must be timezone-aware.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any, Literal, cast

RateUnit = Literal["A", "W"]
Purpose = Literal["ChargePointMaxProfile", "TxDefaultProfile", "TxProfile"]
Kind = Literal["Absolute", "Recurring", "Relative"]
Recurrency = Literal["Daily", "Weekly"]
ToAmps = Callable[[float, str, "int | None"], float]

UNITS: tuple[str, ...] = ("A", "W")
PURPOSES: tuple[str, ...] = ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")
KINDS: tuple[str, ...] = ("Absolute", "Recurring", "Relative")
RECURRENCIES: tuple[str, ...] = ("Daily", "Weekly")
NOMINAL_VOLTAGE_V = 230.0
DEFAULT_PHASES = 3
#: OCPP integers are int32; this also keeps timedelta arithmetic far from overflow.
_MAX_INT = 2**31 - 1
_RECURRENCE_STEP = {"Daily": timedelta(days=1), "Weekly": timedelta(days=7)}
_US = 1_000_000
_ONE_US = timedelta(microseconds=1)


def default_to_amps(value: float, unit: str, number_phases: int | None) -> float:
    """Amperes per phase: A as is, W / (230 V x phases), phases defaulting to 3."""
    if unit == "A":
        return float(value)
    return float(value) / (NOMINAL_VOLTAGE_V * (number_phases or DEFAULT_PHASES))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(name: str, v: object, lo: int = 0, hi: int = _MAX_INT) -> int:
    if not _is_int(v):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    i = cast(int, v)
    if not lo <= i <= hi:
        raise ValueError(f"{name} {i} out of range {lo}..{hi}")
    return i


def _check_aware(name: str, v: object) -> datetime | None:
    if v is None:
        return None
    if not isinstance(v, datetime):
        raise ValueError(f"{name} must be a datetime, got {v!r}")
    if v.tzinfo is None or v.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {v!r}")
    return v


@dataclass(frozen=True, slots=True)
class ChargingSchedulePeriod:
    start_period_s: int
    limit: Decimal | float
    number_phases: int | None = None

    def __post_init__(self) -> None:
        _check_int("startPeriod", self.start_period_s)
        if isinstance(self.limit, bool) or not isinstance(self.limit, int | float | Decimal):
            raise ValueError(f"limit must be a number, got {self.limit!r}")
        if not math.isfinite(float(self.limit)) or self.limit < 0:
            raise ValueError(f"limit {self.limit!r} must be a finite number >= 0")
        if self.number_phases is not None:
            _check_int("numberPhases", self.number_phases, 1, 3)


@dataclass(frozen=True, slots=True)
class ChargingSchedule:
    charging_rate_unit: RateUnit
    periods: tuple[ChargingSchedulePeriod, ...]
    duration_s: int | None = None
    start_schedule: datetime | None = None
    min_charging_rate: float | None = None
    #: Period starts in microseconds, for a binary search (a schedule may hold many periods).
    starts_us: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.charging_rate_unit not in UNITS:
            raise ValueError(f"unknown chargingRateUnit {self.charging_rate_unit!r} (expected A or W)")
        if not isinstance(self.periods, tuple) or not self.periods:
            raise ValueError("chargingSchedulePeriod must be a non-empty list")
        for p in self.periods:
            if not isinstance(p, ChargingSchedulePeriod):
                raise ValueError(f"not a ChargingSchedulePeriod: {p!r}")
        if self.periods[0].start_period_s != 0:
            raise ValueError(f"first period must start at 0, starts at {self.periods[0].start_period_s}")
        for a, b in zip(self.periods, self.periods[1:], strict=False):
            if b.start_period_s <= a.start_period_s:
                raise ValueError(f"periods not increasing: startPeriod {b.start_period_s} after {a.start_period_s}")
        if self.duration_s is not None:
            _check_int("duration", self.duration_s, 1)
        _check_aware("startSchedule", self.start_schedule)
        if self.min_charging_rate is not None:
            m = self.min_charging_rate
            if isinstance(m, bool) or not isinstance(m, int | float) or not math.isfinite(m) or m < 0:
                raise ValueError(f"minChargingRate {m!r} must be a finite number >= 0")
        object.__setattr__(self, "starts_us", tuple(p.start_period_s * _US for p in self.periods))


@dataclass(frozen=True, slots=True)
class ChargingProfile:
    profile_id: int
    stack_level: int
    purpose: Purpose
    kind: Kind
    recurrency: Recurrency | None
    valid_from: datetime | None
    valid_to: datetime | None
    schedule: ChargingSchedule
    connector_id: int
    transaction_id: int | None = None

    def __post_init__(self) -> None:
        _check_int("chargingProfileId", self.profile_id, -(2**31), _MAX_INT)
        _check_int("stackLevel", self.stack_level)
        _check_int("connectorId", self.connector_id)
        if self.purpose not in PURPOSES:
            raise ValueError(f"unknown chargingProfilePurpose {self.purpose!r}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown chargingProfileKind {self.kind!r}")
        if not isinstance(self.schedule, ChargingSchedule):
            raise ValueError("chargingSchedule missing")
        if self.kind == "Recurring":
            if self.recurrency not in RECURRENCIES:
                raise ValueError(f"Recurring profile needs recurrencyKind Daily or Weekly, got {self.recurrency!r}")
        elif self.recurrency is not None:
            raise ValueError(f"recurrencyKind {self.recurrency!r} given for a {self.kind} profile")
        if self.kind in ("Absolute", "Recurring") and self.schedule.start_schedule is None:
            raise ValueError(f"{self.kind} profile needs chargingSchedule.startSchedule")
        vf = _check_aware("validFrom", self.valid_from)
        vt = _check_aware("validTo", self.valid_to)
        if vf is not None and vt is not None and vt <= vf:
            raise ValueError(f"validTo {vt.isoformat()} is not after validFrom {vf.isoformat()}")
        if self.purpose == "ChargePointMaxProfile" and self.connector_id != 0:
            raise ValueError(f"ChargePointMaxProfile must be on connector 0, not {self.connector_id}")
        if self.purpose == "TxProfile" and self.connector_id == 0:
            raise ValueError("TxProfile cannot be set on connector 0")
        if self.transaction_id is not None:
            _check_int("transactionId", self.transaction_id, -(2**31), _MAX_INT)
            if self.purpose != "TxProfile":
                raise ValueError(f"transactionId only allowed on a TxProfile, not {self.purpose}")

    @classmethod
    def from_wire(cls, data: Mapping[str, Any], *, connector_id: int | None = None) -> ChargingProfile:
        """Build from OCPP 1.6 JSON: csChargingProfiles in camelCase (wire) or snake_case (``ocpp`` handlers).

        Also accepts a whole SetChargingProfile.req (``connectorId`` + ``csChargingProfiles``). The connector
        comes from the payload or the ``connector_id`` argument. Anything malformed raises ``ValueError``.
        """
        d = _snake(data, "charging profile")
        if "cs_charging_profiles" in d:
            if connector_id is None and "connector_id" in d:
                connector_id = _check_int("connectorId", d["connector_id"])
            d = _snake(d["cs_charging_profiles"], "csChargingProfiles")
        if connector_id is None:
            if "connector_id" not in d:
                raise ValueError("connectorId missing (pass connector_id= or include connectorId)")
            connector_id = d["connector_id"]
        s = _snake(_req(d, "charging_schedule"), "chargingSchedule")
        raw_periods = _req(s, "charging_schedule_period")
        if not isinstance(raw_periods, list | tuple):
            raise ValueError(f"chargingSchedulePeriod must be a list, got {type(raw_periods).__name__}")
        periods = []
        for rp in raw_periods:
            p = _snake(rp, "chargingSchedulePeriod")
            limit = _req(p, "limit")
            if isinstance(limit, bool) or not isinstance(limit, int | float | Decimal):
                raise ValueError(f"limit must be a number, got {limit!r}")
            periods.append(
                ChargingSchedulePeriod(
                    start_period_s=_req(p, "start_period"),
                    limit=limit if isinstance(limit, Decimal) else float(limit),
                    number_phases=p.get("number_phases"),
                )
            )
        mcr = s.get("min_charging_rate")
        if mcr is not None and (isinstance(mcr, bool) or not isinstance(mcr, int | float)):
            raise ValueError(f"minChargingRate must be a number, got {mcr!r}")
        schedule = ChargingSchedule(
            charging_rate_unit=_req(s, "charging_rate_unit"),
            periods=tuple(periods),
            duration_s=s.get("duration"),
            start_schedule=_parse_dt("startSchedule", s.get("start_schedule")),
            min_charging_rate=None if mcr is None else float(mcr),
        )
        return cls(
            profile_id=_req(d, "charging_profile_id"),
            stack_level=_req(d, "stack_level"),
            purpose=_req(d, "charging_profile_purpose"),
            kind=_req(d, "charging_profile_kind"),
            recurrency=d.get("recurrency_kind"),
            valid_from=_parse_dt("validFrom", d.get("valid_from")),
            valid_to=_parse_dt("validTo", d.get("valid_to")),
            schedule=schedule,
            connector_id=connector_id,
            transaction_id=d.get("transaction_id"),
        )

    def to_wire(self) -> dict[str, Any]:
        """csChargingProfiles as OCPP 1.6 JSON (camelCase; limits as floats): ``from_wire`` reads it back."""
        s = self.schedule
        periods: list[dict[str, Any]] = []
        for p in s.periods:
            period: dict[str, Any] = {"startPeriod": p.start_period_s, "limit": float(p.limit)}
            if p.number_phases is not None:
                period["numberPhases"] = p.number_phases
            periods.append(period)
        optional_schedule = {
            "duration": s.duration_s,
            "startSchedule": None if s.start_schedule is None else s.start_schedule.isoformat(),
            "minChargingRate": s.min_charging_rate,
        }
        schedule: dict[str, Any] = {"chargingRateUnit": s.charging_rate_unit, "chargingSchedulePeriod": periods}
        schedule.update({k: v for k, v in optional_schedule.items() if v is not None})
        optional = {
            "transactionId": self.transaction_id,
            "recurrencyKind": self.recurrency,
            "validFrom": None if self.valid_from is None else self.valid_from.isoformat(),
            "validTo": None if self.valid_to is None else self.valid_to.isoformat(),
        }
        out: dict[str, Any] = {
            "chargingProfileId": self.profile_id,
            "stackLevel": self.stack_level,
            "chargingProfilePurpose": self.purpose,
            "chargingProfileKind": self.kind,
            "chargingSchedule": schedule,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(obj: object, what: str) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what} must be an object, got {type(obj).__name__}")
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise ValueError(f"{what}: key {k!r} is not a string")
        out[_CAMEL.sub("_", k).lower()] = v
    return out


def _req(d: Mapping[str, Any], key: str) -> Any:
    if key not in d:
        raise ValueError(f"required field {key!r} missing")
    return d[key]


def _parse_dt(name: str, v: object) -> datetime | None:
    if v is None or isinstance(v, datetime):
        dt = v
    elif isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v)
        except ValueError as e:
            raise ValueError(f"{name}: {v!r} is not an ISO 8601 date-time") from e
    else:
        raise ValueError(f"{name} must be a date-time string, got {v!r}")
    if dt is not None and dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # OCPP times are UTC; tolerate a missing "Z".
    return dt


@dataclass(frozen=True, slots=True)
class Limit:
    value: float
    unit: RateUnit
    number_phases: int | None
    profile_id: int
    purpose: Purpose
    stack_level: int = 0
    #: 0-based index of the period in force within the winning profile's schedule.
    period_index: int = 0


# --- evaluation -------------------------------------------------------------------------------------------------


def _occurrence(
    p: ChargingProfile, at: datetime, tx_start: datetime | None, tz: tzinfo
) -> tuple[datetime, datetime | None] | None:
    """(start, forced end) of the schedule run covering ``at`` or, if none started yet, None."""
    s = p.schedule
    if p.kind == "Relative":
        return None if tx_start is None or at < tx_start else (tx_start, None)
    assert s.start_schedule is not None
    if p.kind == "Absolute":
        return None if at < s.start_schedule else (s.start_schedule, None)
    if at < s.start_schedule:
        return None
    occ = _recurrence(p, tz)
    n = _index(p, at, tz)
    return occ(n), occ(n + 1)


def _index(p: ChargingProfile, at: datetime, tz: tzinfo) -> int:
    """n such that occurrence n <= at < occurrence n + 1 (0 before the first occurrence)."""
    start = p.schedule.start_schedule
    assert start is not None and p.recurrency is not None
    if tz is UTC:  # no DST: plain arithmetic (the evaluation hot path)
        return max(0, (at - start) // _RECURRENCE_STEP[p.recurrency])
    occ = _recurrence(p, tz)
    wall = start.astimezone(tz).replace(tzinfo=None)
    n = max(0, (at.astimezone(tz).replace(tzinfo=None) - wall) // _RECURRENCE_STEP[p.recurrency])
    while n > 0 and occ(n) > at:
        n -= 1
    while occ(n + 1) <= at:
        n += 1
    return n


def _recurrence(p: ChargingProfile, tz: tzinfo) -> Callable[[int], datetime]:
    start = p.schedule.start_schedule
    assert start is not None and p.recurrency is not None
    step = _RECURRENCE_STEP[p.recurrency]
    if tz is UTC:
        return lambda n: start + n * step
    wall = start.astimezone(tz).replace(tzinfo=None)

    def occ(n: int) -> datetime:
        # Same wall-clock time n days/weeks later, in tz (fold=0 for gaps and overlaps).
        return start if n == 0 else (wall + n * step).replace(tzinfo=tz).astimezone(UTC)

    return occ


def _period_at(
    p: ChargingProfile, at: datetime, tx_start: datetime | None, tz: tzinfo
) -> tuple[int, ChargingSchedulePeriod] | None:
    """(index, period) of ``p`` in force at ``at``, or None when ``p`` does not apply then."""
    if p.valid_from is not None and at < p.valid_from:
        return None
    if p.valid_to is not None and at >= p.valid_to:
        return None
    run = _occurrence(p, at, tx_start, tz)
    if run is None:
        return None
    anchor, hard_end = run
    if hard_end is not None and at >= hard_end:
        return None
    offset = at - anchor
    if p.schedule.duration_s is not None and offset >= timedelta(seconds=p.schedule.duration_s):
        return None
    index = bisect.bisect_right(p.schedule.starts_us, offset // _ONE_US) - 1
    return None if index < 0 else (index, p.schedule.periods[index])


def _best(
    profiles: Iterable[ChargingProfile], at: datetime, tx_start: datetime | None, tz: tzinfo
) -> tuple[ChargingProfile, int, ChargingSchedulePeriod] | None:
    best: tuple[ChargingProfile, int, ChargingSchedulePeriod] | None = None
    for p in profiles:
        found = _period_at(p, at, tx_start, tz)
        if found is None:
            continue
        if best is None or (p.stack_level, -p.profile_id) > (best[0].stack_level, -best[0].profile_id):
            best = (p, *found)
    return best


def limit_at(
    profiles: Iterable[ChargingProfile],
    at: datetime,
    *,
    tx_start: datetime | None,
    connector_id: int = 1,
    transaction_id: int | None = None,
    to_amps: ToAmps = default_to_amps,
    tz: tzinfo = UTC,
) -> Limit | None:
    """The limit in force at ``at`` on ``connector_id``, or None if no profile applies (caller's default)."""
    _check_aware("at", at)
    _check_aware("tx_start", tx_start)
    ps = list(profiles)
    cp_max = _best([p for p in ps if p.purpose == "ChargePointMaxProfile"], at, tx_start, tz)
    cand = [cp_max]
    if connector_id != 0:
        tx = None
        if tx_start is not None:
            tx = _best(
                [
                    p
                    for p in ps
                    if p.purpose == "TxProfile"
                    and p.connector_id == connector_id
                    and (p.transaction_id is None or transaction_id is None or p.transaction_id == transaction_id)
                ],
                at,
                tx_start,
                tz,
            )
        if tx is None:
            defaults = [p for p in ps if p.purpose == "TxDefaultProfile"]
            tx = _best([p for p in defaults if p.connector_id == connector_id], at, tx_start, tz)
            if tx is None:
                tx = _best([p for p in defaults if p.connector_id == 0], at, tx_start, tz)
        cand.append(tx)
    found = [c for c in cand if c is not None]
    if not found:
        return None
    p, index, period = min(
        found, key=lambda c: to_amps(float(c[2].limit), c[0].schedule.charging_rate_unit, c[2].number_phases)
    )
    unit = p.schedule.charging_rate_unit
    return Limit(float(period.limit), unit, period.number_phases, p.profile_id, p.purpose, p.stack_level, index)


def _edges(p: ChargingProfile, start: datetime, end: datetime, tx_start: datetime | None, tz: tzinfo) -> set[datetime]:
    """Every instant in (start, end) where this profile's contribution can change."""
    out: set[datetime] = set()

    def add(anchor: datetime, seconds: int) -> None:
        if timedelta(seconds=seconds) < end - anchor:
            t = anchor + timedelta(seconds=seconds)
            if t > start:
                out.add(t)

    for t in (p.valid_from, p.valid_to):
        if t is not None and start < t < end:
            out.add(t)
    s = p.schedule
    anchors: list[datetime] = []
    if p.kind == "Relative":
        if tx_start is not None:
            anchors.append(tx_start)
    elif p.kind == "Absolute":
        assert s.start_schedule is not None
        anchors.append(s.start_schedule)
    else:
        assert s.start_schedule is not None
        occ = _recurrence(p, tz)
        n = _index(p, start, tz)
        while occ(n) < end:
            anchors.append(occ(n))
            n += 1
    for a in anchors:
        # Only the periods that start inside (start, end): found by binary search, a schedule may be long.
        first = max(0, bisect.bisect_right(s.starts_us, (start - a) // _ONE_US))
        last = bisect.bisect_left(s.starts_us, (end - a) // _ONE_US)
        for period in s.periods[first:last]:
            add(a, period.start_period_s)
        if s.duration_s is not None:
            add(a, s.duration_s)
    return out


def next_change(
    profiles: Iterable[ChargingProfile],
    at: datetime,
    horizon_s: float,
    *,
    tx_start: datetime | None,
    tz: tzinfo = UTC,
) -> datetime | None:
    """The first instant in (at, at + horizon_s) where any profile's contribution may change, or None.

    A caller that holds a limit evaluated at ``at`` re-evaluates then (and at the horizon at the latest).
    """
    _check_aware("at", at)
    end = at + timedelta(seconds=horizon_s)
    edges = [t for p in profiles for t in _edges(p, at, end, tx_start, tz)]
    return min(edges, default=None)


def composite_schedule(
    profiles: Iterable[ChargingProfile],
    start: datetime,
    duration_s: int,
    *,
    tx_start: datetime | None,
    connector_id: int = 1,
    transaction_id: int | None = None,
    unit: RateUnit = "A",
    to_amps: ToAmps = default_to_amps,
    voltage_v: float = NOMINAL_VOLTAGE_V,
    tz: tzinfo = UTC,
    default: float | None = None,
) -> list[tuple[int, float, int | None]]:
    """Piecewise-constant limit over [start, start + duration_s) as (offset s, limit in ``unit``, phases).

    Equal neighbours are merged; stretches where no profile applies are left out, or, if ``default`` is given,
    filled with ``(offset, default, None)`` so that the end of a profile-covered stretch is visible.
    Breakpoints are exact (period starts/ends, validity edges, recurrences); offsets are whole seconds,
    floored when the inputs are not second-aligned.
    """
    _check_aware("start", start)
    _check_int("duration", duration_s)
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}")
    ps = list(profiles)
    end = start + timedelta(seconds=duration_s)
    points = {start} if duration_s > 0 else set()
    for p in ps:
        points |= _edges(p, start, end, tx_start, tz)
    by_offset: dict[int, tuple[float, int | None] | None] = {}
    for t in sorted(points):
        lim = limit_at(
            ps, t, tx_start=tx_start, connector_id=connector_id, transaction_id=transaction_id, to_amps=to_amps, tz=tz
        )
        by_offset[int((t - start).total_seconds())] = (
            None if lim is None else (convert(lim, unit, to_amps=to_amps, voltage_v=voltage_v), lim.number_phases)
        )
    out: list[tuple[int, float, int | None]] = []
    prev: tuple[float, int | None] | None = None
    for offset, seg in by_offset.items():
        if seg is None and default is not None:
            seg = (default, None)
        if seg is not None and seg != prev:
            out.append((offset, seg[0], seg[1]))
        prev = seg
    return out


def convert(
    lim: Limit, unit: RateUnit, *, to_amps: ToAmps = default_to_amps, voltage_v: float = NOMINAL_VOLTAGE_V
) -> float:
    """``lim`` expressed in ``unit`` (A per phase, or W over ``number_phases``, default 3)."""
    if lim.unit == unit:
        return lim.value
    amps = to_amps(lim.value, lim.unit, lim.number_phases)
    if unit == "A":
        return amps
    return amps * voltage_v * (lim.number_phases or DEFAULT_PHASES)
