"""Control-pilot PWM through the kernel's hardware PWM in sysfs (platform notes §3).

Never software PWM: RPi.GPIO and lgpio ``tx_pwm`` are timed in userspace and miss the ±0.5 %
duty tolerance by an order of magnitude. The kernel PWM block runs from a 50 MHz clock, so a
1 ms period has 20 ns resolution.

The pwmchip number is not stable across kernels (``pwmchip2`` on 6.6, ``pwmchip0`` on 6.12), so
the chip is found by where its ``device`` link points, never by number.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

from hal.iec61851 import PWM_PERIOD_NS
from hal.interfaces import DeviceError, PilotConstant

DEFAULT_SYSFS_ROOT: Final = Path("/sys/class/pwm")

#: Device names (the last component of the ``device`` link's target) of the PWM blocks.
#: BCM2835/2837 (Pi 3, Zero 2 W) map bus address 0x7e20c000 to 0x3f20c000, the BCM2711 (Pi 4)
#: to 0xfe20c000; the Pi 5's RP1 PWM0 is ``1f00098000.pwm`` (RP1's PWM1, ``1f0009c000.pwm``,
#: drives the fan and is not ours).
BCM_PWM_DEVICES: Final = ("3f20c000.pwm", "fe20c000.pwm", "7e20c000.pwm")
RP1_PWM_DEVICES: Final = ("1f00098000.pwm",)

#: GPIO (BCM numbering) -> PWM channel on the Pi 3, Pi 4 and Zero 2 W (PWM0 function ALT0/ALT5).
BCM_CHANNEL_FOR_GPIO: Final = {12: 0, 18: 0, 13: 1, 19: 1}
#: GPIO -> channel on the Pi 5's RP1 PWM0 (GPIO12..15 and 18/19; 18/19 share channels 2/3 with 14/15).
RP1_CHANNEL_FOR_GPIO: Final = {12: 0, 13: 1, 14: 2, 15: 3, 18: 2, 19: 3}

Writer = Callable[[Path, str], None]


def write_attribute(path: Path, value: str) -> None:
    """Write one sysfs attribute in a single ``write(2)``, as the kernel expects."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)  # as the shell's `echo N >` does
    try:
        os.write(fd, value.encode("ascii"))
    finally:
        os.close(fd)


def find_pwm_chip(root: Path, devices: Iterable[str]) -> Path:
    """The ``pwmchipN`` directory whose ``device`` link resolves to one of ``devices``.

    A name matches the final component of the link target (``.../fe20c000.pwm``) or, for a DT node
    name such as ``pwm@7e20c000``, any component that ends with it.
    """
    wanted = tuple(devices)
    candidates = sorted(root.glob("pwmchip*"))
    seen: list[str] = []
    for chip in candidates:
        link = chip / "device"
        if not link.exists():
            continue
        target = Path(os.path.realpath(link))
        seen.append(f"{chip.name} -> {target}")
        if any(part.endswith(name) for name in wanted for part in target.parts):
            return chip
    found = "; ".join(seen) or "none"
    raise DeviceError("pwm", f"no PWM chip under {root} for {', '.join(wanted)} (found: {found})")


def is_rp1_chip(chip: Path) -> bool:
    """True when ``chip`` is the Pi 5's RP1 PWM (its device link ends in an RP1 device name)."""
    target = Path(os.path.realpath(chip / "device"))
    return any(part.endswith(name) for name in RP1_PWM_DEVICES for part in target.parts)


def channel_for_gpio(gpio: int, *, rp1: bool) -> int:
    """The PWM channel that drives ``gpio`` (BCM numbering) on the Pi 5 (``rp1``) or earlier models."""
    table = RP1_CHANNEL_FOR_GPIO if rp1 else BCM_CHANNEL_FOR_GPIO
    try:
        return table[gpio]
    except KeyError:
        model = "Pi 5 (RP1)" if rp1 else "Pi 3/4/Zero 2 W"
        raise ValueError(f"GPIO{gpio} has no hardware PWM on the {model}; use one of {sorted(table)}") from None


