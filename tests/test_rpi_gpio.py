"""Relay, watchdog latch and RCD input against a fake RPi.GPIO module placed in sys.modules."""

from __future__ import annotations

import asyncio
import atexit
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_mock import MockerFixture

from hal.interfaces import DeviceError, PilotConstant
from hal.rpi.board import RpiBoard, RpiBoardConfig
from hal.rpi.gpio import (
    CombinedFaultInputs,
    GpioContactor,
    GpioFaultInput,
    RcdInput,
    WatchdogLatch,
    load_gpio,
)

LOW, HIGH = 0, 1


class FakeGpio(types.ModuleType):
    """Records every call the way RPi.GPIO would see it; inputs are wired by the test."""

    BCM, BOARD = 11, 10
    OUT, IN = 0, 1
    LOW, HIGH = LOW, HIGH
    PUD_OFF, PUD_DOWN, PUD_UP = 20, 21, 22
    RISING, FALLING, BOTH = 31, 32, 33

    def __init__(self) -> None:
        super().__init__("RPi.GPIO")
        self.calls: list[tuple[Any, ...]] = []
        self.mode: int | None = None
        self.outputs: dict[int, int] = {}
        self.levels: dict[int, int] = {}
        self.wiring: dict[int, Callable[[], int]] = {}
        self.callbacks: dict[int, Callable[[int], None]] = {}
        self.released: set[int] = set()

    def setwarnings(self, flag: bool) -> None:
        self.calls.append(("setwarnings", flag))

    def setmode(self, mode: int) -> None:
        self.calls.append(("setmode", mode))
        self.mode = mode

    def setup(self, channel: int, direction: int, **kwargs: Any) -> None:
        self.calls.append(("setup", channel, direction, kwargs))
        self.released.discard(channel)
        if direction == self.OUT:
            self.outputs[channel] = kwargs.get("initial", LOW)

    def output(self, channel: int, value: int) -> None:
        if channel not in self.outputs or channel in self.released:
            raise RuntimeError(f"GPIO{channel} is not set up as an output")
        self.calls.append(("output", channel, value))
        self.outputs[channel] = value

    def input(self, channel: int) -> int:
        if channel in self.wiring:
            return self.wiring[channel]()
        return self.levels.get(channel, LOW)

    def add_event_detect(self, channel: int, edge: int, **kwargs: Any) -> None:
        self.calls.append(("add_event_detect", channel, edge, kwargs.get("bouncetime")))
        self.callbacks[channel] = kwargs["callback"]

    def remove_event_detect(self, channel: int) -> None:
        self.calls.append(("remove_event_detect", channel))
        self.callbacks.pop(channel, None)

    def cleanup(self, channel: int | list[int] | None = None) -> None:
        self.calls.append(("cleanup", channel))
        if isinstance(channel, int):
            self.released.add(channel)

    def edge(self, channel: int) -> None:
        """The library's edge thread calling back."""
        self.callbacks[channel](channel)


@pytest.fixture
def gpio(monkeypatch: pytest.MonkeyPatch, mocker: MockerFixture) -> Iterator[FakeGpio]:
    fake = FakeGpio()
    package = types.ModuleType("RPi")
    package.GPIO = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "RPi", package)
    monkeypatch.setitem(sys.modules, "RPi.GPIO", fake)
    # Keep the interpreter's atexit list clean: record registrations instead.
    mocker.patch.object(atexit, "register")
    mocker.patch.object(atexit, "unregister")
    yield fake


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_load_gpio_selects_bcm_numbering(gpio: FakeGpio) -> None:
    assert load_gpio() is gpio
    assert ("setmode", FakeGpio.BCM) in gpio.calls


def test_without_rpi_gpio_it_is_a_device_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "RPi.GPIO", None)
    with pytest.raises(DeviceError, match="rpi-lgpio") as info:
        load_gpio()
    assert info.value.kind == "gpio"


def test_contactor_drives_relay_and_reads_mirror_contact(gpio: FakeGpio) -> None:
    contactor = GpioContactor(23, 24)
    assert ("setup", 23, FakeGpio.OUT, {"initial": LOW}) in gpio.calls
    assert ("setup", 24, FakeGpio.IN, {"pull_up_down": FakeGpio.PUD_UP}) in gpio.calls
    assert ("add_event_detect", 24, FakeGpio.BOTH, 5) in gpio.calls
    assert gpio.outputs[23] == LOW and not contactor.commanded
    contactor.command(True)
    assert gpio.outputs[23] == HIGH and contactor.commanded
    gpio.levels[24] = LOW  # NO aux contact closed -> pulled to GND
    assert contactor.feedback() is True
    gpio.levels[24] = HIGH
    assert contactor.feedback() is False
    contactor.command(False)
    assert gpio.outputs[23] == LOW and not contactor.commanded


