"""The analogue front end: CP peak detectors and the PP divider on one ADS1115.

Board (deploy/hardware.md): the pilot's positive peak detector on one channel, its negative
peak detector on another, the PP divider on a third. Each pilot channel is level-shifted and
divided into the ADC's 0..3.3 V range; :class:`Calibration` maps the ADC volts back to pilot
volts. The classification into state letters (with hysteresis) is the firmware's job
(firmware/charging/pilot.py); this module debounces: a level is published only once
``debounce`` consecutive samples agree within ``agree_v``, or, if the signal keeps moving, the
median of the window after ``max_unsettled`` rounds, so a change is never held back more than
about 50 ms (standards digest §1.1).
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from hal.interfaces import DeviceError, Listener, PilotLevels
from hal.rpi._notify import Notifier
from hal.rpi.ads1115 import Ads1115

_log = logging.getLogger(__name__)

#: PP resistances above this count as open (no plug): ``math.inf``, as the interface asks.
PP_OPEN_OHM: Final = 100_000.0


@dataclass(frozen=True, slots=True)
class Calibration:
    """``pilot_v = gain * adc_v + offset`` for one channel (determined per board at end of line)."""

    gain: float
    offset: float

    def apply(self, adc_v: float) -> float:
        return self.gain * adc_v + self.offset

    def inverse(self, pilot_v: float) -> float:
        return (pilot_v - self.offset) / self.gain

    @classmethod
    def from_points(cls, adc_a: float, pilot_a: float, adc_b: float, pilot_b: float) -> Calibration:
        """Two-point calibration, e.g. the ADC volts read with the CP at +12 V and at -12 V."""
        if adc_a == adc_b:
            raise ValueError("calibration points need two different ADC readings")
        gain = (pilot_b - pilot_a) / (adc_b - adc_a)
        return cls(gain=gain, offset=pilot_a - gain * adc_a)


#: Reference board: adc_v = 1.65 V + pilot_v / 8 (±12 V -> 0.15..3.15 V), so pilot_v = 8 * adc_v - 13.2.
DEFAULT_CP_CALIBRATION: Final = Calibration(gain=8.0, offset=-13.2)


@dataclass(frozen=True, slots=True)
class PpDivider:
    """PP to PE through the cable's coding resistor, pulled up to ``supply_v`` through ``pullup_ohm``."""

    pullup_ohm: float = 1000.0
    supply_v: float = 3.3

    def ohms(self, adc_v: float) -> float:
        """PP-PE resistance for the voltage at the divider; ``inf`` when open, 0.0 when shorted."""
        if math.isnan(adc_v):
            raise ValueError("PP voltage is NaN")
        if adc_v <= 0.0:
            return 0.0
        if adc_v >= self.supply_v:
            return math.inf
        r = self.pullup_ohm * adc_v / (self.supply_v - adc_v)
        return math.inf if r > PP_OPEN_OHM else r

    def volts(self, ohms: float) -> float:
        """The divider voltage for a PP resistance (``inf`` = open)."""
        if math.isinf(ohms):
            return self.supply_v
        return self.supply_v * ohms / (ohms + self.pullup_ohm)


@dataclass(frozen=True, slots=True)
class Channels:
    """Which ADS1115 input carries what (reference board: AIN0 CP+, AIN1 CP-, AIN2 PP)."""

    cp_high: int = 0
    cp_low: int = 1
    pp: int = 2


class _Debounced:
    """Publishes a value once ``size`` samples agree within ``agree``, or the median if it never settles."""

    def __init__(self, size: int, agree: float, max_unsettled: int) -> None:
        self.size = size
        self._window: deque[float] = deque(maxlen=size)
        self._agree = agree
        self._max_unsettled = max_unsettled
        self._unsettled = 0
        self.value: float | None = None

    def add(self, sample: float) -> None:
        self._window.append(sample)
        if len(self._window) < self.size:
            return
        if max(self._window) - min(self._window) <= self._agree:
            self.value = statistics.fmean(self._window)
            self._unsettled = 0
            return
        self._unsettled += 1
        if self._unsettled >= self._max_unsettled:
            self.value = statistics.median(self._window)
            self._unsettled = 0


