"""Simulated devices: thin views over one :class:`hal.sim.bench.SimBench`.

Each class implements a Protocol from :mod:`hal.interfaces`. They hold only their own outputs
(pilot output, contactor command, indicator pattern, card queue); what they read back comes
from the bench's single EV model and fault set, so every device tells the same story.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

from hal.iec61851 import NOMINAL_LEVEL_V, PP_NOMINAL_OHM
from hal.interfaces import (
    CardTap,
    DeviceError,
    IndicatorPattern,
    Listener,
    MeterReading,
    PilotConstant,
    PilotLevels,
)

if TYPE_CHECKING:
    from hal.sim.bench import SimBench

_log = logging.getLogger(__name__)

#: Fault kinds that the hard-wired fault inputs report.
INPUT_FAULTS: Final = frozenset({"rcd", "overtemp"})
#: Contactor timing comparisons tolerate this much float noise.
_EPS: Final = 1e-9
_MAX_QUEUED_TAPS: Final = 100
_HISTORY_LEN: Final = 100

Triple = tuple[float | None, float | None, float | None]


class SimControlPilot:
    """The pilot generator and level sensor; levels come from the EV's state letter."""

    def __init__(self, bench: SimBench) -> None:
        self._bench = bench
        self._output: float | PilotConstant = PilotConstant.PLUS_12V

    @property
    def output(self) -> float | PilotConstant:
        """The duty (%) while the PWM runs, else the constant level."""
        return self._output

    @property
    def duty(self) -> float | None:
        """The PWM duty (%), None while a constant level is held."""
        return None if isinstance(self._output, PilotConstant) else self._output

    def set_duty(self, duty_percent: float) -> None:
        if not (math.isfinite(duty_percent) and 0.0 < duty_percent < 100.0):
            raise ValueError(f"duty must be strictly between 0 and 100 %, got {duty_percent!r}")
        self._set(float(duty_percent))

    def set_constant(self, level: PilotConstant) -> None:
        self._set(level)

    def _set(self, output: float | PilotConstant) -> None:
        if output == self._output:
            return

        def apply() -> None:
            self._output = output

        self._bench._apply(apply)

    def read(self) -> PilotLevels:
        """Bring the bench up to date, then report the levels (never blocks)."""
        self._bench.tick()
        return self.levels()

    def levels(self) -> PilotLevels:
        """The levels for the bench's present state, without advancing it."""
        ev = self._bench.ev
        if "cp-short" in self._bench.injected:
            return PilotLevels(high_v=0.0, low_v=0.0)  # CP shorted to PE: 0 V whatever we drive
        if self._output is PilotConstant.MINUS_12V:
            return PilotLevels(high_v=-12.0, low_v=-12.0)
        high = NOMINAL_LEVEL_V[ev.state]
        if self._output is PilotConstant.PLUS_12V:
            return PilotLevels(high_v=high, low_v=high)
        low = -12.0 if ev.diode_ok or not ev.plugged else -high
        return PilotLevels(high_v=high, low_v=low)

    def subscribe(self, listener: Listener) -> None:
        self._bench.subscribe(listener)


class SimProximityPilot:
    """PP-to-PE resistance coded by the (socket-outlet) cable."""

    def __init__(self, bench: SimBench) -> None:
        self._bench = bench

    def read_ohms(self) -> float:
        bench = self._bench
        if bench.cable_a is None or not bench.ev.plugged or "pp-broken" in bench.injected:
            return math.inf
        return PP_NOMINAL_OHM[bench.cable_a]


class SimContactor:
    """The contactor: contacts follow the coil after ``switch_delay_s``; faults override them.

    The physical state is computed from the clock when asked, so it is right without a tick.
    """

    def __init__(self, bench: SimBench, *, switch_delay_s: float, has_feedback: bool) -> None:
        self._bench = bench
        self.switch_delay_s = switch_delay_s
        self.has_feedback = has_feedback
        self._commanded = False
        self._changed_at = -math.inf
        self._before = False  # relay position before the last command change

    @property
    def commanded(self) -> bool:
        return self._commanded

    @property
    def switch_at(self) -> float:
        """When the contacts follow (or followed) the last command change."""
        return self._changed_at + self.switch_delay_s

    def command(self, closed: bool) -> None:
        if closed == self._commanded:
            return

        def apply() -> None:
            now = self._bench.clock.monotonic()
            self._before = self._relay(now)
            self._commanded = closed
            self._changed_at = now

        self._bench._apply(apply)

    def _relay(self, now: float) -> bool:
        return self._commanded if now >= self.switch_at - _EPS else self._before

    def physical(self, now: float | None = None) -> bool:
        """True while the main contacts actually conduct (weld / stuck-open included)."""
        injected = self._bench.injected
        if "weld" in injected:
            return True
        if "stuck-open" in injected:
            return False
        return self._relay(self._bench.clock.monotonic() if now is None else now)

    def feedback(self) -> bool | None:
        return self.physical() if self.has_feedback else None

    def subscribe(self, listener: Listener) -> None:
        self._bench.subscribe(listener)


class SimFaultInputs:
    """The hard-wired inputs (RCD module, over-temperature) as injected on the bench."""

    def __init__(self, bench: SimBench) -> None:
        self._bench = bench

    def active(self) -> frozenset[str]:
        return INPUT_FAULTS & self._bench.injected

    def subscribe(self, listener: Listener) -> None:
        self._bench.subscribe(listener)


