from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.limits.schedule import (
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    composite_schedule,
    convert,
    limit_at,
    next_change,
)

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday
BERLIN = ZoneInfo("Europe/Berlin")


def prof(
    pid: int,
    level: int,
    purpose: str,
    periods: Sequence[tuple[Any, ...]],
    *,
    kind: str = "Absolute",
    start: datetime | None = T0,
    duration: int | None = None,
    unit: str = "A",
    connector: int | None = None,
    recurrency: str | None = None,
    valid_from: datetime | None = None,
    valid_to: datetime | None = None,
    tx: int | None = None,
) -> ChargingProfile:
    if connector is None:
        connector = 0 if purpose != "TxProfile" else 1
    ps = tuple(ChargingSchedulePeriod(p[0], p[1], p[2] if len(p) > 2 else None) for p in periods)
    return ChargingProfile(
        profile_id=pid,
        stack_level=level,
        purpose=purpose,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        recurrency=recurrency,  # type: ignore[arg-type]
        valid_from=valid_from,
        valid_to=valid_to,
        schedule=ChargingSchedule(unit, ps, duration, None if kind == "Relative" else start),  # type: ignore[arg-type]
        connector_id=connector,
        transaction_id=tx,
    )


def val(profiles: list[ChargingProfile], at: datetime, **kw: Any) -> float | None:
    kw.setdefault("tx_start", None)
    lim = limit_at(profiles, at, **kw)
    return None if lim is None else lim.value


# --- concrete cases -------------------------------------------------------------------------------------------


def test_highest_stack_level_wins_and_lower_shows_through_outside_its_duration() -> None:
    low = prof(1, 0, "TxDefaultProfile", [(0, 32)])
    high = prof(2, 1, "TxDefaultProfile", [(0, 10)], duration=3600)
    assert val([low, high], T0 + timedelta(minutes=30)) == 10
    assert val([low, high], T0 + timedelta(hours=1)) == 32
    assert val([low, high], T0 - timedelta(seconds=1)) is None
    assert composite_schedule([low, high], T0, 7200, tx_start=None) == [(0, 10.0, None), (3600, 32.0, None)]


def test_tx_profile_overrides_tx_default_only_with_transaction() -> None:
    default = prof(1, 5, "TxDefaultProfile", [(0, 32)])
    tx = prof(2, 0, "TxProfile", [(0, 8)], tx=42)
    at = T0 + timedelta(minutes=1)
    assert val([default, tx], at) == 32
    assert val([default, tx], at, tx_start=T0) == 8
    assert val([default, tx], at, tx_start=T0, transaction_id=42) == 8
    assert val([default, tx], at, tx_start=T0, transaction_id=7) == 32
    assert val([default, tx], at, tx_start=T0, connector_id=2) == 32  # TxProfile is for connector 1


def test_charge_point_max_caps_both() -> None:
    cpmax = prof(1, 0, "ChargePointMaxProfile", [(0, 16)])
    default = prof(2, 0, "TxDefaultProfile", [(0, 32), (60, 10)])
    tx = prof(3, 0, "TxProfile", [(0, 20), (60, 6)])
    lim = limit_at([cpmax, default], T0, tx_start=None)
    assert lim is not None and (lim.value, lim.purpose, lim.profile_id) == (16, "ChargePointMaxProfile", 1)
    assert val([cpmax, tx, default], T0, tx_start=T0) == 16
    assert composite_schedule([cpmax, default, tx], T0, 120, tx_start=T0) == [(0, 16.0, None), (60, 6.0, None)]
    assert composite_schedule([cpmax, default], T0, 120, tx_start=None) == [(0, 16.0, None), (60, 10.0, None)]
    assert composite_schedule([cpmax, default], T0, 120, tx_start=None, connector_id=0) == [(0, 16.0, None)]


def test_connector_specific_tx_default_beats_connector_zero() -> None:
    zero = prof(1, 9, "TxDefaultProfile", [(0, 32)], connector=0)
    own = prof(2, 0, "TxDefaultProfile", [(0, 12)], connector=2, valid_from=T0 + timedelta(hours=1))
    assert val([zero, own], T0 + timedelta(hours=2), connector_id=2) == 12
    assert val([zero, own], T0 + timedelta(hours=2), connector_id=1) == 32
    assert val([zero, own], T0, connector_id=2) == 32  # own not yet valid: connector 0 shows through


