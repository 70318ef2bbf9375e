from __future__ import annotations

import asyncio
import os
import shutil
import time as systime
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from firmware.limits.arbiter import Arbiter
from firmware.limits.offpeak import (
    DAY_NAMES,
    OffPeakGate,
    Window,
    format_window,
    in_window,
    load_zone,
    next_change,
    parse_window,
    parse_windows,
    system_zone,
    zone_name,
)
from hal.clock import FakeClock

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
ZONES: list[tzinfo] = [UTC, BERLIN, NEW_YORK]
#: 2026 DST changes: Berlin 02:00 CET -> 03:00 CEST and 03:00 CEST -> 02:00 CET; New York 02:00 EST -> 03:00 EDT and
#: 02:00 EDT -> 01:00 EST.
TRANSITIONS = [
    datetime(2026, 3, 29, 1, tzinfo=UTC),
    datetime(2026, 10, 25, 1, tzinfo=UTC),
    datetime(2026, 3, 8, 7, tzinfo=UTC),
    datetime(2026, 11, 1, 6, tzinfo=UTC),
]
FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def z(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def local(tz: tzinfo, y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    """An unambiguous local wall time as an aware datetime."""
    return datetime(y, mo, d, h, mi, tzinfo=tz)


def ws(*texts: str) -> tuple[Window, ...]:
    return parse_windows(list(texts))


def oracle(windows: tuple[Window, ...], wall: datetime) -> bool:
    """Naive wall-clock reading of the rules: is this local time of this local weekday inside a window?"""
    wd = wall.weekday()
    s = wall.hour * 3600 + wall.minute * 60 + wall.second + wall.microsecond / 1e6
    for w in windows:
        start, end = w.start_min * 60, w.end_min * 60
        if w.end_min > w.start_min:
            if wd in w.days and start <= s < end:
                return True
        else:
            if wd in w.days and s >= start:
                return True
            if (wd - 1) % 7 in w.days and s < end:
                return True
    return False


# --- strategies ---------------------------------------------------------------------------------------------------

# Times near DST changes (01:00-03:30) and midnight come up often, the rest at random.
minutes = st.one_of(st.integers(0, 1439), st.sampled_from([0, 60, 90, 120, 130, 150, 160, 180, 210, 1320, 1439]))
end_minutes = st.one_of(minutes, st.just(1440))
windows_st = st.lists(
    st.builds(Window, st.frozensets(st.integers(0, 6), min_size=1), minutes, end_minutes), min_size=1, max_size=3
).map(tuple)
instants = st.one_of(
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31)).map(lambda d: d.replace(tzinfo=UTC)),
    st.builds(
        lambda t, s, us: t + timedelta(seconds=s, microseconds=us),
        st.sampled_from(TRANSITIONS),
        st.integers(-4 * 86400, 4 * 86400),
        st.sampled_from([0, 0, 1, 999_999]),
    ),
)


# --- parsing ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "days", "start", "end"),
    [
        ("Mon-Fri 22:00-06:00", {0, 1, 2, 3, 4}, 22 * 60, 6 * 60),
        ("Sat,Sun 00:00-24:00", {5, 6}, 0, 1440),
        ("daily 01:00-05:30", set(range(7)), 60, 330),
        ("Fri-Mon 20:00-23:00", {4, 5, 6, 0}, 1200, 1380),
        ("sun-tue 7:05-9:00", {6, 0, 1}, 425, 540),
        ("  Monday - Wednesday , FRI   22:00 - 06:00 ", {0, 1, 2, 4}, 1320, 360),
        ("Mon-Mon 00:00-00:00", {0}, 0, 0),
        ("DAILY\t23:59-24:00", set(range(7)), 1439, 1440),
    ],
)
def test_parse_accepts_the_documented_syntax(text: str, days: set[int], start: int, end: int) -> None:
    assert parse_window(text) == Window(frozenset(days), start, end)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected '<days> HH:MM-HH:MM'"),
        ("22:00-06:00", "days are missing"),
        ("Mon-Fry 22:00-06:00", "unknown day 'Fry'"),
        ("Mon 24:00-06:00", "24:00 can only end"),
        ("Mon 22:00-25:00", "end time '25:00' is not a time of day"),
        ("Mon 22:60-23:00", "start time '22:60' is not a time of day"),
        ("Mon 22:00-24:30", "end time '24:30'"),
        ("Mon22:00-06:00", "put a space"),
        ("daily,Mon 01:00-02:00", "'daily' cannot be combined"),
        ("Mon-Tue-Wed 01:00-02:00", "more than one '-'"),
        ("Mon,,Tue 01:00-02:00", "a day is missing"),
        ("Mon 22-06", "expected '<days> HH:MM-HH:MM'"),
        ("Mon 22:00", "expected '<days> HH:MM-HH:MM'"),
        ("Mon 22:00-06:00 extra", "expected '<days> HH:MM-HH:MM'"),
        ("Mon 2200-0600", "expected"),
        ("Mon ２２:00-06:00", "expected"),  # non-ASCII digits are not times
    ],
)
def test_parse_rejects_with_a_message_saying_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_window(text)
    assert fragment in str(e.value)
    assert repr(text) in str(e.value) or not text