def test_contactor_without_mirror_contact_has_no_feedback(gpio: FakeGpio) -> None:
    assert GpioContactor(23).feedback() is None


def test_normally_closed_mirror_contact(gpio: FakeGpio) -> None:
    contactor = GpioContactor(23, 24, feedback_closed_level=HIGH)
    gpio.levels[24] = HIGH
    assert contactor.feedback() is True


def test_contactor_close_drives_low_before_release(gpio: FakeGpio) -> None:
    contactor = GpioContactor(23, 24)
    contactor.command(True)
    gpio.calls.clear()
    contactor.close()
    contactor.close()
    assert gpio.calls == [
        ("output", 23, LOW),
        ("cleanup", 23),
        ("remove_event_detect", 24),
        ("cleanup", 24),
    ]
    assert not contactor.commanded
    with pytest.raises(DeviceError):
        contactor.command(True)


def test_relay_is_driven_low_by_the_exit_handler(gpio: FakeGpio) -> None:
    contactor = GpioContactor(23)
    contactor.command(True)
    registered = [c.args[0] for c in atexit.register.call_args_list]  # type: ignore[attr-defined]
    assert len(registered) == 1
    registered[0]()  # what the interpreter runs at exit
    assert gpio.outputs[23] == LOW
    assert ("cleanup", 23) in gpio.calls
    atexit.unregister.assert_called_once_with(registered[0])  # type: ignore[attr-defined]


def test_contactor_listeners_fire_on_command_and_mirror_edges(gpio: FakeGpio) -> None:
    contactor = GpioContactor(23, 24)
    calls: list[int] = []
    contactor.subscribe(lambda: calls.append(1))
    contactor.command(True)
    contactor.command(True)  # no change, no event
    gpio.edge(24)
    assert calls == [1, 1]


async def test_edge_from_the_gpio_thread_runs_the_listener_on_the_loop(gpio: FakeGpio) -> None:
    rcd = RcdInput(5, 6)
    loop_thread = threading.get_ident()
    fired = asyncio.Event()
    threads: list[int] = []

    def listener() -> None:
        threads.append(threading.get_ident())
        fired.set()

    rcd.subscribe(listener)
    edge_thread = threading.Thread(target=gpio.edge, args=(5,))
    edge_thread.start()
    edge_thread.join()
    await asyncio.wait_for(fired.wait(), timeout=5.0)
    assert threads == [loop_thread]
    assert rcd.active() == {"rcd"}


def test_watchdog_latch_toggles_and_stops_low(gpio: FakeGpio) -> None:
    latch = WatchdogLatch(25)
    assert gpio.outputs[25] == LOW
    levels = []
    for _ in range(4):
        latch.kick()
        levels.append(gpio.outputs[25])
    assert levels == [HIGH, LOW, HIGH, LOW]
    assert latch.kicks == 4
    latch.kick()
    latch.close()
    assert gpio.outputs[25] == LOW
    assert gpio.calls[-2:] == [("output", 25, LOW), ("cleanup", 25)]
    with pytest.raises(DeviceError):
        latch.kick()


def test_rcd_setup_and_level(gpio: FakeGpio) -> None:
    rcd = RcdInput(5, 6)
    assert ("setup", 5, FakeGpio.IN, {"pull_up_down": FakeGpio.PUD_DOWN}) in gpio.calls
    assert ("setup", 6, FakeGpio.OUT, {"initial": LOW}) in gpio.calls
    assert ("add_event_detect", 5, FakeGpio.RISING, 5) in gpio.calls
    assert rcd.active() == frozenset()
    gpio.levels[5] = HIGH
    assert rcd.active() == {"rcd"}
    assert rcd.active() == {"rcd"}


def test_rcd_short_trip_is_reported_once(gpio: FakeGpio) -> None:
    rcd = RcdInput(5)
    calls: list[int] = []
    rcd.subscribe(lambda: calls.append(1))
    gpio.edge(5)  # the line rose and fell again before the controller looked
    assert calls == [1]
    assert rcd.active() == {"rcd"}
    assert rcd.active() == frozenset()