def test_valid_from_in_future_reverts_to_lower_stack_level() -> None:
    base = prof(1, 0, "TxDefaultProfile", [(0, 32)])
    later = prof(
        2, 3, "TxDefaultProfile", [(0, 6)], valid_from=T0 + timedelta(hours=2), valid_to=T0 + timedelta(hours=3)
    )
    assert val([base, later], T0 + timedelta(hours=1)) == 32
    assert val([base, later], T0 + timedelta(hours=2)) == 6
    assert val([base, later], T0 + timedelta(hours=3)) == 32
    assert composite_schedule([base, later], T0, 4 * 3600, tx_start=None) == [
        (0, 32.0, None),
        (7200, 6.0, None),
        (10800, 32.0, None),
    ]


def test_relative_needs_transaction() -> None:
    rel = prof(1, 0, "TxDefaultProfile", [(0, 10), (600, 20)], kind="Relative", duration=1200)
    assert val([rel], T0) is None
    assert composite_schedule([rel], T0, 3600, tx_start=None) == []
    tx_start = T0 + timedelta(minutes=5)
    assert val([rel], T0, tx_start=tx_start) is None  # before the transaction started
    assert composite_schedule([rel], T0, 3600, tx_start=tx_start) == [(300, 10.0, None), (900, 20.0, None)]


def test_recurring_daily_across_midnight() -> None:
    night = prof(
        1, 0, "TxDefaultProfile", [(0, 32)], kind="Recurring", recurrency="Daily",
        start=datetime(2026, 3, 1, 22, 0, tzinfo=UTC), duration=8 * 3600,
    )  # fmt: skip
    day = prof(2, 0, "ChargePointMaxProfile", [(0, 40)], start=datetime(2026, 2, 1, tzinfo=UTC))
    day_cap = prof(3, 0, "TxDefaultProfile", [(0, 10)], connector=1)
    # connector 1 has its own default (10 A) at all times; connector 2 only sees the nightly one.
    ps = [night, day, day_cap]
    assert val(ps, datetime(2026, 3, 5, 23, 30, tzinfo=UTC), connector_id=2) == 32
    assert val(ps, datetime(2026, 3, 6, 5, 59, tzinfo=UTC), connector_id=2) == 32
    assert val(ps, datetime(2026, 3, 6, 6, 0, tzinfo=UTC), connector_id=2) == 40
    assert val(ps, datetime(2026, 3, 1, 21, 0, tzinfo=UTC), connector_id=2) == 40  # before first occurrence
    got = composite_schedule(ps, datetime(2026, 3, 5, 12, tzinfo=UTC), 36 * 3600, tx_start=None, connector_id=2)
    assert got == [(0, 40.0, None), (10 * 3600, 32.0, None), (18 * 3600, 40.0, None), (34 * 3600, 32.0, None)]


def test_recurring_weekly_across_week_end() -> None:
    # Sunday 20:00 UTC for 10 h -> Monday 06:00.
    weekly = prof(
        1, 0, "TxDefaultProfile", [(0, 16), (4 * 3600, 25)], kind="Recurring", recurrency="Weekly",
        start=datetime(2026, 3, 1, 20, 0, tzinfo=UTC), duration=10 * 3600,
    )  # fmt: skip
    assert val([weekly], datetime(2026, 3, 8, 21, tzinfo=UTC)) == 16
    assert val([weekly], datetime(2026, 3, 9, 1, tzinfo=UTC)) == 25
    assert val([weekly], datetime(2026, 3, 9, 6, tzinfo=UTC)) is None
    assert val([weekly], datetime(2026, 3, 12, 6, tzinfo=UTC)) is None
    got = composite_schedule([weekly], datetime(2026, 3, 7, tzinfo=UTC), 3 * 86400, tx_start=None)
    h = 3600
    assert got == [(44 * h, 16.0, None), (48 * h, 25.0, None)]


def _nightly_berlin() -> ChargingProfile:
    return prof(
        1, 0, "TxDefaultProfile", [(0, 11), (3600, 22)], kind="Recurring", recurrency="Daily",
        start=datetime(2026, 3, 1, 22, 0, tzinfo=BERLIN), duration=3 * 3600,
    )  # fmt: skip