class SysfsPwm:
    """One hardware PWM channel producing the 1 kHz control pilot.

    Board assumption (deploy/hardware.md): the ±12 V op-amp stage follows the GPIO, pin high ->
    +12 V and pin low -> -12 V. So +12 V constant is duty = period and -12 V (state F) is duty 0,
    both with the PWM enabled so the PWM block itself holds the pin, never an idle level that
    differs between the BCM and RP1 controllers.
    """

    def __init__(
        self,
        channel: int,
        *,
        devices: Iterable[str] = BCM_PWM_DEVICES + RP1_PWM_DEVICES,
        root: Path = DEFAULT_SYSFS_ROOT,
        period_ns: int = PWM_PERIOD_NS,
        export_timeout_s: float = 1.0,
        writer: Writer = write_attribute,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if channel < 0:
            raise ValueError(f"PWM channel must be >= 0, got {channel}")
        if period_ns <= 0:
            raise ValueError(f"period must be > 0 ns, got {period_ns}")
        self.channel = channel
        self.period_ns = period_ns
        self._write = writer
        self._sleep = sleep
        self._monotonic = monotonic
        self._export_timeout_s = export_timeout_s
        self.chip = find_pwm_chip(root, devices)
        self.path = self.chip / f"pwm{channel}"
        self._duty_ns: int | None = None
        self._enabled: bool | None = None
        self._opened = False

    @classmethod
    def for_gpio(
        cls,
        gpio: int,
        *,
        root: Path = DEFAULT_SYSFS_ROOT,
        devices: Iterable[str] = BCM_PWM_DEVICES + RP1_PWM_DEVICES,
        rp1: bool | None = None,
        **kwargs: Any,
    ) -> SysfsPwm:
        """The channel driving ``gpio``; the Pi 5 (RP1) or BCM map follows the chip found unless ``rp1`` is given."""
        wanted = tuple(devices)
        chip = find_pwm_chip(root, wanted)
        if rp1 is None:
            rp1 = is_rp1_chip(chip)
        # Pin the chip itself, so the instance opens exactly the chip the map was chosen for.
        target = Path(os.path.realpath(chip / "device")).name
        return cls(channel_for_gpio(gpio, rp1=rp1), devices=(target,), root=root, **kwargs)

    # ---- setup -------------------------------------------------------------------------------
    def open(self, initial: PilotConstant = PilotConstant.MINUS_12V) -> None:
        """Export the channel (unless already exported), set the period and hold ``initial``."""
        self._export()
        current_period = self._read_int("period")
        current_duty = self._read_int("duty_cycle")
        if current_period != self.period_ns:
            # duty <= period at every moment: shrink the duty before the period when needed.
            if current_duty > self.period_ns:
                self._attr("duty_cycle", 0)
            self._attr("period", self.period_ns)
        self._duty_ns = None  # always write the initial level, whatever a previous run left
        self._enabled = self._read_int("enable") == 1
        self._opened = True
        self.set_constant(initial)

    def _export(self) -> None:
        if self.path.is_dir():
            return
        try:
            self._write(self.chip / "export", str(self.channel))
        except OSError as exc:
            raise DeviceError("pwm", f"cannot export channel {self.channel} of {self.chip}: {exc}") from exc
        # udev creates the node (and fixes its permissions) asynchronously after the export.
        deadline = self._monotonic() + self._export_timeout_s
        while not (self.path / "duty_cycle").exists():
            if self._monotonic() >= deadline:
                raise DeviceError("pwm", f"{self.path} did not appear within {self._export_timeout_s:g} s of export")
            self._sleep(0.01)

    # ---- outputs -----------------------------------------------------------------------------
    def set_duty_percent(self, duty_percent: float) -> None:
        """Run the PWM at ``duty_percent`` (0 < d < 100); the duty is written in whole ns."""
        if not (math.isfinite(duty_percent) and 0.0 < duty_percent < 100.0):
            raise ValueError(f"duty must be strictly between 0 and 100 %, got {duty_percent!r}")
        self._apply(round(self.period_ns * duty_percent / 100.0))

    def set_constant(self, level: PilotConstant) -> None:
        """Hold +12 V (duty = period) or -12 V (duty 0)."""
        self._apply(self.period_ns if level is PilotConstant.PLUS_12V else 0)

    @property
    def duty_ns(self) -> int | None:
        """The duty last written (ns); None before :meth:`open`."""
        return self._duty_ns

    def _apply(self, duty_ns: int) -> None:
        if not self._opened:
            raise DeviceError("pwm", f"{self.path} is not open")
        if duty_ns != self._duty_ns:
            self._attr("duty_cycle", duty_ns)
            self._duty_ns = duty_ns
        if not self._enabled:
            self._attr("enable", 1)
            self._enabled = True

    def close(self) -> None:
        """Leave the pilot at -12 V (state F: EVSE not available). Idempotent.

        The PWM stays enabled at duty 0, so the kernel keeps holding the pin low after the process
        exits; the channel stays exported (the privileged setup step owns export and period).
        """
        if not self._opened:
            return
        try:
            self._attr("duty_cycle", 0)
            self._duty_ns = 0
        finally:
            self._opened = False

    # ---- sysfs -------------------------------------------------------------------------------
    def _attr(self, name: str, value: int) -> None:
        try:
            self._write(self.path / name, str(value))
        except OSError as exc:
            raise DeviceError("pwm", f"writing {value} to {self.path / name} failed: {exc}") from exc

    def _read_int(self, name: str) -> int:
        try:
            return int((self.path / name).read_text().strip() or "0")
        except (OSError, ValueError) as exc:
            raise DeviceError("pwm", f"reading {self.path / name} failed: {exc}") from exc
