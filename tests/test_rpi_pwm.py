"""Sysfs hardware PWM against a fake /sys/class/pwm tree whose writer enforces the kernel's rules."""

from __future__ import annotations

import errno
import math
from pathlib import Path

import pytest

from hal.interfaces import DeviceError, PilotConstant
from hal.rpi.pwm import (
    SysfsPwm,
    channel_for_gpio,
    find_pwm_chip,
    write_attribute,
)

BCM_PI4 = "platform/soc/fe20c000.pwm"
RP1_PWM0 = "platform/axi/1000120000.pcie/1f00098000.pwm"
RP1_FAN = "platform/axi/1000120000.pcie/1f0009c000.pwm"


def make_chip(root: Path, number: int, device: str, *, exported: dict[int, tuple[int, int, int]] | None = None) -> Path:
    """``root/pwmchipN`` with a ``device`` symlink into a fake /sys/devices, export files and channels."""
    devices = root.parent / "devices" / device
    devices.mkdir(parents=True, exist_ok=True)
    chip = root / f"pwmchip{number}"
    chip.mkdir(parents=True)
    (chip / "device").symlink_to(devices)
    for name in ("export", "unexport"):
        (chip / name).write_text("")
    (chip / "npwm").write_text("4\n")
    for channel, (period, duty, enable) in (exported or {}).items():
        make_channel(chip, channel, period, duty, enable)
    return chip


def make_channel(chip: Path, channel: int, period: int = 0, duty: int = 0, enable: int = 0) -> None:
    node = chip / f"pwm{channel}"
    node.mkdir()
    (node / "period").write_text(f"{period}\n")
    (node / "duty_cycle").write_text(f"{duty}\n")
    (node / "enable").write_text(f"{enable}\n")


class FakeKernel:
    """The writer: records every write and refuses what the PWM core refuses, then writes the file."""

    def __init__(self, *, create_on_export: bool = True) -> None:
        self.writes: list[tuple[str, str]] = []
        self.create_on_export = create_on_export

    def __call__(self, path: Path, value: str) -> None:
        self.writes.append((f"{path.parent.name}/{path.name}", value))
        node = path.parent
        if path.name == "export":
            if self.create_on_export:
                make_channel(node, int(value))
            return
        period = int((node / "period").read_text())
        duty = int((node / "duty_cycle").read_text())
        if path.name == "duty_cycle" and int(value) > period:
            raise OSError(errno.EINVAL, "duty_cycle > period")
        if path.name == "period" and int(value) < duty:
            raise OSError(errno.EINVAL, "period < duty_cycle")
        if path.name == "enable" and value == "1" and period == 0:
            raise OSError(errno.EINVAL, "enable without a period")
        write_attribute(path, value)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "class" / "pwm"


def test_chip_is_found_by_device_link_not_number(root: Path) -> None:
    make_chip(root, 0, RP1_FAN)
    make_chip(root, 2, RP1_PWM0)
    assert find_pwm_chip(root, ["1f00098000.pwm"]) == root / "pwmchip2"


def test_dt_node_style_name_matches_a_path_component(root: Path) -> None:
    make_chip(root, 1, "platform/soc/pwm@7e20c000/extra")
    assert find_pwm_chip(root, ["pwm@7e20c000"]) == root / "pwmchip1"


def test_missing_chip_names_what_was_found(root: Path) -> None:
    make_chip(root, 0, RP1_FAN)
    with pytest.raises(DeviceError, match=r"pwmchip0 -> .*1f0009c000\.pwm"):
        find_pwm_chip(root, ["fe20c000.pwm"])


def test_open_exports_then_period_duty_enable_in_order(root: Path) -> None:
    make_chip(root, 0, BCM_PI4)
    kernel = FakeKernel()
    pwm = SysfsPwm(0, root=root, writer=kernel)
    pwm.open()
    assert kernel.writes == [
        ("pwmchip0/export", "0"),
        ("pwm0/period", "1000000"),
        ("pwm0/duty_cycle", "0"),
        ("pwm0/enable", "1"),
    ]
    node = root / "pwmchip0" / "pwm0"
    assert (node / "period").read_text() == "1000000"
    assert (node / "enable").read_text() == "1"


def test_duty_and_constants_write_exact_nanoseconds(root: Path) -> None:
    make_chip(root, 0, BCM_PI4)
    kernel = FakeKernel()
    pwm = SysfsPwm(1, root=root, writer=kernel)
    pwm.open(PilotConstant.PLUS_12V)
    kernel.writes.clear()
    pwm.set_duty_percent(16.0 / 0.6)  # 16 A
    pwm.set_duty_percent(16.0 / 0.6)  # unchanged: no write
    pwm.set_constant(PilotConstant.MINUS_12V)
    pwm.set_constant(PilotConstant.PLUS_12V)
    pwm.set_duty_percent(5.0)
    assert kernel.writes == [
        ("pwm1/duty_cycle", "266667"),
        ("pwm1/duty_cycle", "0"),
        ("pwm1/duty_cycle", "1000000"),
        ("pwm1/duty_cycle", "50000"),
    ]
    assert (root / "pwmchip0" / "pwm1" / "duty_cycle").read_text() == "50000"
    assert pwm.duty_ns == 50000