def test_dst_spring_forward_keeps_local_start_time() -> None:
    p = _nightly_berlin()
    # Berlin goes CET -> CEST on 2026-03-29 at 02:00. 22:00 local is 21:00 UTC before, 20:00 UTC after.
    assert val([p], datetime(2026, 3, 28, 21, 0, tzinfo=UTC), tz=BERLIN) == 11
    assert val([p], datetime(2026, 3, 28, 20, 59, tzinfo=UTC), tz=BERLIN) is None
    assert val([p], datetime(2026, 3, 29, 20, 0, tzinfo=UTC), tz=BERLIN) == 11
    assert val([p], datetime(2026, 3, 29, 19, 59, tzinfo=UTC), tz=BERLIN) is None
    assert val([p], datetime(2026, 3, 29, 21, 0, tzinfo=UTC), tz=BERLIN) == 22
    # Without tz (UTC recurrence) the start would drift to 23:00 local.
    assert val([p], datetime(2026, 3, 29, 20, 0, tzinfo=UTC)) is None
    start = datetime(2026, 3, 29, 12, 0, tzinfo=BERLIN)
    got = composite_schedule([p], start, 86400, tx_start=None, tz=BERLIN)
    assert got == [(10 * 3600, 11.0, None), (11 * 3600, 22.0, None)]


def test_dst_fall_back_keeps_local_start_time() -> None:
    p = _nightly_berlin()
    # CEST -> CET on 2026-10-25 at 03:00. 22:00 local: 20:00 UTC on the 24th, 21:00 UTC on the 25th.
    assert val([p], datetime(2026, 10, 24, 20, 0, tzinfo=UTC), tz=BERLIN) == 11
    assert val([p], datetime(2026, 10, 25, 20, 30, tzinfo=UTC), tz=BERLIN) is None
    assert val([p], datetime(2026, 10, 25, 21, 0, tzinfo=UTC), tz=BERLIN) == 11
    start = datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN)
    got = composite_schedule([p], start, 2 * 86400, tx_start=None, tz=BERLIN)
    # the day in between is 25 h long, so the second run starts 35 h after 12:00 CEST.
    assert got == [(10 * 3600, 11.0, None), (11 * 3600, 22.0, None), (35 * 3600, 11.0, None), (36 * 3600, 22.0, None)]


def test_watts_and_amps_compare_in_amps() -> None:
    watts = prof(1, 0, "ChargePointMaxProfile", [(0, 11040, None), (60, 7360, 1)], unit="W")  # 16 A x3, 32 A x1
    amps = prof(2, 0, "TxDefaultProfile", [(0, 20)])
    lim = limit_at([watts, amps], T0, tx_start=None)
    assert lim is not None and (lim.value, lim.unit, lim.purpose) == (11040, "W", "ChargePointMaxProfile")
    assert convert(lim, "A") == pytest.approx(16.0)
    lim2 = limit_at([watts, amps], T0 + timedelta(seconds=60), tx_start=None)
    assert lim2 is not None and (lim2.value, lim2.unit) == (20, "A")
    got = composite_schedule([watts, amps], T0, 120, tx_start=None)
    assert got == [(0, pytest.approx(16.0), None), (60, 20.0, None)]
    got_w = composite_schedule([watts, amps], T0, 120, tx_start=None, unit="W")
    assert got_w == [(0, 11040.0, None), (60, pytest.approx(13800.0), None)]

    # A custom conversion (e.g. measured 240 V) changes the comparison.
    def at_100v(v: float, unit: str, ph: int | None) -> float:
        return v if unit == "A" else v / (100 * (ph or 3))

    lim3 = limit_at([watts, amps], T0, tx_start=None, to_amps=at_100v)
    assert lim3 is not None and lim3.purpose == "TxDefaultProfile"


# --- from_wire ------------------------------------------------------------------------------------------------

