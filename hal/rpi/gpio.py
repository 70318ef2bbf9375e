"""Contactor relay, watchdog latch and RCD module on the Pi's GPIO, through the RPi.GPIO API.

On the Pi 5 ``RPi.GPIO`` itself fails; ``rpi-lgpio`` provides the same module on Pi 3/4/5
(platform notes §3). The module is imported at run time (``load_gpio``) so that nothing needs it
off a Pi. Pin numbers are BCM (GPIOn).

Fail-safe (deploy/hardware.md): every output here is active high with a pull-down on the board,
so a released pin (``GPIO.cleanup``, reset, a process that died) de-energises the relay. A
crash that leaves the relay pin high is covered by the watchdog latch: its monostable drops the
relay driver's enable when :meth:`WatchdogLatch.kick` stops.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from hal.interfaces import DeviceError, FaultInputs, Listener
from hal.rpi._notify import Notifier

_log = logging.getLogger(__name__)

#: Bounce time (ms) for the mirror-contact and RCD edge detection.
DEFAULT_BOUNCE_MS: Final = 5


class GpioApi(Protocol):
    """The part of the RPi.GPIO module used here."""

    BCM: int
    OUT: int
    IN: int
    HIGH: int
    LOW: int
    PUD_UP: int
    PUD_DOWN: int
    RISING: int
    FALLING: int
    BOTH: int

    def setmode(self, mode: int) -> None: ...
    def setwarnings(self, flag: bool) -> None: ...
    def setup(self, channel: int, direction: int, **kwargs: Any) -> None: ...
    def output(self, channel: int, value: int) -> None: ...
    def input(self, channel: int) -> int: ...
    def add_event_detect(self, channel: int, edge: int, **kwargs: Any) -> None: ...
    def remove_event_detect(self, channel: int) -> None: ...
    def cleanup(self, channel: int | list[int] | None = None) -> None: ...


def load_gpio() -> GpioApi:
    """Import RPi.GPIO (or rpi-lgpio's drop-in) and select BCM numbering."""
    try:
        module = importlib.import_module("RPi.GPIO")
    except (ImportError, RuntimeError) as exc:
        raise DeviceError("gpio", f"RPi.GPIO is not available (install rpi-lgpio): {exc}") from exc
    gpio = cast(GpioApi, module)
    gpio.setwarnings(False)
    gpio.setmode(gpio.BCM)
    return gpio


class _Output:
    """One output pin, low at setup and driven low before release, at close and at interpreter exit."""

    def __init__(self, gpio: GpioApi, pin: int) -> None:
        self.gpio = gpio
        self.pin = pin
        self._closed = False
        gpio.setup(pin, gpio.OUT, initial=gpio.LOW)
        atexit.register(self.close)

    def set(self, high: bool) -> None:
        if self._closed:
            raise DeviceError("gpio", f"GPIO{self.pin} is closed")
        self.gpio.output(self.pin, self.gpio.HIGH if high else self.gpio.LOW)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self.gpio.output(self.pin, self.gpio.LOW)
        finally:
            self.gpio.cleanup(self.pin)


class GpioContactor:
    """The contactor coil's relay driver (active high) and its optional mirror contact.

    ``feedback_pin``: the auxiliary (mirror) contact between the pin and GND with the internal
    pull-up, so a closed aux contact reads low; ``feedback_closed_level`` says which level means
    "main contacts closed" (LOW for a normally-open aux contact, HIGH for a normally-closed one).
    """

    def __init__(
        self,
        relay_pin: int,
        feedback_pin: int | None = None,
        *,
        feedback_closed_level: int | None = None,
        bounce_ms: int = DEFAULT_BOUNCE_MS,
        gpio: GpioApi | None = None,
    ) -> None:
        self.gpio = gpio or load_gpio()
        self.feedback_pin = feedback_pin
        self._closed_level = self.gpio.LOW if feedback_closed_level is None else feedback_closed_level
        self._notifier = Notifier()
        self._commanded = False
        self._relay = _Output(self.gpio, relay_pin)
        self.relay_pin = relay_pin
        if feedback_pin is not None:
            self.gpio.setup(feedback_pin, self.gpio.IN, pull_up_down=self.gpio.PUD_UP)
            self.gpio.add_event_detect(feedback_pin, self.gpio.BOTH, callback=self._on_edge, bouncetime=bounce_ms)

    @property
    def commanded(self) -> bool:
        return self._commanded

    def command(self, closed: bool) -> None:
        if closed == self._commanded:
            return
        self._relay.set(closed)
        self._commanded = closed
        self._notifier.fire()

    def feedback(self) -> bool | None:
        if self.feedback_pin is None:
            return None
        return self.gpio.input(self.feedback_pin) == self._closed_level

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run listeners that subscribed outside a running loop on ``loop``."""
        self._notifier.bind(loop)

    def subscribe(self, listener: Listener) -> None:
        self._notifier.subscribe(listener)

    def _on_edge(self, _channel: int) -> None:
        self._notifier.fire()

    def close(self) -> None:
        """Drop the coil and release the pins (also run at interpreter exit)."""
        self._commanded = False
        try:
            self._relay.close()
        finally:
            if self.feedback_pin is not None:
                self.gpio.remove_event_detect(self.feedback_pin)
                self.gpio.cleanup(self.feedback_pin)
                self.feedback_pin = None


class WatchdogLatch:
    """The output the controller toggles while it is healthy.

    The board's retriggerable monostable holds the relay driver's enable only while it sees
    edges on this pin; when :meth:`kick` stops (hang, crash, :meth:`close`), the relay drops
    within the monostable's period whatever the relay pin says.
    """

    def __init__(self, pin: int, *, gpio: GpioApi | None = None) -> None:
        self.gpio = gpio or load_gpio()
        self.pin = pin
        self._out = _Output(self.gpio, pin)
        self._level = False
        self.kicks = 0

    @property
    def level(self) -> bool:
        return self._level

    def kick(self) -> None:
        """One edge for the monostable; call only from a healthy control loop."""
        self._level = not self._level
        self._out.set(self._level)
        self.kicks += 1

    def close(self) -> None:
        """Stop kicking and drive the pin low: the monostable times out and drops the relay."""
        self._level = False
        self._out.close()


@dataclass(frozen=True, slots=True)
class SelfTestResult:
    passed: bool
    #: Time from raising the test pin to seeing the fault input (ms), None when it never came.
    trip_ms: float | None
    reason: str


class RcdInput:
    """The RCD / 6 mA DC fault module: a fault output on an edge-detected input plus a test input.

    ``active()`` reports ``"rcd"`` while the fault line is at ``fault_level`` and also once for a
    trip that came and went between two reads (the edge callback latches it), so a short trip
    is never missed. ``self_test()`` blocks for up to ``trip_timeout_ms + release_timeout_ms``:
    run it with :func:`asyncio.to_thread`, and only while the contactor is open.
    """

    name: Final = "rcd"

    def __init__(
        self,
        fault_pin: int,
        test_pin: int | None = None,
        *,
        fault_level: int | None = None,
        bounce_ms: int = DEFAULT_BOUNCE_MS,
        gpio: GpioApi | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.gpio = gpio or load_gpio()
        self.fault_pin = fault_pin
        self.test_pin = test_pin
        self._fault_level = self.gpio.HIGH if fault_level is None else fault_level
        self._monotonic = monotonic
        self._sleep = sleep
        self._notifier = Notifier()
        self._lock = threading.Lock()
        self._tripped = False  # an edge seen since the last active()
        self._testing = False
        pull = self.gpio.PUD_UP if self._fault_level == self.gpio.LOW else self.gpio.PUD_DOWN
        self.gpio.setup(fault_pin, self.gpio.IN, pull_up_down=pull)
        edge = self.gpio.RISING if self._fault_level == self.gpio.HIGH else self.gpio.FALLING
        self._test_out = _Output(self.gpio, test_pin) if test_pin is not None else None
        self.gpio.add_event_detect(fault_pin, edge, callback=self._on_edge, bouncetime=bounce_ms)

    def _line_active(self) -> bool:
        return self.gpio.input(self.fault_pin) == self._fault_level

    def _on_edge(self, _channel: int) -> None:
        with self._lock:
            if self._testing:
                return
            self._tripped = True
        self._notifier.fire()

    def active(self) -> frozenset[str]:
        with self._lock:
            if self._testing:
                return frozenset()
            tripped, self._tripped = self._tripped, False
        return frozenset({self.name}) if tripped or self._line_active() else frozenset()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run listeners that subscribed outside a running loop on ``loop``."""
        self._notifier.bind(loop)

    def subscribe(self, listener: Listener) -> None:
        self._notifier.subscribe(listener)

    def self_test(
        self, *, pulse_ms: float = 50.0, trip_timeout_ms: float = 300.0, release_timeout_ms: float = 1000.0
    ) -> SelfTestResult:
        """Raise the module's test input, expect the fault line within ``trip_timeout_ms``, release it.

        The test's own trip is not reported by :meth:`active`; a fault line still active
        ``release_timeout_ms`` after the test input is released fails the test and is reported.
        """
        if self._test_out is None:
            raise DeviceError("rcd", "no RCD test output is wired")
        if self._line_active():
            return SelfTestResult(False, None, "fault line already active before the test")
        with self._lock:
            self._testing = True
        trip_ms: float | None = None
        try:
            start = self._monotonic()
            self._test_out.set(True)
            trip_ms = self._wait(True, trip_timeout_ms, start)
            if trip_ms is not None:
                remaining = pulse_ms - trip_ms
                if remaining > 0:
                    self._sleep(remaining / 1000.0)
        finally:
            self._test_out.set(False)
        released = self._wait(False, release_timeout_ms, self._monotonic())
        with self._lock:
            self._testing = False
            self._tripped = False
        if trip_ms is None:
            result = SelfTestResult(False, None, f"fault line did not trip within {trip_timeout_ms:g} ms")
        elif released is None:
            result = SelfTestResult(False, trip_ms, f"fault line still active {release_timeout_ms:g} ms after the test")
        else:
            result = SelfTestResult(True, trip_ms, "ok")
        if not result.passed:
            _log.error("RCD self-test failed: %s", result.reason)
            self._notifier.fire()
        return result

    def _wait(self, active: bool, timeout_ms: float, start: float) -> float | None:
        """Poll the fault line every millisecond until it is ``active``; elapsed ms or None on timeout."""
        while True:
            elapsed_ms = (self._monotonic() - start) * 1000.0
            if self._line_active() == active:
                return elapsed_ms
            if elapsed_ms >= timeout_ms:
                return None
            self._sleep(0.001)

    def close(self) -> None:
        self.gpio.remove_event_detect(self.fault_pin)
        try:
            if self._test_out is not None:
                self._test_out.close()
        finally:
            self.gpio.cleanup(self.fault_pin)


class CombinedFaultInputs:
    """Several hard-wired fault inputs (e.g. the RCD module and an over-temperature switch) as one."""

    def __init__(self, *inputs: FaultInputs) -> None:
        self.inputs = inputs

    def active(self) -> frozenset[str]:
        found: frozenset[str] = frozenset()
        for item in self.inputs:
            found |= item.active()
        return found

    def subscribe(self, listener: Listener) -> None:
        for item in self.inputs:
            item.subscribe(listener)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        for item in self.inputs:
            binder = getattr(item, "bind_loop", None)
            if binder is not None:
                binder(loop)


class GpioFaultInput:
    """A plain fault line (e.g. a thermal switch): ``name`` is active while the pin is at ``fault_level``.

    A trip that comes and goes between two reads is reported once, as for :class:`RcdInput`.
    """

    def __init__(
        self,
        name: str,
        pin: int,
        *,
        fault_level: int | None = None,
        bounce_ms: int = DEFAULT_BOUNCE_MS,
        gpio: GpioApi | None = None,
    ) -> None:
        self.gpio = gpio or load_gpio()
        self.name = name
        self.pin = pin
        self._fault_level = self.gpio.HIGH if fault_level is None else fault_level
        self._notifier = Notifier()
        self._lock = threading.Lock()
        self._tripped = False
        pull = self.gpio.PUD_UP if self._fault_level == self.gpio.LOW else self.gpio.PUD_DOWN
        self.gpio.setup(pin, self.gpio.IN, pull_up_down=pull)
        edge = self.gpio.RISING if self._fault_level == self.gpio.HIGH else self.gpio.FALLING
        self.gpio.add_event_detect(pin, edge, callback=self._on_edge, bouncetime=bounce_ms)

    def _on_edge(self, _channel: int) -> None:
        with self._lock:
            self._tripped = True
        self._notifier.fire()

    def active(self) -> frozenset[str]:
        with self._lock:
            tripped, self._tripped = self._tripped, False
        return frozenset({self.name}) if tripped or self.gpio.input(self.pin) == self._fault_level else frozenset()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run listeners that subscribed outside a running loop on ``loop``."""
        self._notifier.bind(loop)

    def subscribe(self, listener: Listener) -> None:
        self._notifier.subscribe(listener)

    def close(self) -> None:
        self.gpio.remove_event_detect(self.pin)
        self.gpio.cleanup(self.pin)