def test_leftover_long_period_is_shrunk_duty_first(root: Path) -> None:
    make_chip(root, 0, BCM_PI4, exported={0: (20_000_000, 15_000_000, 1)})
    kernel = FakeKernel()
    pwm = SysfsPwm(0, root=root, writer=kernel)
    pwm.open(PilotConstant.PLUS_12V)
    assert kernel.writes == [
        ("pwm0/duty_cycle", "0"),
        ("pwm0/period", "1000000"),
        ("pwm0/duty_cycle", "1000000"),
    ]


def test_channel_prepared_by_setup_step_needs_no_export_or_period(root: Path) -> None:
    make_chip(root, 0, BCM_PI4, exported={0: (1_000_000, 0, 0)})
    kernel = FakeKernel()
    SysfsPwm(0, root=root, writer=kernel).open()
    assert kernel.writes == [("pwm0/duty_cycle", "0"), ("pwm0/enable", "1")]


def test_export_that_never_appears_times_out(root: Path) -> None:
    make_chip(root, 0, BCM_PI4)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    pwm = SysfsPwm(0, root=root, writer=FakeKernel(create_on_export=False), sleep=sleep, monotonic=lambda: now[0])
    with pytest.raises(DeviceError, match="did not appear"):
        pwm.open()
    assert 1.0 <= now[0] < 1.1


@pytest.mark.parametrize("duty", [0.0, 100.0, -1.0, 150.0, math.nan, math.inf])
def test_out_of_range_duty_is_refused_without_writing(root: Path, duty: float) -> None:
    make_chip(root, 0, BCM_PI4)
    kernel = FakeKernel()
    pwm = SysfsPwm(0, root=root, writer=kernel)
    pwm.open()
    kernel.writes.clear()
    with pytest.raises(ValueError):
        pwm.set_duty_percent(duty)
    assert kernel.writes == []


def test_close_leaves_minus_12v_and_refuses_further_writes(root: Path) -> None:
    make_chip(root, 0, BCM_PI4)
    kernel = FakeKernel()
    pwm = SysfsPwm(0, root=root, writer=kernel)
    pwm.open(PilotConstant.PLUS_12V)
    kernel.writes.clear()
    pwm.close()
    pwm.close()
    assert kernel.writes == [("pwm0/duty_cycle", "0")]
    assert (root / "pwmchip0" / "pwm0" / "enable").read_text() == "1"  # the block keeps holding the pin low
    with pytest.raises(DeviceError, match="not open"):
        pwm.set_duty_percent(50.0)


def test_write_failure_is_a_device_error(root: Path) -> None:
    make_chip(root, 0, BCM_PI4, exported={0: (1_000_000, 0, 0)})

    def broken(path: Path, value: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    with pytest.raises(DeviceError, match="Permission denied"):
        SysfsPwm(0, root=root, writer=broken).open()


def test_default_writer_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "duty_cycle"
    target.write_text("0\n")
    write_attribute(target, "266667")
    assert target.read_text() == "266667"


@pytest.mark.parametrize(
    ("device", "gpio", "chip", "channel"),
    [
        (BCM_PI4, 18, "pwmchip0", 0),
        (BCM_PI4, 12, "pwmchip0", 0),
        (BCM_PI4, 19, "pwmchip0", 1),
        (BCM_PI4, 13, "pwmchip0", 1),
        ("platform/soc/3f20c000.pwm", 18, "pwmchip0", 0),  # Pi 3 / Zero 2 W
        (RP1_PWM0, 18, "pwmchip2", 2),
        (RP1_PWM0, 19, "pwmchip2", 3),
        (RP1_PWM0, 12, "pwmchip2", 0),
        (RP1_PWM0, 13, "pwmchip2", 1),
    ],
)
def test_for_gpio_picks_chip_and_channel_map(root: Path, device: str, gpio: int, chip: str, channel: int) -> None:
    number = 2 if device == RP1_PWM0 else 0
    if device == RP1_PWM0:
        make_chip(root, 0, RP1_FAN)  # the fan's PWM must not be taken
    make_chip(root, number, device)
    pwm = SysfsPwm.for_gpio(gpio, root=root, writer=FakeKernel())
    assert (pwm.chip.name, pwm.channel) == (chip, channel)


def test_gpio_without_hardware_pwm_is_refused() -> None:
    with pytest.raises(ValueError, match="GPIO4"):
        channel_for_gpio(4, rp1=False)
    with pytest.raises(ValueError, match="GPIO16"):
        channel_for_gpio(16, rp1=True)
    assert channel_for_gpio(14, rp1=True) == 2


def test_for_gpio_with_custom_device_name_and_forced_map(root: Path) -> None:
    make_chip(root, 3, "platform/custom/abc.pwm")
    pwm = SysfsPwm.for_gpio(18, root=root, devices=["abc.pwm"], rp1=True, writer=FakeKernel())
    assert (pwm.chip.name, pwm.channel) == ("pwmchip3", 2)
    pwm = SysfsPwm.for_gpio(18, root=root, devices=["abc.pwm"], rp1=False, writer=FakeKernel())
    assert pwm.channel == 0