WIRE: dict[str, Any] = {
    "chargingProfileId": 7,
    "stackLevel": 2,
    "chargingProfilePurpose": "TxDefaultProfile",
    "chargingProfileKind": "Recurring",
    "recurrencyKind": "Daily",
    "validFrom": "2026-01-01T00:00:00Z",
    "chargingSchedule": {
        "duration": 28800,
        "startSchedule": "2026-01-01T22:00:00Z",
        "chargingRateUnit": "W",
        "chargingSchedulePeriod": [
            {"startPeriod": 0, "limit": 11000.0},
            {"startPeriod": 3600, "limit": 7400, "numberPhases": 1},
        ],
        "minChargingRate": 1.5,
    },
}
SNAKE: dict[str, Any] = {
    "charging_profile_id": 7,
    "stack_level": 2,
    "charging_profile_purpose": "TxDefaultProfile",
    "charging_profile_kind": "Recurring",
    "recurrency_kind": "Daily",
    "valid_from": "2026-01-01T00:00:00Z",
    "charging_schedule": {
        "duration": 28800,
        "start_schedule": "2026-01-01T22:00:00Z",
        "charging_rate_unit": "W",
        "charging_schedule_period": [
            {"start_period": 0, "limit": 11000.0},
            {"start_period": 3600, "limit": 7400, "number_phases": 1},
        ],
        "min_charging_rate": 1.5,
    },
}


def test_from_wire_camel_and_snake_agree() -> None:
    a = ChargingProfile.from_wire(WIRE, connector_id=0)
    b = ChargingProfile.from_wire(SNAKE, connector_id=0)
    c = ChargingProfile.from_wire({"connectorId": 0, "csChargingProfiles": WIRE})
    assert a == b == c
    assert a.schedule.periods[1] == ChargingSchedulePeriod(3600, 7400.0, 1)
    assert a.schedule.start_schedule == datetime(2026, 1, 1, 22, tzinfo=UTC)
    assert a.recurrency == "Daily" and a.schedule.duration_s == 28800 and a.connector_id == 0
    d = ChargingProfile.from_wire({**SNAKE, "connector_id": 3})
    assert d.connector_id == 3
    assert ChargingProfile.from_wire(
        {
            **WIRE,
            "chargingSchedule": {
                **WIRE["chargingSchedule"],
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": Decimal("6.5")}],
            },
        },
        connector_id=1,
    ).schedule.periods[0].limit == Decimal("6.5")


def _with(d: dict[str, Any], **sched: Any) -> dict[str, Any]:
    out = dict(d)
    s = dict(d["chargingSchedule"])
    for k, v in sched.items():
        if v is None:
            s.pop(k, None)
        else:
            s[k] = v
    out["chargingSchedule"] = s
    return out