def test_active_low_rcd_module(gpio: FakeGpio) -> None:
    RcdInput(5, fault_level=LOW)
    assert ("setup", 5, FakeGpio.IN, {"pull_up_down": FakeGpio.PUD_UP}) in gpio.calls
    assert ("add_event_detect", 5, FakeGpio.FALLING, 5) in gpio.calls


def wire_rcd_module(gpio: FakeGpio, clock: FakeClock, *, trip_after_s: float | None, stuck: bool = False) -> None:
    """Fault line follows the test input after ``trip_after_s``; fires the edge callback like the library."""
    since: float | None = None
    tripped = False

    def fault_line() -> int:
        nonlocal since, tripped
        if gpio.outputs.get(6) == HIGH:
            if since is None:
                since = clock.now
            if trip_after_s is not None and clock.now - since >= trip_after_s and not tripped:
                tripped = True
                gpio.edge(5)
        elif not stuck:
            tripped = False
            since = None
        return HIGH if tripped else LOW

    gpio.wiring[5] = fault_line


def test_self_test_passes_and_its_own_trip_is_not_a_fault(gpio: FakeGpio) -> None:
    clock = FakeClock()
    rcd = RcdInput(5, 6, monotonic=clock.monotonic, sleep=clock.sleep)
    wire_rcd_module(gpio, clock, trip_after_s=0.020)
    calls: list[int] = []
    rcd.subscribe(lambda: calls.append(1))
    result = rcd.self_test(pulse_ms=50, trip_timeout_ms=300)
    assert result.passed, result.reason
    assert result.trip_ms == pytest.approx(20.0, abs=1.5)
    assert gpio.outputs[6] == LOW
    assert [c for c in gpio.calls if c[0] == "output"] == [("output", 6, HIGH), ("output", 6, LOW)]
    assert clock.now - 50.0 == pytest.approx(0.050, abs=1e-6)  # the pulse lasted pulse_ms
    assert rcd.active() == frozenset()
    assert calls == []


def test_self_test_fails_when_the_module_never_trips(gpio: FakeGpio) -> None:
    clock = FakeClock()
    rcd = RcdInput(5, 6, monotonic=clock.monotonic, sleep=clock.sleep)
    wire_rcd_module(gpio, clock, trip_after_s=None)
    calls: list[int] = []
    rcd.subscribe(lambda: calls.append(1))
    result = rcd.self_test(trip_timeout_ms=300)
    assert not result.passed
    assert result.trip_ms is None
    assert "did not trip within 300 ms" in result.reason
    assert gpio.outputs[6] == LOW
    assert 0.300 <= clock.now - 50.0 < 0.310
    assert calls == [1]


def test_self_test_fails_when_the_fault_stays_latched(gpio: FakeGpio) -> None:
    clock = FakeClock()
    rcd = RcdInput(5, 6, monotonic=clock.monotonic, sleep=clock.sleep)
    wire_rcd_module(gpio, clock, trip_after_s=0.010, stuck=True)
    result = rcd.self_test(release_timeout_ms=200)
    assert not result.passed
    assert result.trip_ms == pytest.approx(10.0, abs=1.5)
    assert "still active" in result.reason
    assert rcd.active() == {"rcd"}


def test_self_test_refuses_with_the_fault_already_active(gpio: FakeGpio) -> None:
    rcd = RcdInput(5, 6)
    gpio.levels[5] = HIGH
    result = rcd.self_test()
    assert not result.passed and "already active" in result.reason
    assert ("output", 6, HIGH) not in gpio.calls


def test_self_test_needs_a_test_output(gpio: FakeGpio) -> None:
    with pytest.raises(DeviceError, match="no RCD test output"):
        RcdInput(5).self_test()


def test_rcd_close_releases_pins(gpio: FakeGpio) -> None:
    rcd = RcdInput(5, 6)
    gpio.calls.clear()
    rcd.close()
    assert gpio.calls == [("remove_event_detect", 5), ("output", 6, LOW), ("cleanup", 6), ("cleanup", 5)]


def test_combined_fault_inputs(gpio: FakeGpio) -> None:
    rcd = RcdInput(5)
    overtemp = GpioFaultInput("overtemp", 16, fault_level=LOW)
    faults = CombinedFaultInputs(rcd, overtemp)
    gpio.levels[16] = HIGH
    assert faults.active() == frozenset()
    gpio.levels[16] = LOW
    assert faults.active() == {"overtemp"}
    gpio.levels[5] = HIGH
    assert faults.active() == {"overtemp", "rcd"}
    calls: list[int] = []
    faults.subscribe(lambda: calls.append(1))
    gpio.edge(16)
    gpio.edge(5)
    assert calls == [1, 1]


