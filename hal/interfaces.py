"""The hardware abstraction layer's contracts.

Every backend (simulated, Raspberry Pi, later others) implements these Protocols. The
controller sees only these types. Reads that the control loop makes (pilot levels, PP,
contactor feedback, fault inputs) are synchronous and non-blocking: a backend keeps the latest
filtered sample (the Pi backend polls its ADC on its own schedule). Slow buses (Modbus, PC/SC)
are async so they never stall the loop.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Listener = Callable[[], None]


class DeviceError(Exception):
    """A device failed to answer or answered nonsense; ``kind`` names the fault (e.g. "meter")."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class PilotConstant(enum.Enum):
    """The two non-PWM pilot outputs."""

    PLUS_12V = "+12V"  # state A/x1: EVSE ready but not offering current
    MINUS_12V = "-12V"  # state F: EVSE not available / fault


@dataclass(frozen=True, slots=True)
class PilotLevels:
    """Latest peak-detected control-pilot levels (V), EVSE side.

    ``high_v`` is the positive level (A/B/C/D/E), ``low_v`` the negative half of the PWM
    (≈ -12 V when the EV's diode is present). With a constant +12 V output ``low_v`` equals
    ``high_v``; with -12 V both are ≈ -12.
    """

    high_v: float
    low_v: float


class ControlPilot(Protocol):
    """1 kHz PWM generator and pilot-level sensor."""

    def set_duty(self, duty_percent: float) -> None:
        """Run the 1 kHz PWM at ``duty_percent`` (0 < d < 100)."""

    def set_constant(self, level: PilotConstant) -> None:
        """Stop the PWM and hold a constant level."""

    def read(self) -> PilotLevels:
        """The latest filtered levels; never blocks."""

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` (on the event loop) whenever the levels change."""


class ProximityPilot(Protocol):
    def read_ohms(self) -> float:
        """PP-to-PE resistance; ``math.inf`` when open (no plug or broken coding)."""


class Contactor(Protocol):
    """The mains contactor with an optional mirror (auxiliary) contact."""

    def command(self, closed: bool) -> None:
        """Energise (True) or drop (False) the coil."""

    @property
    def commanded(self) -> bool: ...

    def feedback(self) -> bool | None:
        """Mirror contact: True = main contacts closed; None = no feedback wired."""

    def subscribe(self, listener: Listener) -> None: ...


class FaultInputs(Protocol):
    """Hard-wired fault inputs (RCD / 6 mA DC module, over-temperature)."""

    def active(self) -> frozenset[str]:
        """Names of the inputs now signalling a fault, e.g. ``{"rcd"}``."""

    def subscribe(self, listener: Listener) -> None: ...


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One snapshot of an energy meter. Per-phase tuples hold L1, L2, L3 (None where absent)."""

    voltage_v: tuple[float | None, float | None, float | None]
    current_a: tuple[float | None, float | None, float | None]
    power_w: tuple[float | None, float | None, float | None]
    total_power_w: float
    energy_import_wh: float
    #: Monotonic timestamp of the read, from the backend's clock.
    taken_at: float = 0.0
    #: Meter-signed data (e.g. OCMF) when the meter signs; opaque to the controller.
    signed_data: str | None = None


class EnergyMeter(Protocol):
    async def read(self) -> MeterReading:
        """One reading; raises :class:`DeviceError` ("meter") on failure."""


@runtime_checkable
class SigningMeter(Protocol):
    """A meter that signs its own register (OCMF, German calibration law): a record at a transaction's begin and
    end. The charger asks for them and forwards them untouched; it never builds or alters one."""

    @property
    def public_key_hex(self) -> str: ...

    def sign_begin(self, id_tag: str | None) -> str: ...

    def sign_end(self, *, reason: str = "E") -> str: ...


class Thermometer(Protocol):
    """The charger's own temperature sensor (terminals / enclosure), used to derate the current."""

    def read_c(self) -> float:
        """The latest temperature in °C; never blocks (a backend samples on its own schedule).

        Raises :class:`DeviceError` ("thermometer") when the sensor is lost or reads nonsense.
        """


@dataclass(frozen=True, slots=True)
class CardTap:
    """One presentation of a card: its UID bytes, ISO 14443-3 order (byte 0 first)."""

    uid: bytes
    reader: str = "reader"


class CardReader(Protocol):
    def taps(self) -> AsyncIterator[CardTap]:
        """Endless stream of taps, one per presentation (debounced by the backend).

        Raises :class:`DeviceError` ("reader") when the reader fails; iterate again to resume.
        """


class IndicatorPattern(enum.Enum):
    """What the driver should see; backends map these to LEDs, a buzzer or a display."""

    OFF = "off"
    IDLE = "idle"  # available, waiting for a car
    WAITING = "waiting"  # plugged in or card read, waiting for the other
    RESERVED = "reserved"  # held for one driver
    AUTHORIZED = "authorized"  # short acknowledgement of a good card
    REJECTED = "rejected"  # short signal for a refused card
    CHARGING = "charging"
    SUSPENDED = "suspended"  # session on, no energy flowing
    FINISHING = "finishing"  # session over, unplug
    FAULT = "fault"
    UNAVAILABLE = "unavailable"


class Indicator(Protocol):
    def show(self, pattern: IndicatorPattern) -> None: ...


@runtime_checkable
class Closeable(Protocol):
    async def aclose(self) -> None: ...


@dataclass
class Hardware:
    """One charge point's devices, as the composition root hands them to the controller."""

    pilot: ControlPilot
    proximity: ProximityPilot
    contactor: Contactor
    faults: FaultInputs
    meter: EnergyMeter
    reader: CardReader
    indicator: Indicator
    #: Optional extras a backend offers (e.g. the simulated bench), keyed by name.
    extras: dict[str, object] = field(default_factory=dict)
    #: The site's grid-connection (house) meter, upstream of the charger; None when not installed.
    grid_meter: EnergyMeter | None = None
    #: The charger's temperature sensor for derating; None when not installed.
    thermometer: Thermometer | None = None