@pytest.mark.parametrize(
    ("data", "connector", "msg"),
    [
        (_with(WIRE, chargingSchedulePeriod=[{"startPeriod": 5, "limit": 1}]), 1, "start at 0"),
        (
            _with(WIRE, chargingSchedulePeriod=[{"startPeriod": 0, "limit": 1}, {"startPeriod": 0, "limit": 2}]),
            1,
            "not increasing",
        ),
        ({k: v for k, v in WIRE.items() if k != "recurrencyKind"}, 1, "recurrencyKind"),
        (_with(WIRE, startSchedule=None), 1, "startSchedule"),
        (
            _with({**WIRE, "chargingProfileKind": "Absolute", "recurrencyKind": None}, startSchedule=None),
            1,
            "startSchedule",
        ),
        (_with(WIRE, chargingSchedulePeriod=[{"startPeriod": 0, "limit": -1}]), 1, ">= 0"),
        (_with(WIRE, chargingRateUnit="kW"), 1, "chargingRateUnit"),
        ({**WIRE, "chargingProfilePurpose": "TxProfile"}, 0, "connector 0"),
        ({**WIRE, "chargingProfilePurpose": "ChargePointMaxProfile"}, 2, "connector 0"),
        ({**WIRE, "transactionId": 3}, 1, "transactionId"),
        ({**WIRE, "validTo": "2025-01-01T00:00:00Z"}, 1, "validTo"),
        ({**WIRE, "validFrom": "yesterday"}, 1, "ISO 8601"),
        (_with(WIRE, chargingSchedulePeriod=[]), 1, "non-empty"),
        (_with(WIRE, chargingSchedulePeriod=[{"startPeriod": 0, "limit": "16"}]), 1, "number"),
        ({k: v for k, v in WIRE.items() if k != "stackLevel"}, 1, "stack_level"),
        (WIRE, None, "connectorId"),
    ],
)
def test_from_wire_rejects(data: dict[str, Any], connector: int | None, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        ChargingProfile.from_wire(data, connector_id=connector)


# --- properties -----------------------------------------------------------------------------------------------

H = 3600
_starts = st.integers(-48, 48).map(lambda h: T0 + timedelta(hours=h))


@st.composite
def profiles(draw: st.DrawFn) -> ChargingProfile:
    purpose = draw(st.sampled_from(["ChargePointMaxProfile", "TxDefaultProfile", "TxProfile"]))
    kind = draw(st.sampled_from(["Absolute", "Recurring", "Relative"]))
    n = draw(st.integers(1, 4))
    offsets = sorted(draw(st.sets(st.integers(1, 30 * H // 60).map(lambda m: m * 60), min_size=n - 1, max_size=n - 1)))
    unit = draw(st.sampled_from(["A", "W"]))
    lim = st.integers(0, 64) if unit == "A" else st.integers(0, 44000)
    periods = [(s, float(draw(lim)), draw(st.none() | st.integers(1, 3))) for s in [0, *offsets]]
    vf = draw(st.none() | _starts)
    vt = draw(st.none() | st.integers(1, 72).map(lambda h: (vf or T0) + timedelta(hours=h)))
    connector = 0 if purpose == "ChargePointMaxProfile" else draw(st.integers(1 if purpose == "TxProfile" else 0, 2))
    return prof(
        draw(st.integers(1, 1000)),
        draw(st.integers(0, 3)),
        purpose,
        periods,
        kind=kind,
        start=draw(_starts) + timedelta(minutes=draw(st.integers(0, 59))),
        duration=draw(st.none() | st.integers(1, 40 * 60).map(lambda m: m * 60)),
        unit=unit,
        connector=connector,
        recurrency=draw(st.sampled_from(["Daily", "Weekly"])) if kind == "Recurring" else None,
        valid_from=vf,
        valid_to=vt,
    )


TZS = st.sampled_from([UTC, BERLIN])
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _segment_at(comp: list[tuple[int, float, int | None]], offset: float) -> tuple[float, int | None] | None:
    """Composite value at ``offset``; None in a gap. Gaps are detected against limit_at by the caller."""
    cur = None
    for o, v, ph in comp:
        if o <= offset:
            cur = (v, ph)
    return cur


GAP = 1e9  # sentinel default so gaps show up in the composite


@SETTINGS
@given(
    ps=st.lists(profiles(), max_size=5),
    start=_starts,
    duration=st.integers(1, 72).map(lambda h: h * H),
    tx=st.none() | _starts,
    connector=st.integers(0, 2),
    tz=TZS,
    probes=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=8),
)
def test_composite_equals_limit_at_everywhere(
    ps: list[ChargingProfile],
    start: datetime,
    duration: int,
    tx: datetime | None,
    connector: int,
    tz: Any,
    probes: list[float],
) -> None:
    comp = composite_schedule(ps, start, duration, tx_start=tx, connector_id=connector, tz=tz, default=GAP)
    offsets = [o for o, _, _ in comp]
    assert offsets == sorted(set(offsets)) and all(0 <= o < duration for o in offsets)
    assert comp[0][0] == 0
    assert all(a[1:] != b[1:] for a, b in itertools.pairwise(comp))  # equal neighbours merged
    plain = composite_schedule(ps, start, duration, tx_start=tx, connector_id=connector, tz=tz)
    assert plain == [c for c in comp if c[1] != GAP or c[2] is not None]
    for f in [*probes, *(o / duration for o in offsets)]:
        off = int(f * duration)
        t = start + timedelta(seconds=off)
        lim = limit_at(ps, t, tx_start=tx, connector_id=connector, tz=tz)
        seg = _segment_at(comp, off)
        assert seg is not None
        if lim is None:
            assert seg == (GAP, None)
        else:
            assert seg[0] == pytest.approx(convert(lim, "A")) and seg[1] == lim.number_phases


@SETTINGS
@given(
    ps=st.lists(profiles(), max_size=5),
    start=_starts,
    duration=st.integers(1, 48).map(lambda h: h * H),
    tx=st.none() | _starts,
    tz=TZS,
    probes=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=8),
)
def test_composite_never_exceeds_winning_profiles(
    ps: list[ChargingProfile], start: datetime, duration: int, tx: datetime | None, tz: Any, probes: list[float]
) -> None:
    """The composite is at most the ChargePointMax winner and the Tx/TxDefault winner at every instant."""
    comp = composite_schedule(ps, start, duration, tx_start=tx, tz=tz)
    for f in probes:
        off = int(f * duration)
        t = start + timedelta(seconds=off)
        seg = _segment_at(comp, off)
        if seg is None:
            continue
        cp = limit_at([p for p in ps if p.purpose == "ChargePointMaxProfile"], t, tx_start=tx, tz=tz)
        rest = limit_at([p for p in ps if p.purpose != "ChargePointMaxProfile"], t, tx_start=tx, tz=tz)
        for lim in (cp, rest):
            if lim is not None:
                assert seg[0] <= convert(lim, "A") + 1e-9


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=25), inner, max_size=5),
    max_leaves=20,
)
_keys = [
    "chargingProfileId", "stackLevel", "chargingProfilePurpose", "chargingProfileKind", "recurrencyKind",
    "validFrom", "validTo", "transactionId", "connectorId", "chargingSchedule", "duration", "startSchedule",
    "chargingRateUnit", "chargingSchedulePeriod", "startPeriod", "limit", "numberPhases", "minChargingRate",
]  # fmt: skip