def test_parse_windows_names_the_bad_entry_and_refuses_non_lists() -> None:
    with pytest.raises(ValueError, match=r"^entry 2: 'Mon 25:00-06:00': start time"):
        parse_windows(["daily 01:00-02:00", "Mon 25:00-06:00"])
    with pytest.raises(ValueError, match="entry 1: a window must be a string, got int"):
        parse_windows([7])
    for not_a_list in ("Mon 22:00-06:00", None, 3, {"a": 1}):
        with pytest.raises(ValueError, match="expected a list of window strings"):
            parse_windows(not_a_list)
    assert parse_windows([]) == ()


@pytest.mark.parametrize(
    ("days", "start", "end"), [(set(), 0, 60), ({7}, 0, 60), ({0}, 1440, 60), ({0}, -1, 60), ({0}, 0, 1441)]
)
def test_window_refuses_impossible_values(days: set[int], start: int, end: int) -> None:
    with pytest.raises(ValueError):
        Window(frozenset(days), start, end)


def test_format_is_canonical() -> None:
    assert format_window(parse_window("fri,sat,sun,mon 7:00-8:00")) == "Fri-Mon 07:00-08:00"
    assert format_window(parse_window("Wed,Mon 00:00-24:00")) == "Mon,Wed 00:00-24:00"
    assert format_window(parse_window("Sun-Sat 01:00-02:00")) == "daily 01:00-02:00"
    assert format_window(parse_window("Sat,Sun,Wed 22:00-06:00")) == "Wed,Sat,Sun 22:00-06:00"
    assert str(parse_window("Mon-Wed,Fri 22:00-06:00")) == "Mon-Wed,Fri 22:00-06:00"


@given(st.builds(Window, st.frozensets(st.integers(0, 6), min_size=1), st.integers(0, 1439), st.integers(0, 1440)))
def test_format_then_parse_round_trips(w: Window) -> None:
    text = format_window(w)
    assert parse_window(text) == w
    assert format_window(parse_window(text)) == text


day_item = st.one_of(
    st.tuples(st.integers(0, 6)).map(lambda t: (t[0], t[0], False)),
    st.tuples(st.integers(0, 6), st.integers(0, 6)).map(lambda t: (t[0], t[1], True)),
)


@given(
    st.lists(st.tuples(day_item, st.booleans(), st.sampled_from([str.lower, str.upper, str.title])), min_size=1),
    st.sampled_from([",", ", ", " ,"]),
    st.integers(0, 1439),
    st.integers(0, 1440),
    st.booleans(),
    st.sampled_from(["-", " - "]),
)
def test_parse_spellings_give_the_expected_days_and_times(
    items: list[tuple[tuple[int, int, bool], bool, Callable[[str], str]]],
    sep: str,
    start: int,
    end: int,
    short_hour: bool,
    dash: str,
) -> None:
    expected: set[int] = set()
    parts = []
    for (a, b, is_range), full, case in items:

        def name(d: int, full: bool = full, case: Callable[[str], str] = case) -> str:
            return case(FULL[d] if full else DAY_NAMES[d])

        if is_range:
            parts.append(f"{name(a)}-{name(b)}")
            d = a
            expected.add(d)
            while d != b:
                d = (d + 1) % 7
                expected.add(d)
        else:
            parts.append(name(a))
            expected.add(a)

    def hm(m: int) -> str:
        return f"{m // 60}:{m % 60:02d}" if short_hour else f"{m // 60:02d}:{m % 60:02d}"

    text = f"{sep.join(parts)} {hm(start)}{dash}{hm(end)}"
    assert parse_window(text) == Window(frozenset(expected), start, end)


garbage = st.one_of(
    st.text(max_size=40),
    st.lists(
        st.sampled_from(["Mon", "sun", "Fri", "daily", "-", ",", " ", ":", "\t", "0", "2", "4", "9", "24", "60", "x"]),
        max_size=14,
    ).map("".join),
)