class AnalogFrontEnd:
    """Samples CP+, CP- and PP on its own thread; the control loop reads the latest filtered values.

    ``poll()`` takes one round of three conversions (about 5 ms at 860 SPS); ``start()`` primes the
    filters synchronously and then polls every ``interval_s`` on a daemon thread.
    """

    def __init__(
        self,
        adc: Ads1115,
        *,
        channels: Channels | None = None,
        cp_high_cal: Calibration = DEFAULT_CP_CALIBRATION,
        cp_low_cal: Calibration = DEFAULT_CP_CALIBRATION,
        pp_divider: PpDivider | None = None,
        debounce: int = 3,
        agree_v: float = 0.5,
        pp_agree_v: float = 0.05,
        max_unsettled: int = 3,
        interval_s: float = 0.01,
        stale_after_s: float = 0.25,
        max_failures: int = 3,
        notify_delta_v: float = 0.2,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if debounce < 1:
            raise ValueError("debounce needs at least one sample")
        self.adc = adc
        self.channels = channels or Channels()
        self.cp_high_cal = cp_high_cal
        self.cp_low_cal = cp_low_cal
        self.pp_divider = pp_divider or PpDivider()
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s
        self.max_failures = max_failures
        self.notify_delta_v = notify_delta_v
        self._monotonic = monotonic
        self._high = _Debounced(debounce, agree_v, max_unsettled)
        self._low = _Debounced(debounce, agree_v, max_unsettled)
        self._pp = _Debounced(debounce, pp_agree_v, max_unsettled)
        self._levels: PilotLevels | None = None
        self._pp_v: float | None = None
        self._notified: PilotLevels | None = None
        self._last_ok: float | None = None
        self._failures = 0
        self._error: str | None = None
        self._notifier = Notifier()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- sampling ----------------------------------------------------------------------------
    def poll(self) -> None:
        """One round: CP+, CP-, PP. An I2C failure counts; ``max_failures`` in a row is an error."""
        ch = self.channels
        try:
            high = self.cp_high_cal.apply(self.adc.read_volts(ch.cp_high))
            low = self.cp_low_cal.apply(self.adc.read_volts(ch.cp_low))
            pp = self.adc.read_volts(ch.pp)
        except DeviceError as exc:
            self._failures += 1
            _log.warning("pilot ADC read failed (%d in a row): %s", self._failures, exc)
            if self._failures >= self.max_failures and self._error is None:
                self._error = str(exc)
                self._notifier.fire()
            return
        self._failures = 0
        self._error = None
        self._last_ok = self._monotonic()
        self._high.add(high)
        self._low.add(low)
        self._pp.add(pp)
        if self._pp.value is not None:
            self._pp_v = self._pp.value
        if self._high.value is not None and self._low.value is not None:
            levels = PilotLevels(high_v=self._high.value, low_v=self._low.value)
            self._levels = levels
            last = self._notified
            if (
                last is None
                or abs(levels.high_v - last.high_v) > self.notify_delta_v
                or abs(levels.low_v - last.low_v) > self.notify_delta_v
            ):
                self._notified = levels
                self._notifier.fire()

    def start(self) -> None:
        """Fill the debounce windows (blocking, a few rounds) and start the sampling thread."""
        if self._thread is not None:
            return
        for _ in range(self._high.size):
            self.poll()
        self._check()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pilot-adc", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # never let the sampler die silently: read() reports it as stale
                _log.exception("pilot sampler failed")
                self._error = "sampler thread failed"
                self._notifier.fire()
                return

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=1.0)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # ---- reading (never blocks) --------------------------------------------------------------
    def _check(self) -> None:
        if self._error is not None:
            raise DeviceError("pilot", f"pilot ADC failing: {self._error}")
        if self._last_ok is None or self._levels is None or self._pp_v is None:
            raise DeviceError("pilot", "pilot ADC has no settled sample yet")
        age = self._monotonic() - self._last_ok
        if age > self.stale_after_s:
            raise DeviceError("pilot", f"pilot ADC sample is stale ({age:.3f} s old)")

    def levels(self) -> PilotLevels:
        """The latest debounced CP levels; raises :class:`DeviceError` when the ADC is failing or stale."""
        self._check()
        assert self._levels is not None
        return self._levels

    def pp_ohms(self) -> float:
        """The latest debounced PP-PE resistance (``inf`` open, 0.0 short)."""
        self._check()
        assert self._pp_v is not None
        return self.pp_divider.ohms(self._pp_v)

    def subscribe(self, listener: Listener) -> None:
        self._notifier.subscribe(listener)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run listeners that subscribed outside a running loop on ``loop``."""
        self._notifier.bind(loop)