def _mutate(d: Any, draw: st.DrawFn) -> Any:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            choice = draw(st.integers(0, 5))
            if choice == 0:
                continue
            out[k] = draw(_json) if choice == 1 else _mutate(v, draw)
        if draw(st.booleans()):
            out[draw(st.sampled_from(_keys))] = draw(_json)
        return out
    if isinstance(d, list):
        return [_mutate(x, draw) for x in d if draw(st.integers(0, 4))]
    return d if draw(st.integers(0, 3)) else draw(_json)


@st.composite
def wireish(draw: st.DrawFn) -> Any:
    base = draw(st.sampled_from([WIRE, SNAKE, {"connectorId": 1, "csChargingProfiles": WIRE}]))
    if draw(st.sampled_from([0, 1, 1, 1])):
        return _mutate(base, draw)
    return draw(_json)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=wireish(), connector=st.none() | st.integers(-3, 3) | st.just(True))
def test_from_wire_only_raises_value_error(data: Any, connector: Any) -> None:
    with contextlib.suppress(ValueError):
        ChargingProfile.from_wire(data, connector_id=connector)


# --- period lookup, next change, to_wire -------------------------------------------------------------------------


def test_limit_names_stack_level_and_period() -> None:
    tx = prof(4, 2, "TxProfile", [(0, 20), (60, 10), (120, 16)], tx=9)
    lim = limit_at([tx], T0 + timedelta(seconds=90), tx_start=T0)
    assert lim is not None and (lim.stack_level, lim.period_index, lim.value) == (2, 1, 10)
    lim = limit_at([tx], T0 + timedelta(seconds=120), tx_start=T0)
    assert lim is not None and lim.period_index == 2
    lim = limit_at([tx], T0 + timedelta(seconds=119, microseconds=999_999), tx_start=T0)
    assert lim is not None and lim.period_index == 1  # the boundary is exact to the microsecond


def test_next_change_finds_the_next_boundary() -> None:
    p = prof(1, 0, "TxDefaultProfile", [(0, 20), (30, 10)], duration=90)
    assert next_change([p], T0, 60, tx_start=None) == T0 + timedelta(seconds=30)
    assert next_change([p], T0 + timedelta(seconds=30), 61, tx_start=None) == T0 + timedelta(seconds=90)
    assert next_change([p], T0 + timedelta(seconds=30), 60, tx_start=None) is None  # the horizon is excluded
    assert next_change([p], T0 - timedelta(seconds=5), 60, tx_start=None) == T0  # the schedule starts
    later = prof(2, 1, "TxDefaultProfile", [(0, 6)], valid_from=T0 + timedelta(seconds=10))
    assert next_change([p, later], T0, 60, tx_start=None) == T0 + timedelta(seconds=10)
    rel = prof(3, 0, "TxProfile", [(0, 6), (600, 12)], kind="Relative")
    assert next_change([rel], T0 + timedelta(seconds=590), 60, tx_start=T0) == T0 + timedelta(seconds=600)
    assert next_change([rel], T0 + timedelta(seconds=590), 60, tx_start=None) is None