@given(garbage)
def test_parse_rejects_garbage_only_with_value_error(text: str) -> None:
    try:
        w = parse_window(text)
    except ValueError as e:
        assert str(e)
    else:
        assert parse_window(format_window(w)) == w


@given(
    st.one_of(
        st.none(),
        st.integers(),
        garbage,
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.lists(st.one_of(garbage, st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2)), max_size=4),
    )
)
def test_parse_windows_rejects_anything_only_with_value_error(value: object) -> None:
    try:
        result = parse_windows(value)
    except ValueError:
        return
    assert isinstance(value, list)
    assert len(result) == len(value)


# --- time zones ---------------------------------------------------------------------------------------------------


def test_load_zone_by_name_and_bad_names() -> None:
    berlin = load_zone("Europe/Berlin")
    assert zone_name(berlin) == "Europe/Berlin"
    assert berlin.utcoffset(datetime(2026, 1, 1)) == timedelta(hours=1)
    assert berlin.utcoffset(datetime(2026, 7, 1)) == timedelta(hours=2)
    for bad in ("Europe/Berln", "../etc/passwd", "Europe/", "Europe", "\x00", "UTC+1"):
        with pytest.raises(ValueError, match="unknown time zone"):
            load_zone(bad)


@given(st.text(max_size=20))
@settings(max_examples=50)
def test_load_zone_rejects_garbage_only_with_value_error(name: str) -> None:
    assume(name.strip())
    try:
        tz = load_zone(name)
    except ValueError:
        return
    assert tz.utcoffset(datetime(2026, 1, 1)) is not None


def test_empty_zone_is_the_system_zone_with_its_dst_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    tz = load_zone("")
    assert zone_name(tz) == "America/New_York"
    assert tz.utcoffset(datetime(2026, 1, 1)) == timedelta(hours=-5)
    assert tz.utcoffset(datetime(2026, 7, 1)) == timedelta(hours=-4)
    monkeypatch.setenv("TZ", ":Europe/Berlin")
    assert zone_name(load_zone("  ")) == "Europe/Berlin"


@pytest.mark.skipif(not os.path.isfile("/usr/share/zoneinfo/Asia/Tokyo"), reason="no system tz database")
def test_system_zone_from_etc_localtime(tmp_path: Path) -> None:
    link = tmp_path / "localtime-link"
    link.symlink_to("/usr/share/zoneinfo/Asia/Tokyo")
    assert zone_name(system_zone({}, str(link))) == "Asia/Tokyo"
    copy = tmp_path / "localtime-copy"
    shutil.copyfile("/usr/share/zoneinfo/America/New_York", copy)
    tz = system_zone({}, str(copy))
    assert tz.utcoffset(datetime(2026, 7, 1)) == timedelta(hours=-4)
    assert tz.utcoffset(datetime(2026, 1, 1)) == timedelta(hours=-5)
    assert system_zone({"TZ": "Europe/Berlin"}, str(link)) == BERLIN
    assert system_zone({}, str(tmp_path / "missing")) is UTC


# --- in_window / next_change --------------------------------------------------------------------------------------


def test_examples_in_berlin_winter() -> None:
    w = ws("Mon-Fri 22:00-06:00", "Sat,Sun 00:00-24:00", "daily 01:00-05:30")
    assert not in_window(w, local(BERLIN, 2026, 1, 7, 12), BERLIN)  # Wednesday noon
    assert in_window(w, local(BERLIN, 2026, 1, 7, 22), BERLIN)
    assert not in_window(w, local(BERLIN, 2026, 1, 7, 21, 59), BERLIN)
    assert in_window(w, local(BERLIN, 2026, 1, 8, 5, 59), BERLIN)
    assert not in_window(w, local(BERLIN, 2026, 1, 8, 6), BERLIN)
    assert in_window(w, local(BERLIN, 2026, 1, 10, 13), BERLIN)  # Saturday
    # Friday 22:00 to Monday 00:00 is one stretch: the windows are merged. "Mon-Fri 22:00-06:00" starts on Monday
    # evening, so Sunday night is only covered by the daily 01:00-05:30.
    assert next_change(w, local(BERLIN, 2026, 1, 9, 21), BERLIN) == local(BERLIN, 2026, 1, 9, 22)
    assert next_change(w, local(BERLIN, 2026, 1, 9, 22), BERLIN) == local(BERLIN, 2026, 1, 12, 0)
    assert next_change(w, local(BERLIN, 2026, 1, 12, 0), BERLIN) == local(BERLIN, 2026, 1, 12, 1)
    assert next_change(w, local(BERLIN, 2026, 1, 12, 1), BERLIN) == local(BERLIN, 2026, 1, 12, 5, 30)
    assert next_change(w, local(BERLIN, 2026, 1, 12, 5, 30), BERLIN) == local(BERLIN, 2026, 1, 12, 22)
    nc = next_change(w, local(BERLIN, 2026, 1, 9, 23), BERLIN)
    assert nc is not None and nc.utcoffset() == timedelta(0)


