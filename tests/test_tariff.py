"""The local tariff and cost meter: every component against hand-computed values, and the laws the ledger relies on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.payment.cost import Cost, CostMeter, ExactCost, Sample, session_cost, summarize
from firmware.payment.tariff import (
    Band,
    Tariff,
    TimeBasis,
    allocate,
    format_band,
    parse_band,
    register_wh,
    round_money,
    to_money,
)
from hal.interfaces import MeterReading

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 1, 14, 8, 0, tzinfo=UTC)  # a Wednesday, winter time in Berlin (UTC+1)
H = timedelta(hours=1)
M = timedelta(minutes=1)


def cost_of(
    tariff: Tariff, *samples: tuple[timedelta, int | str, float] | tuple[timedelta, int | str, float, bool]
) -> Cost:
    """A session from (offset from T0, register Wh, current A[, evse_suspended]) samples."""
    built = [Sample(T0 + s[0], s[1], s[2], *s[3:]) for s in samples]  # type: ignore[arg-type]
    return session_cost(tariff, built)


# ── each component, exact ──────────────────────────────────────────────────────────────────────────────────────


def test_energy_is_price_times_register_difference() -> None:
    tariff = Tariff(energy_per_kwh="0.39")  # type: ignore[arg-type]
    cost = cost_of(tariff, (0 * H, 1000, 16.0), (2 * H, 13345, 16.0))
    assert cost.exact.energy == Fraction("4.81455")  # 12.345 kWh x 0.39
    assert (cost.energy, cost.total) == (Decimal("4.81"), Decimal("4.81"))
    assert cost.energy_wh == Decimal("12345")
    assert str(cost.total) == "4.81"  # exactly `decimals` places


def test_time_price_counts_charging_hours_or_connected_hours() -> None:
    samples = ((0 * H, 0, 16.0), (1 * H, 11000, 0.0), (2 * H, 11000, 0.0))  # 1 h charging, then 1 h plugged, idle
    charging = cost_of(Tariff(time_per_hour="1.20"), *samples)  # type: ignore[arg-type]
    connected = cost_of(Tariff(time_per_hour="1.20", time_basis=TimeBasis.CONNECTED), *samples)  # type: ignore[arg-type]
    assert (charging.time, charging.charging_time, charging.connected_time) == (Decimal("1.20"), H, 2 * H)
    assert connected.time == Decimal("2.40")


def test_session_fee_is_charged_once_even_without_energy() -> None:
    tariff = Tariff(session_fee="1.50", energy_per_kwh="0.30")  # type: ignore[arg-type]
    assert cost_of(tariff, (0 * H, 500, 0.0), (3 * H, 500, 0.0)).total == Decimal("1.50")
    assert cost_of(tariff, (0 * H, 0, 16.0), (1 * H, 10000, 16.0), (2 * H, 20000, 16.0)).total == Decimal("7.50")


IDLE = Tariff(idle_per_hour="6.00", idle_grace_min=30)  # type: ignore[arg-type]


def test_idle_fee_starts_after_the_grace_once_charging_has_ended() -> None:
    cost = cost_of(IDLE, (0 * H, 0, 16.0), (1 * H, 11000, 0.0), (3 * H, 11000, 0.0))  # idle from 1 h to 3 h
    assert cost.idle_time == 90 * M  # 2 h - 30 min grace
    assert cost.idle == Decimal("9.00")


def test_no_idle_fee_inside_the_grace_or_before_any_charging() -> None:
    assert cost_of(IDLE, (0 * H, 0, 16.0), (1 * H, 11000, 0.0), (1 * H + 30 * M, 11000, 0.0)).idle == Decimal("0.00")
    # Plugged in an hour before the car starts: waiting for it is not idling.
    before = cost_of(IDLE, (0 * H, 0, 0.0), (1 * H, 0, 16.0), (2 * H, 11000, 16.0))
    assert before.idle == Decimal("0.00")


def test_charger_held_time_is_not_idle_and_restarts_the_grace() -> None:
    cost = cost_of(
        IDLE,
        (0 * H, 0, 16.0),
        (1 * H, 11000, 0.0, True),  # the charger holds (SuspendedEVSE) for 30 min
        (1 * H + 30 * M, 11000, 0.0),  # released; the car takes nothing
        (3 * H, 11000, 0.0),
    )
    assert cost.idle_time == 1 * H  # 90 min idle - 30 min grace
    assert cost.idle == Decimal("6.00")


def test_a_charging_burst_restarts_the_grace() -> None:
    cost = cost_of(
        IDLE,
        (0 * H, 0, 16.0),
        (1 * H, 11000, 0.0),  # idle 20 min: inside the grace
        (1 * H + 20 * M, 11000, 16.0),  # charges 10 min more
        (1 * H + 30 * M, 12000, 0.0),  # idle 60 min: 30 min billed
        (2 * H + 30 * M, 12000, 0.0),
    )
    assert cost.idle_time == 30 * M
    assert cost.idle == Decimal("3.00")


def test_energy_across_a_band_edge_is_split_by_time() -> None:
    # Peak 07:00-22:00 Berlin time; Wednesday 21:30-22:30 local (20:30-21:30 UTC), 11 kWh taken evenly.
    tariff = Tariff(
        energy_per_kwh="0.30",  # type: ignore[arg-type]
        bands=(parse_band("Mon-Fri 07:00-22:00 kwh=0.50"),),
        zone=BERLIN,
    )
    start = datetime(2026, 1, 14, 20, 30, tzinfo=UTC)
    cost = session_cost(tariff, [Sample(start, 0, 16.0), Sample(start + H, 11000, 16.0)])
    assert cost.exact.energy == Fraction("5.5") * Fraction("0.50") + Fraction("5.5") * Fraction("0.30")
    assert cost.energy == Decimal("4.40")


def test_band_time_price_and_unpriced_component_falls_back_to_base() -> None:
    tariff = Tariff(
        energy_per_kwh="0.30",  # type: ignore[arg-type]
        time_per_hour="1.00",  # type: ignore[arg-type]
        bands=(parse_band("daily 00:00-06:00 hour=0"),),
        zone=UTC,
    )
    start = datetime(2026, 1, 14, 5, 0, tzinfo=UTC)
    cost = session_cost(tariff, [Sample(start, 0, 16.0), Sample(start + 2 * H, 20000, 16.0)])
    assert (cost.energy, cost.time) == (Decimal("6.00"), Decimal("1.00"))  # first hour's time is free


def test_spring_forward_night_bills_real_hours_and_local_band_edges() -> None:
    # 29 Mar 2026 Berlin jumps 02:00 CET -> 03:00 CEST (01:00 UTC). Band 03:00-06:00 local starts at 01:00 UTC.
    tariff = Tariff(
        energy_per_kwh="0.40",  # type: ignore[arg-type]
        time_per_hour="1.00",  # type: ignore[arg-type]
        bands=(parse_band("daily 03:00-06:00 kwh=0.20"),),
        zone=BERLIN,
    )
    start = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)  # 01:00 CET
    end = datetime(2026, 3, 29, 3, 0, tzinfo=UTC)  # 05:00 CEST: four wall-clock hours, three real ones
    cost = session_cost(tariff, [Sample(start, 0, 16.0), Sample(end, 30000, 16.0)])
    assert [(a.hour, b.hour) for a, b, _ in tariff.pieces(start, end)] == [(0, 1), (1, 3)]
    assert cost.energy == Decimal("8.00")  # 10 kWh at 0.40 + 20 kWh at 0.20
    assert cost.time == Decimal("3.00")  # three real hours
    assert cost.total == Decimal("11.00")


def test_fall_back_night_band_spans_the_repeated_hour() -> None:
    # 25 Oct 2026 Berlin repeats 02:00-03:00. A band 02:00-03:00 runs from the first 02:00 (00:00 UTC) to 03:00 CET
    # (02:00 UTC): two real hours.
    tariff = Tariff(
        energy_per_kwh="0.40",  # type: ignore[arg-type]
        bands=(parse_band("daily 02:00-03:00 kwh=0.10"),),
        zone=BERLIN,
    )
    start = datetime(2026, 10, 24, 23, 0, tzinfo=UTC)
    cost = session_cost(tariff, [Sample(start, 0, 16.0), Sample(start + 4 * H, 40000, 16.0)])
    assert cost.energy == Decimal("10.00")  # 10 kWh at 0.40, 20 kWh at 0.10, 10 kWh at 0.40


def test_rounding_is_half_up_once_at_the_end_and_allocated_to_the_parts() -> None:
    tariff = Tariff(energy_per_kwh="5", time_per_hour="18")  # type: ignore[arg-type]
    # 1 Wh at 5/kWh = 0.005; 1 s at 18/h = 0.005: each part alone would round to 0.01, their sum is 0.01.
    cost = session_cost(tariff, [Sample(T0, 0, 16.0), Sample(T0 + timedelta(seconds=1), 1, 16.0)])
    assert cost.exact.total == Fraction(1, 100)
    assert (cost.energy, cost.time, cost.total) == (Decimal("0.01"), Decimal("0.00"), Decimal("0.01"))
    assert round_money(Fraction(5, 1000), 2) == Decimal("0.01")  # banker's rounding would say 0.00
    assert round_money(Fraction(25, 1000), 2) == Decimal("0.03")
    assert round_money(Fraction(1, 3), 0) == Decimal("0")
    assert round_money(Fraction(-5, 1000), 2) == Decimal("-0.01")  # away from zero


def test_decimals_zero_and_four() -> None:
    exact = ExactCost(energy=Fraction("1.23456"))
    assert Cost.from_exact(exact, "JPY", 0, at=T0).total == Decimal("1")
    assert Cost.from_exact(exact, "EUR", 4, at=T0).total == Decimal("1.2346")


def test_running_cost_holds_the_last_state_and_adds_no_energy() -> None:
    tariff = Tariff(energy_per_kwh="0.30", time_per_hour="1.00", idle_per_hour="2", idle_grace_min=0)  # type: ignore[arg-type]
    meter = CostMeter(tariff, Sample(T0, 0, 16.0))
    meter.add(Sample(T0 + H, 10000, 16.0))
    later = meter.running(T0 + 2 * H)  # still charging by the last sample: one more hour of time, no energy
    assert (later.energy, later.time, later.idle) == (Decimal("3.00"), Decimal("2.00"), Decimal("0.00"))
    meter.add(Sample(T0 + 2 * H, 10000, 0.0))
    assert meter.running(T0 + 3 * H).idle == Decimal("2.00")
    final = meter.finish(Sample(T0 + 3 * H, 10000, 0.0))
    assert final.final and final.total == Decimal("7.00")
    assert meter.running(T0 + 9 * H) == final  # final is final
    with pytest.raises(ValueError, match="final"):
        meter.add(Sample(T0 + 4 * H, 10000, 0.0))


def test_samples_must_not_go_back() -> None:
    meter = CostMeter(Tariff(), Sample(T0, 1000, 0.0))
    with pytest.raises(ValueError, match="before the previous"):
        meter.add(Sample(T0 - M, 1000, 0.0))
    with pytest.raises(ValueError, match="backwards"):
        meter.add(Sample(T0 + M, 999, 0.0))


def test_sample_from_a_float_meter_reading_is_exact_to_a_milliwatt_hour() -> None:
    reading = MeterReading((230.0, 230.0, None), (16.0, 15.5, None), (3680.0, 3565.0, None), 7245.0, 0.1 + 0.2)
    s = Sample.from_reading(T0, reading)
    assert (s.energy_wh, s.current_a) == (Decimal("0.300"), 16.0)
    assert register_wh(1234.5678) == Decimal("1234.568")


def test_cost_as_dict_carries_decimal_strings() -> None:
    cost = cost_of(Tariff(energy_per_kwh="0.39"), (0 * H, 0, 16.0), (H, 1000, 16.0))  # type: ignore[arg-type]
    d = cost.as_dict()
    assert d["total"] == "0.39" and d["currency"] == "EUR" and d["energy_wh"] == "1000.000"


# ── the boundary: floats, bad values, overlapping bands ────────────────────────────────────────────────────────


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_floats_are_refused_everywhere_money_enters(value: float) -> None:
    with pytest.raises(TypeError, match="float"):
        to_money(value)
    with pytest.raises(TypeError, match="float"):
        Tariff(energy_per_kwh=value)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        Tariff(session_fee=value)  # type: ignore[arg-type]


def test_float_energy_must_go_through_register_wh() -> None:
    with pytest.raises(TypeError, match="register_wh"):
        Sample(T0, 12.5, 0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"currency": "eur"}, "ISO 4217"),
        ({"currency": "EURO"}, "ISO 4217"),
        ({"decimals": 5}, "0..4"),
        ({"decimals": True}, "0..4"),
        ({"energy_per_kwh": "-0.01"}, "negative"),
        ({"energy_per_kwh": "abc"}, "not a decimal"),
        ({"energy_per_kwh": "NaN"}, "finite"),
        ({"session_fee": "1e9"}, "decimal point"),
        ({"time_basis": "plugged"}, "charging' or 'connected"),
        ({"idle_grace_min": -1}, "idle_grace_min"),
    ],
)
def test_bad_tariff_values_are_refused_with_the_reason(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Tariff(**kwargs)  # type: ignore[arg-type]


def test_overlapping_bands_are_refused_naming_both_and_where() -> None:
    with pytest.raises(ValueError, match=r"overlap from Fri 21:00 to Fri 22:00"):
        Tariff.from_config(bands=["Mon-Fri 07:00-22:00 kwh=0.45", "Fri 21:00-23:30 hour=1"])
    # Across the week's end: Sunday night runs into Monday morning.
    with pytest.raises(
        ValueError, match=r"'Sun 22:00-06:00 kwh=0.1' and 'Mon 05:00-07:00 kwh=0.2' overlap from Mon 05:00"
    ):
        Tariff.from_config(bands=["Sun 22:00-06:00 kwh=0.1", "Mon 05:00-07:00 kwh=0.2"])
    touching = Tariff.from_config(bands=["daily 22:00-06:00 kwh=0.1", "daily 06:00-22:00 kwh=0.3"], timezone="UTC")
    assert touching.prices_at(datetime(2026, 1, 1, 6, tzinfo=UTC))[0] == Decimal("0.3")
    assert touching.prices_at(datetime(2026, 1, 1, 5, 59, tzinfo=UTC))[0] == Decimal("0.1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Mon-Fri 07:00-22:00", "sets no price"),
        ("Mon-Fri 07:00-22:00 kwh=0.1 kwh=0.2", "twice"),
        ("Mon-Fri 07:00-22:00 day=0.1", "unknown price"),
        ("Mon-Fri 07:00-22:00 kwh=-1", "negative"),
        ("Funday 07:00-22:00 kwh=1", "unknown day"),
        ("Mon 25:00-26:00 kwh=1", "not a time of day"),
    ],
)
def test_bad_band_text(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_band(text)


def test_band_text_round_trips_and_config_errors_name_the_entry() -> None:
    band = parse_band("Sat,Sun 00:00-24:00 kwh=0.25 hour=0.5")
    assert parse_band(format_band(band)) == band
    assert isinstance(band, Band)
    with pytest.raises(ValueError, match="band 2:"):
        Tariff.from_config(bands=["daily 00:00-06:00 kwh=0.1", "nonsense"])


def test_next_price_change_and_describe() -> None:
    tariff = Tariff.from_config(energy_per_kwh="0.30", bands=["Mon-Fri 07:00-22:00 kwh=0.50"], timezone="Europe/Berlin")
    assert tariff.next_price_change(T0) == datetime(2026, 1, 14, 21, 0, tzinfo=UTC)  # 22:00 CET
    assert "Mon-Fri 07:00-22:00 kwh=0.50" in tariff.describe()
    assert Tariff().free and not tariff.free


# ── laws (hypothesis) ──────────────────────────────────────────────────────────────────────────────────────────

prices = st.decimals(min_value=0, max_value=10, places=4).map(str)
BAND_SETS = [
    (),
    ("Mon-Fri 07:00-22:00 kwh=0.50 hour=2",),
    ("daily 22:00-06:00 kwh=0.10", "Sat,Sun 06:00-22:00 hour=0"),
    ("daily 02:00-03:00 kwh=0.05", "daily 03:00-06:00 hour=0.5 kwh=0.2"),  # edges in the DST gap / overlap
]


@st.composite
def tariffs(draw: st.DrawFn) -> Tariff:
    return Tariff.from_config(
        currency="EUR",
        decimals=draw(st.integers(0, 4)),
        energy_per_kwh=draw(prices),
        time_per_hour=draw(prices),
        time_basis=draw(st.sampled_from(["charging", "connected"])),
        session_fee=draw(prices),
        idle_per_hour=draw(prices),
        idle_grace_min=draw(st.integers(0, 120)),
        bands=draw(st.sampled_from(BAND_SETS)),
        timezone="Europe/Berlin",
    )


#: One stretch: (seconds, Wh taken, current at its start, charger holding).
steps = st.lists(
    st.tuples(st.integers(0, 4 * 3600), st.integers(0, 20000), st.sampled_from([0.0, 0.4, 16.0]), st.booleans()),
    min_size=1,
    max_size=12,
)
starts = st.datetimes(
    min_value=datetime(2026, 3, 27), max_value=datetime(2026, 10, 27), timezones=st.just(UTC)
)  # covers both 2026 DST changes


def build(start: datetime, plan: list[tuple[int, int, float, bool]]) -> list[Sample]:
    t, wh = start, 0
    samples = []
    for seconds, delta, amps, held in plan:
        samples.append(Sample(t, wh, amps, held))
        t, wh = t + timedelta(seconds=seconds), wh + delta
    samples.append(Sample(t, wh, 0.0))
    return samples


@settings(max_examples=60, deadline=None)
@given(tariffs(), starts, steps)
def test_shown_parts_add_up_to_the_total_and_stay_within_a_unit(tariff: Tariff, start: datetime, plan: list) -> None:  # type: ignore[type-arg]
    cost = session_cost(tariff, build(start, plan))
    unit = Fraction(1, 10**tariff.decimals)
    assert cost.energy + cost.time + cost.fee + cost.idle == cost.total
    assert cost.total == round_money(cost.exact.total, tariff.decimals)
    for shown, exact in zip(
        (cost.energy, cost.time, cost.fee, cost.idle),
        (cost.exact.energy, cost.exact.time, cost.exact.fee, cost.exact.idle),
        strict=True,
    ):
        assert abs(Fraction(shown) - exact) < unit
        assert shown.as_tuple().exponent == -tariff.decimals


@settings(max_examples=60, deadline=None)
@given(tariffs(), starts, steps, st.data())
def test_cost_is_monotone_in_energy(tariff: Tariff, start: datetime, plan: list, data: st.DataObject) -> None:  # type: ignore[type-arg]
    # More energy in a stretch that already counts as charging (so the charging/idle pattern stays the same).
    charging = [i for i, (_s, wh, amps, _h) in enumerate(plan) if wh > 0 or amps >= 1.0]
    if not charging:
        return
    i = data.draw(st.sampled_from(charging))
    more = list(plan)
    more[i] = (plan[i][0], plan[i][1] + data.draw(st.integers(1, 50000)), plan[i][2], plan[i][3])
    base, bigger = session_cost(tariff, build(start, plan)), session_cost(tariff, build(start, more))
    assert bigger.exact.total >= base.exact.total
    assert bigger.total >= base.total


@settings(max_examples=60, deadline=None)
@given(tariffs(), starts, steps, st.lists(st.integers(0, 6 * 3600), min_size=1, max_size=5))
def test_cost_is_monotone_in_time(tariff: Tariff, start: datetime, plan: list, waits: list[int]) -> None:  # type: ignore[type-arg]
    samples = build(start, plan)
    meter = CostMeter(tariff, samples[0])
    previous = meter.running()
    for s in samples[1:]:  # every sample adds, never takes away
        meter.add(s)
        now = meter.running()
        assert now.exact.total >= previous.exact.total and now.total >= previous.total
        previous = now
    at = meter.last.at
    for w in sorted(waits):  # and so does waiting
        later = meter.running(at + timedelta(seconds=w))
        assert later.exact.total >= previous.exact.total
        previous = later


@settings(max_examples=60, deadline=None)
@given(tariffs(), starts, steps, st.data())
def test_splitting_the_samples_anywhere_keeps_the_exact_parts(
    tariff: Tariff,
    start: datetime,
    plan: list,  # type: ignore[type-arg]
    data: st.DataObject,
) -> None:
    samples = build(start, plan)
    k = data.draw(st.integers(0, len(samples) - 1))
    whole = session_cost(tariff, samples).exact
    first, second = session_cost(tariff, samples[: k + 1]).exact, session_cost(tariff, samples[k:]).exact
    # Energy and time are per stretch: the pieces add up exactly. The fee is per session (each piece bills one).
    assert first.energy + second.energy == whole.energy
    assert first.time + second.time == whole.time
    assert first.fee == second.fee == whole.fee
    # The running cost at the split sample is the cost of the first piece; what follows adds exactly the rest.
    meter = CostMeter(tariff, samples[0])
    for s in samples[1 : k + 1]:
        meter.add(s)
    assert meter.exact() == first
    for s in samples[k + 1 :]:
        meter.add(s)
    assert meter.exact() == whole


@settings(max_examples=40, deadline=None)
@given(tariffs(), st.lists(st.tuples(starts, steps), min_size=0, max_size=6))
def test_summary_of_many_sessions_is_the_sum_of_their_sessions(tariff: Tariff, sessions: list) -> None:  # type: ignore[type-arg]
    costs = [session_cost(tariff, build(start, plan)) for start, plan in sessions]
    summary = summarize(costs, currency="EUR", decimals=tariff.decimals)
    assert summary.sessions == len(costs)
    assert summary.total == sum((c.total for c in costs), Decimal(0))
    assert summary.energy == sum((c.energy for c in costs), Decimal(0))
    assert summary.idle == sum((c.idle for c in costs), Decimal(0))
    assert summary.energy + summary.time + summary.fee + summary.idle == summary.total
    assert summary.energy_wh == sum((c.energy_wh for c in costs), Decimal(0))


def test_summary_refuses_mixed_currencies() -> None:
    eur = Cost.from_exact(ExactCost(fee=Fraction(1)), "EUR", 2, at=T0)
    chf = Cost.from_exact(ExactCost(fee=Fraction(1)), "CHF", 2, at=T0)
    with pytest.raises(ValueError, match="CHF"):
        summarize([eur, chf], currency="EUR")


@given(st.decimals(min_value=-1000, max_value=1000, places=6), st.integers(0, 4))
def test_round_money_agrees_with_decimal_round_half_up(value: Decimal, decimals: int) -> None:
    expected = value.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP) + 0  # + 0: no "-0.00"
    assert round_money(value, decimals) == expected
    assert str(round_money(value, decimals)) == str(expected)


@given(
    st.lists(st.fractions(min_value=0, max_value=1000, max_denominator=10**6), min_size=1, max_size=5),
    st.integers(0, 4),
)
def test_allocation_adds_up(parts: list[Fraction], decimals: int) -> None:
    shown, total = allocate(parts, decimals)
    assert sum(shown, Decimal(0)) == total == round_money(sum(parts, Fraction(0)), decimals)
    assert all(abs(Fraction(s) - p) < Fraction(1, 10**decimals) for s, p in zip(shown, parts, strict=True))