async def test_board_opens_safe_and_closes_relay_first(gpio: FakeGpio, tmp_path: Path, mocker: MockerFixture) -> None:
    from test_rpi_analog import FakeChip
    from test_rpi_pwm import BCM_PI4, FakeKernel, make_chip

    root = tmp_path / "class" / "pwm"
    make_chip(root, 0, BCM_PI4)
    kernel = FakeKernel()
    chip = FakeChip(mocker)
    chip.set_pilot(12.0, 12.0)
    chip.volts[2] = 3.3
    board = RpiBoard(
        RpiBoardConfig(pwm_root=root),
        smbus_factory=lambda bus: chip.bus,
        pwm_kwargs={"writer": kernel},
    )
    assert kernel.writes[-2:] == [("pwm0/duty_cycle", "0"), ("pwm0/enable", "1")]  # -12 V at open
    assert gpio.outputs[23] == LOW and gpio.outputs[25] == LOW
    woken = asyncio.Event()
    threads: list[int] = []

    def wake() -> None:
        threads.append(threading.get_ident())
        woken.set()

    await asyncio.to_thread(board.contactor.subscribe, wake)  # as a controller built outside the loop would
    board.start()
    try:
        assert board.pilot.read().high_v == pytest.approx(12.0, abs=0.01)
        assert board.proximity.read_ohms() == float("inf")
        board.pilot.set_constant(PilotConstant.PLUS_12V)
        board.contactor.command(True)
        board.watchdog.kick()
        assert gpio.outputs[23] == HIGH and gpio.outputs[25] == HIGH
        edge = threading.Thread(target=gpio.edge, args=(24,))  # mirror contact moves, seen on the GPIO thread
        edge.start()
        edge.join()
        await asyncio.wait_for(woken.wait(), timeout=5.0)
        assert set(threads) == {threading.get_ident()}
    finally:
        board.close()
    outputs = [c for c in gpio.calls if c[0] == "output"]
    assert outputs[-3:] == [("output", 23, LOW), ("output", 25, LOW), ("output", 6, LOW)]
    assert kernel.writes[-1] == ("pwm0/duty_cycle", "0")
    assert board.frontend._thread is None  # sampler stopped


def test_board_that_fails_to_open_leaves_the_relay_released(gpio: FakeGpio, tmp_path: Path) -> None:
    root = tmp_path / "class" / "pwm"
    root.mkdir(parents=True)  # no PWM chip at all
    with pytest.raises(DeviceError, match="no PWM chip"):
        RpiBoard(RpiBoardConfig(pwm_root=root), smbus_factory=lambda bus: None)  # type: ignore[arg-type,return-value]
    assert ("cleanup", 23) in gpio.calls and ("cleanup", 25) in gpio.calls
    assert gpio.outputs[23] == LOW


def test_board_start_needs_the_event_loop(gpio: FakeGpio, tmp_path: Path, mocker: MockerFixture) -> None:
    from test_rpi_analog import FakeChip
    from test_rpi_pwm import BCM_PI4, FakeKernel, make_chip

    root = tmp_path / "class" / "pwm"
    make_chip(root, 0, BCM_PI4)
    chip = FakeChip(mocker)
    board = RpiBoard(
        RpiBoardConfig(pwm_root=root), smbus_factory=lambda bus: chip.bus, pwm_kwargs={"writer": FakeKernel()}
    )
    try:
        with pytest.raises(RuntimeError, match="event loop"):
            board.start()
    finally:
        board.close()


async def test_listener_subscribed_outside_the_loop_runs_on_the_bound_loop(gpio: FakeGpio) -> None:
    rcd = RcdInput(5)
    fired = asyncio.Event()
    threads: list[int] = []

    def listener() -> None:
        threads.append(threading.get_ident())
        fired.set()

    await asyncio.to_thread(rcd.subscribe, listener)  # no running loop in that thread
    rcd.bind_loop(asyncio.get_running_loop())
    edge = threading.Thread(target=gpio.edge, args=(5,))
    edge.start()
    edge.join()
    await asyncio.wait_for(fired.wait(), timeout=5.0)
    assert threads == [threading.get_ident()]