def test_week_wraps_sunday_to_monday() -> None:
    w = ws("Sun 22:00-06:00")
    assert in_window(w, z(2026, 1, 4, 23), UTC)  # Sunday
    assert in_window(w, z(2026, 1, 5, 5, 59, 59), UTC)  # Monday
    assert not in_window(w, z(2026, 1, 5, 6), UTC)
    assert not in_window(w, z(2026, 1, 5, 23), UTC)
    assert not in_window(w, z(2026, 1, 3, 23), UTC)  # Saturday
    assert next_change(w, z(2026, 1, 5, 6), UTC) == z(2026, 1, 11, 22)
    fri_mon = ws("Fri-Mon 20:00-23:00")
    answers = [in_window(fri_mon, z(2026, 1, 5 + i, 21), UTC) for i in range(7)]  # Mon .. Sun
    assert answers == [True, False, False, False, True, True, True]


def test_midnight_and_year_end() -> None:
    w = ws("daily 22:00-06:00")
    assert in_window(w, z(2026, 12, 31, 23, 59, 59), UTC)
    assert in_window(w, z(2027, 1, 1), UTC)
    assert next_change(w, z(2026, 12, 31, 23), UTC) == z(2027, 1, 1, 6)
    ends_at_midnight = ws("Mon 20:00-24:00")
    assert in_window(ends_at_midnight, z(2026, 1, 5, 23, 59, 59), UTC)
    assert not in_window(ends_at_midnight, z(2026, 1, 6), UTC)
    assert next_change(ends_at_midnight, z(2026, 1, 5, 21), UTC) == z(2026, 1, 6)


def test_a_window_ending_at_its_start_lasts_24_hours() -> None:
    w = ws("Wed 12:00-12:00")
    assert in_window(w, z(2026, 1, 8, 11, 59), UTC)  # Thursday
    assert next_change(w, z(2026, 1, 7, 12), UTC) == z(2026, 1, 8, 12)