@SETTINGS
@given(
    ps=st.lists(profiles(), max_size=5),
    at=_starts,
    seconds=st.integers(0, 3599),
    horizon=st.integers(1, 4 * H),
    tx=st.none() | _starts,
    tz=TZS,
    probes=st.lists(st.floats(0, 1, exclude_min=True, exclude_max=True), min_size=1, max_size=6),
)
def test_nothing_changes_before_next_change(
    ps: list[ChargingProfile],
    at: datetime,
    seconds: int,
    horizon: int,
    tx: datetime | None,
    tz: Any,
    probes: list[float],
) -> None:
    """A claim evaluated at ``at`` holds until next_change (or the horizon): sleeping until then is safe."""
    at += timedelta(seconds=seconds)
    change = next_change(ps, at, horizon, tx_start=tx, tz=tz)
    end = at + timedelta(seconds=horizon)
    assert change is None or at < change < end
    until = change or end
    here = limit_at(ps, at, tx_start=tx, tz=tz)
    for f in probes:
        t = min(at + (until - at) * f, until - timedelta(microseconds=1))  # timedelta * float rounds to 1 us
        assert limit_at(ps, t, tx_start=tx, tz=tz) == here


@SETTINGS
@given(p=profiles(), offset=st.integers(-H, 40 * H))
def test_period_lookup_matches_a_linear_scan(p: ChargingProfile, offset: int) -> None:
    absolute = ChargingProfile(
        p.profile_id, p.stack_level, "TxDefaultProfile", "Absolute", None, None, None,
        ChargingSchedule(p.schedule.charging_rate_unit, p.schedule.periods, p.schedule.duration_s, T0), 0,
    )  # fmt: skip
    lim = limit_at([absolute], T0 + timedelta(seconds=offset), tx_start=None)
    covered = offset >= 0 and (p.schedule.duration_s is None or offset < p.schedule.duration_s)
    if not covered:
        assert lim is None
        return
    expected = max(i for i, period in enumerate(p.schedule.periods) if period.start_period_s <= offset)
    assert lim is not None and lim.period_index == expected
    assert lim.value == p.schedule.periods[expected].limit


@SETTINGS
@given(p=profiles(), mcr=st.none() | st.floats(0, 100), tz=st.sampled_from([UTC, BERLIN]))
def test_to_wire_round_trips(p: ChargingProfile, mcr: float | None, tz: Any) -> None:
    s = p.schedule
    start = None if s.start_schedule is None else s.start_schedule.astimezone(tz)
    p2 = ChargingProfile(
        p.profile_id, p.stack_level, p.purpose, p.kind, p.recurrency, p.valid_from, p.valid_to,
        ChargingSchedule(s.charging_rate_unit, s.periods, s.duration_s, start, mcr), p.connector_id,
        7 if p.purpose == "TxProfile" else None,
    )  # fmt: skip
    wire = p2.to_wire()
    assert json.loads(json.dumps(wire)) == wire
    assert ChargingProfile.from_wire(wire, connector_id=p.connector_id) == p2
    assert ChargingProfile.from_wire({"connectorId": p.connector_id, "csChargingProfiles": wire}) == p2


def test_to_wire_uses_ocpp_names() -> None:
    wire = ChargingProfile.from_wire(WIRE, connector_id=0).to_wire()
    schedule = {**WIRE["chargingSchedule"], "startSchedule": "2026-01-01T22:00:00+00:00"}
    assert wire == {**WIRE, "chargingSchedule": schedule, "validFrom": "2026-01-01T00:00:00+00:00"}


# --- precedence, recurrence across midnight / week ends / DST, W <-> A: properties -----------------------
@SETTINGS
@given(ps=st.lists(profiles(), max_size=5), top=st.integers(0, 64), at=_starts, tx=st.none() | _starts)
def test_the_highest_stack_level_of_the_deciding_purpose_wins(
    ps: list[ChargingProfile], top: int, at: datetime, tx: datetime | None
) -> None:
    """Without a ChargePointMax, an always-valid profile above every other stack level decides alone; a
    TxProfile (with a transaction) beats every TxDefaultProfile whatever its stack level."""
    others = [p for p in ps if p.purpose != "ChargePointMaxProfile"]
    purpose = "TxProfile" if tx is not None else "TxDefaultProfile"
    level = max((p.stack_level for p in others if p.purpose == purpose), default=-1) + 1
    winner = prof(9999, level, purpose, [(0, float(top))], start=T0 - timedelta(days=30), connector=1)
    lim = limit_at([*others, winner], at, tx_start=tx, connector_id=1)
    assert lim is not None and convert(lim, "A") == top
    if tx is not None:  # the TxProfile also beats a TxDefaultProfile stacked higher still
        high_default = prof(9998, 99, "TxDefaultProfile", [(0, 1.0)], start=T0 - timedelta(days=30), connector=1)
        lim = limit_at([*others, winner, high_default], at, tx_start=tx, connector_id=1)
        assert lim is not None and convert(lim, "A") == top


