"""Off-peak charging windows: hold the connector (a 0 A "offpeak" claim) outside cheap-tariff hours.

Installers write windows in config.toml as strings (``[offpeak] windows``)::

    ["Mon-Fri 22:00-06:00", "Sat,Sun 00:00-24:00", "daily 01:00-05:30"]

* Days: ``daily``, a day (``Mon`` .. ``Sun`` or the full English name, any case), a range ``Mon-Fri`` (ranges
  wrap: ``Fri-Mon`` is Fri, Sat, Sun, Mon), or a comma list of those (``Mon-Wed,Fri``; spaces allowed).
* Times: ``HH:MM-HH:MM`` (hour 0..23, minute 00..59); ``24:00`` is allowed only as an end. A window whose end
  is <= its start crosses midnight and belongs to the day it starts on (``Fri 22:00-06:00`` runs into Saturday
  morning); so ``22:00-22:00`` and ``00:00-00:00`` last 24 hours.
* Windows may overlap or touch; they are merged, so "in a window" flips only at the union's edges.

Time zone and DST (a deliberate choice, like ``schedule.py``): a window is local wall-clock time in the configured
IANA zone on each day, so ``22:00-06:00`` stays 22:00-06:00 local across DST changes (the night is 7 or 9 hours
long on the change nights). Each occurrence is one contiguous interval of real time from the first instant the
wall clock reaches its start to the first instant it reaches its end. Hence:

* A start or end inside the spring-forward gap (02:30 on the day Berlin jumps 02:00 -> 03:00) takes effect at the
  jump, 03:00 local (not 03:30); a window lying entirely inside the gap does not happen that day.
* A start or end inside the fall-back overlap (02:30 when Berlin repeats 02:00-03:00) takes effect at the *first*
  02:30 (summer time); the window does not close or reopen when the wall clock passes 02:30 again.

The functions are pure: time is passed in, every datetime must be timezone-aware, and returned instants are in UTC
(arithmetic on two datetimes sharing a ZoneInfo ignores ``fold`` and goes wrong across DST, so none is returned).
:class:`OffPeakGate` turns the answer into the arbiter claim and adds the user's boost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from firmware.aio import wait_event
from firmware.limits.arbiter import Arbiter
from hal.clock import Clock

log = logging.getLogger("firmware.limits")

SOURCE = "offpeak"
DAY_NAMES: tuple[str, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_LOOKUP: dict[str, int] = {n.lower(): i for i, n in enumerate(DAY_NAMES)} | {
    n: i for i, n in enumerate(_FULL_NAMES)
}
_DAY_MIN = 24 * 60
#: How far ahead next_change looks. The pattern repeats weekly, so a change is always found within 7 days plus a DST
#: hour; the second week covers a window that a spring-forward gap swallowed this week.
LOOKAHEAD_DAYS = 15
#: The runner never sleeps longer than this, so a wall-clock step (NTP, RTC fix) is noticed within a minute.
MAX_SLEEP_S = 60.0

_TIME = r"(\d{1,2}):(\d{2})"
_WINDOW_RE = re.compile(rf"(?P<days>.*?)\s*(?P<start>{_TIME})\s*-\s*(?P<end>{_TIME})", re.ASCII)
_EXAMPLE = "expected '<days> HH:MM-HH:MM', e.g. 'Mon-Fri 22:00-06:00' or 'daily 01:00-05:30'"


@dataclass(frozen=True, slots=True)
class Window:
    """One configured window: the days it *starts* on (0 = Monday) and its wall-clock start/end in minutes."""

    days: frozenset[int]
    #: Minutes after local midnight, 0..1439.
    start_min: int
    #: Minutes after local midnight, 0..1440; <= start_min means it ends the next day.
    end_min: int

    def __post_init__(self) -> None:
        if not self.days or not all(isinstance(d, int) and 0 <= d <= 6 for d in self.days):
            raise ValueError(f"window days must be a non-empty set of 0..6 (Mon..Sun), got {sorted(self.days)!r}")
        if not 0 <= self.start_min < _DAY_MIN:
            raise ValueError(f"window start {self.start_min} min is not a time of day (0..1439)")
        if not 0 <= self.end_min <= _DAY_MIN:
            raise ValueError(f"window end {self.end_min} min is not a time of day (0..1440)")

    @property
    def crosses_midnight(self) -> bool:
        return self.end_min <= self.start_min

    def __str__(self) -> str:
        return format_window(self)


# --- parsing ------------------------------------------------------------------------------------------------------


def _day(name: str) -> int:
    key = name.strip().lower()
    if key not in _DAY_LOOKUP:
        shown = name.strip()
        what = f"unknown day {shown!r}" if shown else "a day is missing"
        raise ValueError(f"{what} (use {', '.join(DAY_NAMES)}, a range like Mon-Fri, a list like Sat,Sun, or daily)")
    return _DAY_LOOKUP[key]


def _parse_days(text: str) -> frozenset[int]:
    if text.strip().lower() == "daily":
        return frozenset(range(7))
    days: set[int] = set()
    for item in text.split(","):
        if item.strip().lower() == "daily":
            raise ValueError("'daily' cannot be combined with other days")
        parts = item.split("-")
        if len(parts) == 1:
            days.add(_day(parts[0]))
        elif len(parts) == 2:
            first, last = _day(parts[0]), _day(parts[1])
            days.update((first + i) % 7 for i in range((last - first) % 7 + 1))
        else:
            raise ValueError(f"day range {item.strip()!r} has more than one '-'")
    return frozenset(days)


def _parse_time(text: str, *, is_end: bool) -> int:
    hh, mm = (int(p) for p in text.split(":"))
    what = "end" if is_end else "start"
    if mm > 59 or hh > 24 or (hh == 24 and mm != 0):
        raise ValueError(f"{what} time {text!r} is not a time of day (00:00..23:59, or 24:00 as an end)")
    if hh == 24 and not is_end:
        raise ValueError("24:00 can only end a window; start at 00:00 instead")
    return hh * 60 + mm


def parse_window(text: str) -> Window:
    """One window from its config text; ``ValueError`` says what is wrong (the caller adds the config key)."""
    if not isinstance(text, str):
        raise ValueError(f"a window must be a string, got {type(text).__name__} {text!r}; {_EXAMPLE}")
    m = _WINDOW_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r}: {_EXAMPLE}")
    days_text = m.group("days")
    if not days_text:
        raise ValueError(f"{text!r}: the days are missing; {_EXAMPLE}")
    if m.end("days") == m.start("start"):
        raise ValueError(f"{text!r}: put a space between the days and the times; {_EXAMPLE}")
    try:
        days = _parse_days(days_text)
        start = _parse_time(m.group("start"), is_end=False)
        end = _parse_time(m.group("end"), is_end=True)
    except ValueError as e:
        raise ValueError(f"{text!r}: {e}") from None
    return Window(days, start, end)


def parse_windows(texts: object) -> tuple[Window, ...]:
    """The config list (``[]`` = off-peak off); errors name the entry so the installer finds it."""
    if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
        raise ValueError(f"expected a list of window strings, got {type(texts).__name__}; {_EXAMPLE}")
    out = []
    for i, text in enumerate(texts):
        try:
            out.append(parse_window(text))
        except ValueError as e:
            raise ValueError(f"entry {i + 1}: {e}") from None
    return tuple(out)


def _format_days(days: frozenset[int]) -> str:
    if len(days) == 7:
        return "daily"
    runs: list[tuple[int, int]] = []  # (first day, length), wrapping past Sunday
    for d in sorted(days):
        if (d - 1) % 7 not in days:
            length = 1
            while (d + length) % 7 in days:
                length += 1
            runs.append((d, length))
    parts = []
    for first, length in runs:
        names = [DAY_NAMES[(first + i) % 7] for i in range(length)]
        parts.append(f"{names[0]}-{names[-1]}" if length >= 3 else ",".join(names))
    return ",".join(parts)


def format_window(w: Window) -> str:
    """The canonical text of a window; ``parse_window(format_window(w)) == w``."""

    def hm(minutes: int) -> str:
        return f"{minutes // 60:02d}:{minutes % 60:02d}"

    return f"{_format_days(w.days)} {hm(w.start_min)}-{hm(w.end_min)}"


# --- time zones ---------------------------------------------------------------------------------------------------


def load_zone(name: str) -> tzinfo:
    """The configured IANA zone; ``""`` is the system's local zone (with its DST rules, not today's offset)."""
    if not isinstance(name, str):
        raise ValueError(f"time zone must be a string, got {type(name).__name__}")
    name = name.strip()
    if not name:
        return system_zone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, UnicodeError) as e:
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name like 'Europe/Berlin', or '' for the system zone)"
        ) from e


def system_zone(environ: Mapping[str, str] | None = None, localtime: str = "/etc/localtime") -> tzinfo:
    """The local zone as a ZoneInfo: ``$TZ``, else the /etc/localtime link's name, else its contents, else UTC."""
    env = os.environ if environ is None else environ
    candidates = [env.get("TZ", "").lstrip(":")]
    try:
        target = os.path.realpath(localtime)
        if "/zoneinfo/" in target and os.path.isfile(target):
            candidates.append(target.split("/zoneinfo/", 1)[1])
    except OSError:
        pass
    for key in candidates:
        if key:
            try:
                return ZoneInfo(key)
            except (ZoneInfoNotFoundError, ValueError, OSError, UnicodeError):
                log.debug("time zone %r not usable", key)
    try:
        with open(localtime, "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        pass
    log.warning("no system time zone found (TZ, %s); off-peak windows use UTC", localtime)
    return UTC


def zone_name(tz: tzinfo) -> str:
    """A zone's name for people: the IANA key where there is one."""
    key = getattr(tz, "key", None)
    return key if isinstance(key, str) and key else str(tz)


# --- evaluation ---------------------------------------------------------------------------------------------------


def _check_aware(name: str, v: object) -> datetime:
    if not isinstance(v, datetime) or v.tzinfo is None or v.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {v!r}")
    return v


def _wall(t: datetime, tz: tzinfo) -> datetime:
    return t.astimezone(tz).replace(tzinfo=None)


def resolve_wall(wall: datetime, tz: tzinfo) -> datetime:
    """The first instant (UTC) at which the wall clock in ``tz`` reads ``wall`` or later.

    Existing times map to themselves, the first of two in a fall-back overlap (fold=0); a time in a spring-forward
    gap maps to the jump itself. This is monotonic in ``wall``, so touching windows stay touching across DST.
    """
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if _wall(first, tz) == wall:
        return first
    # In a gap fold=0 applies the offset from before the jump and lands after it; the jump lies less than one
    # gap-length earlier. Transitions are on whole seconds: bisect for the first instant showing >= wall.
    before, after = wall.replace(tzinfo=tz, fold=0).utcoffset(), wall.replace(tzinfo=tz, fold=1).utcoffset()
    if before is None or after is None or after <= before:  # not a gap after all (exotic tzinfo): keep fold=0
        return first
    lo, hi = first - (after - before), first
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if mid <= lo:
            mid = lo + timedelta(seconds=1)
        if _wall(mid, tz) >= wall:
            hi = mid
        else:
            lo = mid
    return hi


def window_occurrences(w: Window, tz: tzinfo, first: date, days: int) -> list[tuple[datetime, datetime]]:
    """The window's occurrences starting on local days ``first`` .. ``first + days - 1``, as UTC [open, close).

    Shared with the tariff's time-of-use bands (firmware.payment.tariff), which follow the same DST rules.
    """
    out = []
    for k in range(days):
        day = first + timedelta(days=k)
        if day.weekday() not in w.days:
            continue
        midnight = datetime.combine(day, time())
        end = w.end_min + (_DAY_MIN if w.crosses_midnight else 0)
        a = resolve_wall(midnight + timedelta(minutes=w.start_min), tz)
        b = resolve_wall(midnight + timedelta(minutes=end), tz)
        if a < b:  # empty only when the whole window falls into a spring-forward gap
            out.append((a, b))
    return out


def _occurrences(windows: Iterable[Window], tz: tzinfo, first: date, days: int) -> list[tuple[datetime, datetime]]:
    """Every window occurrence starting on local days ``first`` .. ``first + days - 1``, as UTC [open, close)."""
    return [span for w in windows for span in window_occurrences(w, tz, first, days)]


def _merged(windows: Sequence[Window], at: datetime, tz: tzinfo, ahead_days: int) -> list[tuple[datetime, datetime]]:
    """The union of occurrences near ``at`` as disjoint, non-touching UTC intervals, in order."""
    # Two days back covers a window started yesterday; one day is added for zones that fall back across midnight.
    first = _wall(at, tz).date() - timedelta(days=2)
    merged: list[tuple[datetime, datetime]] = []
    for a, b in sorted(_occurrences(windows, tz, first, ahead_days + 3)):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def in_window(windows: Sequence[Window], at: datetime, tz: tzinfo) -> bool:
    """Whether ``at`` lies inside any window (local wall time in ``tz``; see the module notes on DST)."""
    t = _check_aware("at", at).astimezone(UTC)
    return any(a <= t < b for a, b in _merged(windows, t, tz, 1))


def next_change(windows: Sequence[Window], at: datetime, tz: tzinfo) -> datetime | None:
    """The first instant (UTC) after ``at`` where :func:`in_window` flips; None if it never does.

    None means no windows, windows that cover all time, or (never in practice) no change within
    ``LOOKAHEAD_DAYS``. At the returned instant the new answer already holds: windows are half-open.
    """
    t = _check_aware("at", at).astimezone(UTC)
    if not windows:
        return None
    merged = _merged(windows, t, tz, LOOKAHEAD_DAYS)
    # Occurrences starting on later days open no earlier than this, so edges before it are exact.
    horizon = resolve_wall(datetime.combine(_wall(t, tz).date() + timedelta(days=LOOKAHEAD_DAYS + 1), time()), tz)
    for a, b in merged:
        for edge in (a, b):
            if edge > t:
                return edge if edge < horizon else None
    return None


# --- the gate -----------------------------------------------------------------------------------------------------


def _at_local(t: datetime, tz: tzinfo, *, weekday: bool = True) -> str:
    local = t.astimezone(tz)
    hm = f"{local.hour:02d}:{local.minute:02d}"
    return f"{DAY_NAMES[local.weekday()]} {hm}" if weekday else hm


class OffPeakGate:
    """Holds the connector (a 0 A ``offpeak`` claim) outside the windows unless the user asked for a boost.

    Time is passed in. No windows = the feature is off and no claim is ever made. Other claims (OCPP, fuse, manual)
    still cap while charging is allowed, because the lowest claim wins.
    """

    def __init__(self, windows: Sequence[Window], tz: tzinfo) -> None:
        self.windows: tuple[Window, ...] = tuple(windows)
        self.tz = tz
        self._boost_until: datetime | None = None

    @classmethod
    def from_config(cls, windows: object, tz_name: str) -> OffPeakGate:
        """Built from ``[offpeak] windows`` and ``timezone``; ValueError on a bad entry or zone."""
        return cls(parse_windows(windows), load_zone(tz_name))

    @property
    def enabled(self) -> bool:
        return bool(self.windows)

    # ---- boost ----------------------------------------------------------------------------------------------
    def boost(self, until: datetime | None, now: datetime) -> None:
        """Lift the hold until ``until``, or (None) until the next window opens; replaces a running boost.

        ValueError when off-peak is off, ``until`` is not after ``now``, or ``until`` is None inside a window
        (there is no hold to lift, and "until the window opens" would mean the whole next peak period).
        """
        now = _check_aware("now", now).astimezone(UTC)
        if not self.enabled:
            raise ValueError("no off-peak windows are configured: there is nothing to boost")
        if until is None:
            if in_window(self.windows, now, self.tz):
                closes = next_change(self.windows, now, self.tz)
                shown = "" if closes is None else f" (until {_at_local(closes, self.tz)} {zone_name(self.tz)})"
                raise ValueError(f"already inside an off-peak window{shown}: charging is not held")
            opens = next_change(self.windows, now, self.tz)
            if opens is None:  # outside and nothing ever opens: only possible with windows lost in DST gaps
                raise ValueError("no off-peak window opens in the next two weeks; give the boost an end time")
            until = opens
        until = _check_aware("until", until).astimezone(UTC)
        if until <= now:
            raise ValueError(f"boost end {until.isoformat()} is not in the future")
        self._boost_until = until
        log.info("off-peak boost until %s", until.astimezone(self.tz).isoformat(timespec="minutes"))

    def cancel_boost(self) -> None:
        """End a boost now (the next update puts the hold back if outside a window)."""
        if self._boost_until is not None:
            log.info("off-peak boost cancelled")
        self._boost_until = None

    def boost_until(self, now: datetime) -> datetime | None:
        """The running boost's end (UTC), or None when there is none or it has run out."""
        b = self._boost_until
        return b if b is not None and _check_aware("now", now) < b else None

    # ---- state ----------------------------------------------------------------------------------------------
    def holding(self, now: datetime) -> bool:
        """Whether the connector must be held (0 A) at ``now``."""
        if not self.enabled or self.boost_until(now) is not None:
            return False
        return not in_window(self.windows, now, self.tz)

    def reason(self, now: datetime) -> str:
        """Why the gate is as it is, in words for ``evse limits`` and the claim."""
        if not self.enabled:
            return "off-peak charging not configured"
        zone = zone_name(self.tz)
        boost = self.boost_until(now)
        if boost is not None:
            same_day = boost.astimezone(self.tz).date() == now.astimezone(self.tz).date()
            return f"boost until {_at_local(boost, self.tz, weekday=not same_day)}"
        change = next_change(self.windows, now, self.tz)
        if in_window(self.windows, now, self.tz):
            return "inside off-peak window" + (
                "" if change is None else f" (closes {_at_local(change, self.tz)} {zone})"
            )
        if change is None:
            return "outside off-peak window (no window opens within two weeks)"
        return f"outside off-peak window (next opens {_at_local(change, self.tz)} {zone})"

    def update(self, now_wall: datetime, now_mono: float, arbiter: Arbiter) -> bool:
        """Submit the 0 A hold or withdraw it; returns whether holding. Drops a boost that has run out."""
        if self._boost_until is not None and self.boost_until(now_wall) is None:
            log.info("off-peak boost ended")
            self._boost_until = None
        hold = self.holding(now_wall)
        if hold:
            arbiter.submit(SOURCE, 0.0, now_mono, reason=self.reason(now_wall))
        else:
            arbiter.withdraw(SOURCE)
        return hold

    def next_wakeup(self, now_wall: datetime) -> datetime | None:
        """When the claim may next change (a window edge or the boost's end, UTC); None = never by itself."""
        if not self.enabled:
            return None
        edges = [e for e in (next_change(self.windows, now_wall, self.tz), self.boost_until(now_wall)) if e is not None]
        return min(edges) if edges else None

    def describe(self, now_wall: datetime) -> dict[str, object]:
        """The status view; instants are ISO 8601 in the configured zone (with their UTC offset)."""

        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.astimezone(self.tz).isoformat(timespec="seconds")

        inside = self.enabled and in_window(self.windows, now_wall, self.tz)
        return {
            "enabled": self.enabled,
            "timezone": zone_name(self.tz),
            "windows": [format_window(w) for w in self.windows],
            "in_window": inside,
            "holding": self.holding(now_wall),
            "boost_until": iso(self.boost_until(now_wall)),
            "next_change": iso(next_change(self.windows, now_wall, self.tz)),
            "reason": self.reason(now_wall),
        }

    async def run(
        self, clock: Clock, arbiter: Arbiter, wake_event: asyncio.Event, *, max_sleep_s: float = MAX_SLEEP_S
    ) -> None:
        """Keep the claim right: update at each change and whenever ``wake_event`` is set (a boost was asked for).

        Sleeps until the next change but never longer than ``max_sleep_s``, so a wall-clock step is caught.
        """
        while True:
            wake_event.clear()  # before updating: a boost asked for during the update is not lost
            now = clock.now()
            self.update(now, clock.monotonic(), arbiter)
            nxt = self.next_wakeup(now)
            delay = max_sleep_s if nxt is None else min(max_sleep_s, (nxt - now).total_seconds())
            await wait_event(wake_event, max(delay, 0.0))