def _triple(values: list[float | None]) -> Triple:
    return (values[0], values[1], values[2])


class SimEnergyMeter:
    """A three-phase meter whose import register is the energy the EV took."""

    def __init__(self, bench: SimBench) -> None:
        self._bench = bench

    async def read(self) -> MeterReading:
        self._bench.tick()
        if "meter" in self._bench.injected:
            raise DeviceError("meter", "simulated meter does not answer")
        return self.reading()

    def reading(self) -> MeterReading:
        """The reading for the bench's present state, without advancing it or checking faults."""
        bench = self._bench
        ev = bench.ev
        volts: list[float | None] = []
        amps: list[float | None] = []
        watts: list[float | None] = []
        for phase in range(3):
            if phase >= bench.phases:
                volts.append(None)
                amps.append(None)
                watts.append(None)
                continue
            current = ev.draw_a if phase < ev.phases else 0.0
            volts.append(bench.voltage_v)
            amps.append(current)
            watts.append(bench.voltage_v * current)
        return MeterReading(
            voltage_v=_triple(volts),
            current_a=_triple(amps),
            power_w=_triple(watts),
            total_power_w=sum(w for w in watts if w is not None),
            energy_import_wh=ev.energy_wh,
            taken_at=bench.clock.monotonic(),
        )


class SimGridMeter:
    """The site's grid-connection meter, upstream of the charger: house load plus the EV's draw minus PV.

    Three phases whatever the charger has; the charger's L1..L3 are on the grid's L1..L3. Sign
    convention, as an SDM630 reports it: ``power_w`` and ``total_power_w`` are signed (positive =
    import from the grid, negative = export), ``current_a`` is the magnitude (never negative), so a
    phase exporting 10 A reads 10 A and -2300 W. ``energy_import_wh`` is the net-summed import
    register (:attr:`SimBench.grid_import_wh`); the export register is only on the bench
    (:attr:`SimBench.grid_export_wh`), since :class:`MeterReading` has no field for it. The
    "grid-meter" fault makes it stop answering, as a lost RS-485 device would.
    """

    def __init__(self, bench: SimBench) -> None:
        self._bench = bench

    async def read(self) -> MeterReading:
        self._bench.tick()
        if "grid-meter" in self._bench.injected:
            raise DeviceError("grid-meter", "simulated grid meter does not answer")
        return self.reading()

    def reading(self) -> MeterReading:
        """The reading for the bench's present state, without advancing it or checking faults."""
        bench = self._bench
        ev = bench.ev
        volts = bench.voltage_v
        # Signed current per phase (+ import); PV at unity power factor takes pv / V off each phase.
        signed = [
            load + (ev.draw_a if phase < ev.phases else 0.0) - pv / volts
            for phase, (load, pv) in enumerate(zip(bench.house_load_a, bench.pv_power_w, strict=True))
        ]
        watts = [volts * a for a in signed]
        return MeterReading(
            voltage_v=(volts, volts, volts),
            current_a=(abs(signed[0]), abs(signed[1]), abs(signed[2])),
            power_w=(watts[0], watts[1], watts[2]),
            total_power_w=sum(watts),
            energy_import_wh=bench.grid_import_wh,
            taken_at=bench.clock.monotonic(),
        )


class SimThermometer:
    """The charger's temperature sensor over the bench's thermal model; "thermometer" breaks it."""

    def __init__(self, bench: SimBench) -> None:
        self._bench = bench

    def read_c(self) -> float:
        self._bench.tick()
        if "thermometer" in self._bench.injected:
            raise DeviceError("thermometer", "simulated thermometer does not answer")
        return self._bench.heat.temperature_c


class SimCardReader:
    """Card taps put on the bench by the driver; the "reader" fault breaks the stream."""

    def __init__(self, bench: SimBench) -> None:
        self._bench = bench
        # None is a wake-up for consumers when the reader fails; it is never yielded.
        self._queue: asyncio.Queue[CardTap | None] = asyncio.Queue()
        self._waiting = 0

    def _put(self, uid: bytes) -> None:
        """Queue one tap (dropped while the reader is faulty: a broken reader reads nothing)."""
        if "reader" in self._bench.injected:
            _log.info("sim reader is faulty; tap %s dropped", uid.hex())
            return
        if self._queue.qsize() >= _MAX_QUEUED_TAPS:
            self._queue.get_nowait()
        self._queue.put_nowait(CardTap(uid=bytes(uid), reader="sim"))

    def _wake(self) -> None:
        """Wake every consumer waiting for a tap so it can see the fault."""
        for _ in range(self._waiting):
            self._queue.put_nowait(None)

    def _check(self) -> None:
        if "reader" in self._bench.injected:
            raise DeviceError("reader", "simulated card reader failed")

    async def taps(self) -> AsyncIterator[CardTap]:
        while True:
            self._check()
            self._waiting += 1
            try:
                item = await self._queue.get()
            finally:
                self._waiting -= 1
            self._check()
            if item is not None:
                yield item


class SimIndicator:
    """Remembers what the driver would see: the current pattern and the last changes."""

    def __init__(self) -> None:
        self.pattern = IndicatorPattern.OFF
        #: Pattern changes, oldest first (repeats of the same pattern are not recorded).
        self.history: list[IndicatorPattern] = []

    def show(self, pattern: IndicatorPattern) -> None:
        if pattern is self.pattern and self.history:
            return
        self.pattern = pattern
        self.history.append(pattern)
        del self.history[:-_HISTORY_LEN]