def test_no_windows_and_always_on_never_change() -> None:
    assert not in_window((), z(2026, 1, 1), BERLIN)
    assert next_change((), z(2026, 1, 1), BERLIN) is None
    for always in (ws("daily 00:00-24:00"), ws("daily 13:00-13:00"), ws("Mon-Fri 00:00-24:00", "Fri-Sun 06:00-06:00")):
        for at in (z(2026, 3, 28, 23), z(2026, 10, 24, 23), z(2026, 6, 1)):
            assert in_window(always, at, BERLIN)
            assert next_change(always, at, BERLIN) is None


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        in_window(ws("daily 01:00-02:00"), datetime(2026, 1, 1), UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_change(ws("daily 01:00-02:00"), datetime(2026, 1, 1), UTC)


# DST, Europe/Berlin 2026: spring forward Sun 29 Mar 02:00 CET -> 03:00 CEST (01:00Z); fall back Sun 25 Oct
# 03:00 CEST -> 02:00 CET (01:00Z).


def test_berlin_nights_stay_22_to_06_local_across_both_changes() -> None:
    w = ws("daily 22:00-06:00")
    # Spring: opens 22:00 CET (21:00Z), closes 06:00 CEST (04:00Z): a 7 hour night.
    assert next_change(w, z(2026, 3, 28, 12), BERLIN) == z(2026, 3, 28, 21)
    assert next_change(w, z(2026, 3, 28, 21), BERLIN) == z(2026, 3, 29, 4)
    assert next_change(w, z(2026, 3, 29, 4), BERLIN) == z(2026, 3, 29, 20)
    # Autumn: opens 22:00 CEST (20:00Z), closes 06:00 CET (05:00Z): a 9 hour night.
    assert next_change(w, z(2026, 10, 24, 12), BERLIN) == z(2026, 10, 24, 20)
    assert next_change(w, z(2026, 10, 24, 20), BERLIN) == z(2026, 10, 25, 5)
    assert in_window(w, z(2026, 10, 25, 4, 59, 59), BERLIN)
    assert not in_window(w, z(2026, 10, 25, 5), BERLIN)


def test_berlin_start_and_end_in_the_spring_forward_gap_take_effect_at_the_jump() -> None:
    starts_in_gap = ws("Sun 02:30-05:00")
    assert not in_window(starts_in_gap, z(2026, 3, 29, 0, 59, 59), BERLIN)
    assert next_change(starts_in_gap, z(2026, 3, 28), BERLIN) == z(2026, 3, 29, 1)  # 03:00 CEST
    assert next_change(starts_in_gap, z(2026, 3, 29, 1), BERLIN) == z(2026, 3, 29, 3)  # 05:00 CEST
    ends_in_gap = ws("Sat 23:00-02:30")
    assert next_change(ends_in_gap, z(2026, 3, 28, 12), BERLIN) == z(2026, 3, 28, 22)
    assert next_change(ends_in_gap, z(2026, 3, 28, 22), BERLIN) == z(2026, 3, 29, 1)
    assert in_window(ends_in_gap, z(2026, 3, 29, 0, 59, 59), BERLIN)
    assert not in_window(ends_in_gap, z(2026, 3, 29, 1), BERLIN)


def test_berlin_window_inside_the_gap_is_skipped_that_day_only() -> None:
    w = ws("Sun 02:10-02:40")
    assert not any(in_window(w, z(2026, 3, 29, 0) + timedelta(minutes=m), BERLIN) for m in range(0, 180, 5))
    assert next_change(w, z(2026, 3, 28), BERLIN) == z(2026, 4, 5, 0, 10)  # 02:10 CEST a week later
    assert next_change(w, z(2026, 3, 22, 1, 40), BERLIN) == z(2026, 4, 5, 0, 10)


def test_berlin_start_in_the_fall_back_overlap_opens_once_and_stays_open() -> None:
    w = ws("Sun 02:30-05:00")
    assert next_change(w, z(2026, 10, 24), BERLIN) == z(2026, 10, 25, 0, 30)  # first 02:30 (CEST)
    assert in_window(w, z(2026, 10, 25, 1, 10), BERLIN)  # second 02:10 (CET): still open
    assert next_change(w, z(2026, 10, 25, 0, 30), BERLIN) == z(2026, 10, 25, 4)  # 05:00 CET


def test_berlin_end_in_the_fall_back_overlap_closes_once() -> None:
    w = ws("Sat 22:00-02:30")
    assert next_change(w, z(2026, 10, 24, 20), BERLIN) == z(2026, 10, 25, 0, 30)  # first 02:30 (CEST)
    assert not in_window(w, z(2026, 10, 25, 1, 10), BERLIN)  # second 02:10 (CET) reads "inside" but is not
    assert next_change(w, z(2026, 10, 25, 0, 30), BERLIN) == z(2026, 10, 31, 21)  # next Saturday 22:00 CET


# DST, America/New_York 2026: spring forward Sun 8 Mar 02:00 EST -> 03:00 EDT (07:00Z); fall back Sun 1 Nov
# 02:00 EDT -> 01:00 EST (06:00Z).


def test_new_york_nights_stay_22_to_06_local_across_both_changes() -> None:
    w = ws("daily 22:00-06:00")
    assert next_change(w, z(2026, 3, 7, 12), NEW_YORK) == z(2026, 3, 8, 3)  # 22:00 EST
    assert next_change(w, z(2026, 3, 8, 3), NEW_YORK) == z(2026, 3, 8, 10)  # 06:00 EDT
    assert next_change(w, z(2026, 10, 31, 12), NEW_YORK) == z(2026, 11, 1, 2)  # 22:00 EDT
    assert next_change(w, z(2026, 11, 1, 2), NEW_YORK) == z(2026, 11, 1, 11)  # 06:00 EST


def test_new_york_gap_and_overlap() -> None:
    gap = ws("Sun 02:15-04:00")
    assert next_change(gap, z(2026, 3, 7), NEW_YORK) == z(2026, 3, 8, 7)  # 03:00 EDT
    assert next_change(gap, z(2026, 3, 8, 7), NEW_YORK) == z(2026, 3, 8, 8)  # 04:00 EDT
    overlap = ws("daily 01:30-01:45")
    assert next_change(overlap, z(2026, 11, 1), NEW_YORK) == z(2026, 11, 1, 5, 30)  # first 01:30 (EDT)
    assert next_change(overlap, z(2026, 11, 1, 5, 30), NEW_YORK) == z(2026, 11, 1, 5, 45)
    assert not in_window(overlap, z(2026, 11, 1, 6, 35), NEW_YORK)  # second 01:35 (EST)
    assert next_change(overlap, z(2026, 11, 1, 5, 45), NEW_YORK) == z(2026, 11, 2, 6, 30)  # Monday 01:30 EST
    ends_in_overlap = ws("Sat 23:00-01:30")
    assert next_change(ends_in_overlap, z(2026, 11, 1, 3), NEW_YORK) == z(2026, 11, 1, 5, 30)
    assert not in_window(ends_in_overlap, z(2026, 11, 1, 6, 15), NEW_YORK)  # second 01:15 (EST)


@given(windows_st, instants, st.sampled_from(ZONES))
@settings(max_examples=300)
def test_in_window_is_local_wall_time(windows: tuple[Window, ...], at: datetime, tz: tzinfo) -> None:
    wall = at.astimezone(tz)
    # The second pass through a fall-back hour is the one place the naive reading double-counts (documented).
    assume(wall.fold == 0)
    assert in_window(windows, at, tz) == oracle(windows, wall.replace(tzinfo=None))


@given(windows_st, instants, st.sampled_from(ZONES), st.lists(st.floats(0, 1, exclude_max=True), max_size=6))
@settings(max_examples=300)
def test_next_change_flips_exactly_there_and_nowhere_before(
    windows: tuple[Window, ...], at: datetime, tz: tzinfo, fractions: list[float]
) -> None:
    now = in_window(windows, at, tz)
    nc = next_change(windows, at, tz)
    if nc is None:
        for hours in range(0, 8 * 24, 5):
            assert in_window(windows, at + timedelta(hours=hours, minutes=17), tz) == now
        return
    assert at < nc <= at + timedelta(days=15)
    assert in_window(windows, nc, tz) != now
    assert in_window(windows, max(at, nc - timedelta(seconds=1)), tz) == now
    assert in_window(windows, max(at, nc - timedelta(microseconds=1)), tz) == now
    for f in fractions:
        # (timedelta * float rounds to microseconds; keep the sample before nc)
        assert in_window(windows, min(at + (nc - at) * f, nc - timedelta(microseconds=1)), tz) == now


@given(windows_st, instants, st.sampled_from([BERLIN, NEW_YORK]))
def test_changes_land_on_window_edges_in_local_wall_time(windows: tuple[Window, ...], at: datetime, tz: tzinfo) -> None:
    nc = next_change(windows, at, tz)
    assume(nc is not None)
    assert nc is not None
    wall = nc.astimezone(tz)
    edges = {w.start_min for w in windows} | {w.end_min % 1440 for w in windows}
    minute = wall.hour * 60 + wall.minute
    # An edge shows its own wall time, except one falling into a spring-forward gap: it shows the jump (03:00 / 03:00).
    assert wall.second == 0
    assert minute in edges or (wall.hour == 3 and wall.minute == 0 and any(120 <= e < 180 for e in edges))


# --- the gate -----------------------------------------------------------------------------------------------------


def b(day: int, h: int, mi: int = 0, s: int = 0) -> datetime:
    """Berlin local time in the week of Monday 5 January 2026 (day 0 = Monday)."""
    return datetime(2026, 1, 5 + day, h, mi, s, tzinfo=BERLIN)


def gate_and_arbiter() -> tuple[OffPeakGate, Arbiter]:
    arbiter = Arbiter()
    arbiter.submit("config", 32.0, 0.0, reason="charger.max_current_a")
    return OffPeakGate.from_config(["Mon-Fri 22:00-06:00"], "Europe/Berlin"), arbiter


def test_outside_the_window_holds_at_zero_with_the_reason() -> None:
    gate, arbiter = gate_and_arbiter()
    assert gate.update(b(0, 12), 1.0, arbiter) is True
    claim = arbiter.get("offpeak")
    assert claim is not None and claim.current_a == 0.0
    assert claim.reason == "outside off-peak window (next opens Mon 22:00 Europe/Berlin)"
    decision = arbiter.decide(1.0)
    assert decision.current_a == 0.0 and decision.winner is not None and decision.winner.source == "offpeak"
    assert gate.update(b(0, 22), 2.0, arbiter) is False
    assert arbiter.get("offpeak") is None
    assert arbiter.decide(2.0).current_a == 32.0
    gate.update(b(1, 6), 3.0, arbiter)
    claim = arbiter.get("offpeak")
    assert claim is not None and claim.reason == "outside off-peak window (next opens Tue 22:00 Europe/Berlin)"


def test_a_repeated_hold_keeps_its_age() -> None:
    gate, arbiter = gate_and_arbiter()
    gate.update(b(0, 12), 10.0, arbiter)
    gate.update(b(0, 13), 3610.0, arbiter)
    claim = arbiter.get("offpeak")
    assert claim is not None and claim.submitted_at == 10.0


def test_feature_off_never_claims() -> None:
    gate = OffPeakGate.from_config([], "")
    arbiter = Arbiter()
    for h in range(24):
        assert gate.update(b(0, h), float(h), arbiter) is False
        assert arbiter.get("offpeak") is None
    assert gate.next_wakeup(b(0, 12)) is None
    assert gate.describe(b(0, 12))["enabled"] is False
    with pytest.raises(ValueError, match="no off-peak windows are configured"):
        gate.boost(b(0, 14), b(0, 12))


def test_boost_lifts_the_hold_and_expires_at_its_end() -> None:
    gate, arbiter = gate_and_arbiter()
    gate.update(b(0, 15), 1.0, arbiter)
    assert arbiter.get("offpeak") is not None
    gate.boost(b(0, 17, 30), b(0, 15))
    assert gate.update(b(0, 15), 2.0, arbiter) is False
    assert arbiter.get("offpeak") is None
    assert arbiter.decide(2.0).current_a == 32.0
    assert gate.describe(b(0, 16))["reason"] == "boost until 17:30"
    assert gate.describe(b(0, 16))["boost_until"] == "2026-01-05T17:30:00+01:00"
    gate.update(b(0, 17, 29, 59), 3.0, arbiter)
    assert arbiter.get("offpeak") is None
    gate.update(b(0, 17, 30), 4.0, arbiter)
    claim = arbiter.get("offpeak")
    assert claim is not None and claim.current_a == 0.0
    assert gate.boost_until(b(0, 17, 30)) is None
    assert gate.describe(b(0, 18))["boost_until"] is None


def test_cancel_boost_puts_the_hold_back() -> None:
    gate, arbiter = gate_and_arbiter()
    gate.boost(b(0, 20), b(0, 15))
    gate.update(b(0, 15), 1.0, arbiter)
    assert arbiter.get("offpeak") is None
    gate.cancel_boost()
    gate.update(b(0, 15, 1), 2.0, arbiter)
    claim = arbiter.get("offpeak")
    assert claim is not None and claim.current_a == 0.0
    gate.cancel_boost()  # nothing running: harmless
    assert gate.boost_until(b(0, 15, 2)) is None


def test_boost_without_end_lasts_until_the_window_opens_and_not_beyond() -> None:
    gate, arbiter = gate_and_arbiter()
    gate.boost(None, b(0, 12))
    assert gate.boost_until(b(0, 12)) == b(0, 22)
    assert gate.describe(b(0, 12))["reason"] == "boost until 22:00"
    gate.update(b(0, 21, 59, 59), 1.0, arbiter)
    assert arbiter.get("offpeak") is None
    gate.update(b(0, 22), 2.0, arbiter)  # window open: no hold either way
    assert arbiter.get("offpeak") is None
    assert gate.boost_until(b(0, 22)) is None
    gate.update(b(1, 6), 3.0, arbiter)  # window closed next morning: held again
    claim = arbiter.get("offpeak")
    assert claim is not None and claim.current_a == 0.0


def test_boost_across_days_shows_the_day_and_outlasts_the_window() -> None:
    gate, arbiter = gate_and_arbiter()
    gate.boost(b(5, 10), b(4, 12))  # Friday noon until Saturday 10:00
    assert gate.describe(b(4, 12))["reason"] == "boost until Sat 10:00"
    gate.update(b(5, 8), 1.0, arbiter)  # Saturday morning, after the window: still boosted
    assert arbiter.get("offpeak") is None
    gate.update(b(5, 10), 2.0, arbiter)
    claim = arbiter.get("offpeak")
    assert claim is not None and claim.reason == "outside off-peak window (next opens Mon 22:00 Europe/Berlin)"


def test_boost_refuses_what_cannot_be_honoured() -> None:
    gate, _ = gate_and_arbiter()
    with pytest.raises(ValueError, match=r"already inside an off-peak window \(until Tue 06:00 Europe/Berlin\)"):
        gate.boost(None, b(0, 23))
    with pytest.raises(ValueError, match="not in the future"):
        gate.boost(b(0, 12), b(0, 12))
    with pytest.raises(ValueError, match="timezone-aware"):
        gate.boost(datetime(2026, 1, 5, 14), b(0, 12))
    with pytest.raises(ValueError, match="timezone-aware"):
        gate.boost(None, datetime(2026, 1, 5, 12))
    assert gate.boost_until(b(0, 12)) is None
    gate.boost(b(1, 8), b(0, 23))  # an explicit end inside a window is fine: it covers the morning after
    assert gate.boost_until(b(0, 23)) == b(1, 8)


def test_next_wakeup_is_the_next_edge_or_the_boost_end() -> None:
    gate, _ = gate_and_arbiter()
    assert gate.next_wakeup(b(0, 12)) == b(0, 22)
    assert gate.next_wakeup(b(0, 23)) == b(1, 6)
    gate.boost(b(0, 17, 30), b(0, 12))
    assert gate.next_wakeup(b(0, 12)) == b(0, 17, 30)
    gate.boost(b(1, 8), b(0, 12))
    assert gate.next_wakeup(b(0, 12)) == b(0, 22)
    assert gate.next_wakeup(b(1, 6)) == b(1, 8)


def test_describe() -> None:
    gate, _ = gate_and_arbiter()
    assert gate.describe(b(0, 12)) == {
        "enabled": True,
        "timezone": "Europe/Berlin",
        "windows": ["Mon-Fri 22:00-06:00"],
        "in_window": False,
        "holding": True,
        "boost_until": None,
        "next_change": "2026-01-05T22:00:00+01:00",
        "reason": "outside off-peak window (next opens Mon 22:00 Europe/Berlin)",
    }
    inside = gate.describe(b(0, 23))
    assert inside["in_window"] is True and inside["holding"] is False
    assert inside["next_change"] == "2026-01-06T06:00:00+01:00"
    assert inside["reason"] == "inside off-peak window (closes Tue 06:00 Europe/Berlin)"


# --- the runner ---------------------------------------------------------------------------------------------------


class LiveClock:
    """Wall time that runs with the event loop's clock, from a chosen start."""

    def __init__(self, wall: datetime) -> None:
        self._t0 = systime.monotonic()
        self._wall0 = wall

    def monotonic(self) -> float:
        return systime.monotonic()

    def now(self) -> datetime:
        return self._wall0 + timedelta(seconds=systime.monotonic() - self._t0)


async def eventually(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def test_run_wakes_at_the_change_without_polling() -> None:
    gate, arbiter = gate_and_arbiter()
    clock = LiveClock(b(0, 22) - timedelta(seconds=0.3))
    task = asyncio.create_task(gate.run(clock, arbiter, asyncio.Event(), max_sleep_s=30.0))
    try:
        await eventually(lambda: arbiter.get("offpeak") is not None, 0.25)
        await eventually(lambda: arbiter.get("offpeak") is None, 2.0)
        assert clock.now() >= b(0, 22)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_applies_a_boost_when_woken() -> None:
    gate, arbiter = gate_and_arbiter()
    clock = FakeClock(b(0, 12).astimezone(UTC))
    wake = asyncio.Event()
    task = asyncio.create_task(gate.run(clock, arbiter, wake, max_sleep_s=30.0))
    try:
        await eventually(lambda: arbiter.get("offpeak") is not None)
        gate.boost(None, clock.now())
        wake.set()
        await eventually(lambda: arbiter.get("offpeak") is None, 1.0)
        gate.cancel_boost()
        wake.set()
        await eventually(lambda: arbiter.get("offpeak") is not None, 1.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_catches_a_wall_clock_jump_within_its_bounded_sleep() -> None:
    gate, arbiter = gate_and_arbiter()
    clock = FakeClock(b(0, 12).astimezone(UTC))
    task = asyncio.create_task(gate.run(clock, arbiter, asyncio.Event(), max_sleep_s=0.05))
    try:
        await eventually(lambda: arbiter.get("offpeak") is not None)
        clock.jump(11 * 3600)  # NTP step to 23:00, inside the window; nobody wakes the runner
        await eventually(lambda: arbiter.get("offpeak") is None, 1.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_with_the_feature_off_claims_nothing_and_stops_on_cancel() -> None:
    gate = OffPeakGate((), BERLIN)
    arbiter = Arbiter()
    arbiter.submit("offpeak", 0.0, 0.0, reason="left over")
    task = asyncio.create_task(gate.run(FakeClock(), arbiter, asyncio.Event(), max_sleep_s=0.01))
    await eventually(lambda: arbiter.get("offpeak") is None)
    await asyncio.sleep(0.05)
    assert arbiter.get("offpeak") is None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