_DST_DAYS = [datetime(2026, 3, 29, tzinfo=UTC), datetime(2026, 10, 25, tzinfo=UTC)]


@SETTINGS
@given(
    day=st.sampled_from(_DST_DAYS),
    hour=st.integers(0, 23),
    minute=st.sampled_from([0, 15, 30, 59]),
    duration_min=st.integers(1, 22 * 60),
    weekly=st.booleans(),
    probe_day=st.integers(-3, 3),
    probe_min=st.integers(-90, 22 * 60 + 90),
)
def test_recurring_profiles_follow_local_wall_time_across_midnight_week_ends_and_dst(
    day: datetime, hour: int, minute: int, duration_min: int, weekly: bool, probe_day: int, probe_min: int
) -> None:
    """Reference model: an occurrence starts at the local HH:MM of each (weekly: every 7th) day, resolved like
    ``datetime(..., tzinfo=zone)`` resolves it (fold=0), and lasts ``duration`` real seconds. Probes sit near
    the local start and end of occurrences on the days around a DST change."""
    first_local = datetime.combine((day - timedelta(days=14)).date(), time(hour, minute), tzinfo=BERLIN)
    first = first_local.astimezone(UTC)
    p = prof(
        1,
        0,
        "TxDefaultProfile",
        [(0, 10.0)],
        kind="Recurring",
        recurrency="Weekly" if weekly else "Daily",
        start=first,
        duration=duration_min * 60,
    )
    probe_date = day.date() + timedelta(days=probe_day)
    at = datetime.combine(probe_date, time(hour, minute), tzinfo=BERLIN).astimezone(UTC)
    at += timedelta(minutes=probe_min)
    step = 7 if weekly else 1
    expected = False
    for back in range(0, 9):
        d = at.astimezone(BERLIN).date() - timedelta(days=back)
        if (d - first_local.date()).days % step:
            continue
        start = datetime.combine(d, first_local.time(), tzinfo=BERLIN).astimezone(UTC)
        nxt = datetime.combine(d + timedelta(days=step), first_local.time(), tzinfo=BERLIN).astimezone(UTC)
        if start <= at < min(start + timedelta(minutes=duration_min), nxt):
            expected = True
        if start <= at:
            break  # only the latest occurrence that has begun counts
    assert (val([p], at, tz=BERLIN) == 10.0) is expected


_volts = st.none() | st.floats(0, 600, allow_nan=False)
_amps = st.none() | st.floats(0, 80, allow_nan=False)


@SETTINGS
@given(
    watts=st.floats(0, 60000, allow_nan=False),
    number_phases=st.none() | st.integers(1, 3),
    wired=st.sampled_from([1, 3]),
    volts=st.tuples(_volts, _volts, _volts),
    amps=st.tuples(_amps, _amps, _amps),
    measured=st.booleans(),
)
def test_watts_and_amps_convert_both_ways_with_the_measured_voltage_and_phases(
    watts: float,
    number_phases: int | None,
    wired: int,
    volts: tuple[float | None, float | None, float | None],
    amps: tuple[float | None, float | None, float | None],
    measured: bool,
) -> None:
    from firmware.ocpp.v16.electrical import IN_USE_A, electrical
    from hal.interfaces import MeterReading

    reading = MeterReading(volts, amps, (None, None, None), 0.0, 0.0) if measured else None
    e = electrical(reading, 230.0, wired)
    in_use = [i for i in amps if i is not None and i >= IN_USE_A] if measured else []
    assert 115.0 <= e.voltage_v <= 345.0  # measured values outside 50..150 % of nominal are not believed
    if not measured:
        assert e.voltage_v == 230.0
    phases = e.phases(number_phases)
    assert 1 <= phases <= 3
    assert phases >= len(in_use)  # a power limit is never squeezed onto fewer phases than the EV uses
    per_phase = e.to_amps(watts, "W", number_phases)
    assert per_phase * e.voltage_v * phases == pytest.approx(watts, rel=1e-9, abs=1e-6)
    assert e.to_watts(per_phase, number_phases) == pytest.approx(watts, rel=1e-9, abs=1e-6)
    assert e.to_amps(per_phase, "A", number_phases) == per_phase
