"""Settings from config.toml: typed, validated and frozen, so the rest of the firmware never re-checks them.

The schema is written once, as dataclass fields carrying metadata (see `setting`). The validator, the key
documentation (`iter_keys`) and the masking of secrets all walk those fields; there is no second list of keys.
Every problem becomes one line that starts with its dotted key, and all of them are reported at once.
"""

import datetime
import json
import math
import os
import re
import tomllib
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from difflib import get_close_matches
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
Check = Callable[[Any], str | None]
"""A custom rule: returns what is wrong with an already type-checked value (without the key), or None."""

MASK = "********"
ENV_VAR = "EVSE_CONFIG"
CONFIG_SEARCH_PATHS: tuple[str, ...] = ("config.toml", "/etc/evse/config.toml")


class ConfigError(Exception):
    """Carries every problem at once, so an installer fixes the file in one pass instead of one per run."""

    def __init__(self, errors: Sequence[str], source: str = "<config>") -> None:
        self.errors: list[str] = list(errors)
        self.source = source
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class _Meta:
    unit: str = ""
    doc: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] = ()
    length: tuple[int, int | None] | None = None
    check: Check | None = None
    secret: bool = False


_META_KEY = "evse"


def setting(
    default: T,
    doc: str = "",
    *,
    unit: str = "",
    min: float | None = None,
    max: float | None = None,
    choices: Sequence[Any] = (),
    length: tuple[int, int | None] | None = None,
    check: Check | None = None,
    secret: bool = False,
) -> T:
    """Keeps a key's default, unit, doc and constraints beside its type: the one place the schema lives.

    For a list (``tuple[str, ...]``) the constraints apply to each item.
    """
    meta = _Meta(unit, doc, min, max, tuple(choices), length, check, secret)
    if isinstance(default, Mapping):  # a table: dataclasses refuse a shared mutable default
        frozen = MappingProxyType(dict(default))
        return field(default_factory=lambda: frozen, metadata={_META_KEY: meta})  # type: ignore[return-value]
    return field(default=default, metadata={_META_KEY: meta})


def _meta(f: Field[Any]) -> _Meta:
    meta = f.metadata.get(_META_KEY)
    return meta if isinstance(meta, _Meta) else _Meta()


# ── value rules that need more than a range ──────────────────────────────────────────────────────────────
_CHARGE_POINT_ID = re.compile(r"[A-Za-z0-9._-]+")


def _charge_point_id(value: str) -> str | None:
    if _CHARGE_POINT_ID.fullmatch(value):
        return None
    return f'{_show(value)} may only contain letters, digits, ".", "_" and "-"'


def _ws_url(value: str) -> str | None:
    if not value:
        return None
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port
    except ValueError as exc:
        return f"{_show(value)} is not a valid URL ({exc})"
    if parts.scheme not in ("ws", "wss"):
        return f"{_show(value)} must start with ws:// or wss://"
    if not host:
        return f"{_show(value)} has no host"
    if parts.query or parts.fragment:
        return f"{_show(value)} must not have a query or fragment"
    return None


def _authorization_key(value: str) -> str | None:
    if value and not 16 <= len(value) <= 40:
        return f"must be 16 to 40 characters long (got {len(value)})"
    return None


def _meter_map(value: Mapping[str, Any]) -> str | None:
    if not value:
        return None
    from hal.meters import meter_map

    try:
        meter_map("custom", value)
    except ValueError as exc:
        return f"not a usable register map: {exc}"
    return None


# ── the schema ───────────────────────────────────────────────────────────────────────────────────────────
_BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


@dataclass(frozen=True)
class ChargerSettings:
    """The charge point itself: its identity and what its hardware and wiring are rated for."""

    id: str = setting(
        "CP-0001",
        "the OCPP charge point identity (appended to the CSMS URL); letters, digits, '.', '_' and '-'",
        length=(1, 48),
        check=_charge_point_id,
    )
    max_current_a: float = setting(
        32.0, "the most this charge point may offer: the supply wiring and its breaker", unit="A", min=6, max=80
    )
    phases: int = setting(3, "phases wired to the charge point", choices=(1, 3))
    nominal_voltage_v: float = setting(230.0, "phase-to-neutral voltage", unit="V", min=100, max=480)
    tethered_cable: bool = setting(
        False, "a fixed cable: the proximity pilot is not read and the cable rating is max_current_a"
    )
    ventilation_allowed: bool = setting(False, "allow charging EVs that ask for ventilation (state D)")
    connection_timeout_s: int = setting(
        60, "an authorization without a plugged-in EV expires after this", unit="s", min=5, max=3600
    )


@dataclass(frozen=True)
class HalSettings:
    """Which hardware backend drives the devices."""

    backend: str = setting(
        "auto", "auto = simulated hardware when not on a Raspberry Pi", choices=("auto", "sim", "rpi")
    )
    rated_current_a: float = setting(
        32.0, "what the pilot/relay board and the contactor are rated for (the hardware claim)", unit="A", min=6, max=80
    )


@dataclass(frozen=True)
class RpiSettings:
    """The reference pilot/relay board on a Raspberry Pi (deploy/hardware.md); BCM GPIO numbers, -1 = not wired."""

    pwm_gpio: int = setting(18, "control pilot PWM pin (hardware PWM only)", choices=(12, 13, 18, 19))
    i2c_bus: int = setting(1, "I2C bus of the ADS1115 (/dev/i2c-N)", min=0, max=20)
    adc_address: int = setting(72, "ADS1115 I2C address, 72 to 75 (0x48 to 0x4B)", min=72, max=75)
    relay_pin: int = setting(23, "contactor relay driver output", min=0, max=27)
    feedback_pin: int = setting(24, "contactor mirror contact input; -1 = none", min=-1, max=27)
    watchdog_pin: int = setting(25, "watchdog latch kick output", min=0, max=27)
    watchdog_kick_ms: int = setting(
        100, "kick period while the control loop is healthy (the latch drops after ~0.5 s)", unit="ms", min=20, max=400
    )
    rcd_fault_pin: int = setting(5, "RCD / 6 mA DC module fault input", min=0, max=27)
    rcd_test_pin: int = setting(6, "RCD module test output (self-test before each session); -1 = none", min=-1, max=27)
    led_red_pin: int = setting(16, "status LED red; -1 = none", min=-1, max=27)
    led_green_pin: int = setting(20, "status LED green; -1 = none", min=-1, max=27)
    led_blue_pin: int = setting(21, "status LED blue; -1 = none", min=-1, max=27)
    cp_high_gain: float = setting(8.0, "CP+ peak channel: pilot V = gain x ADC V + offset", min=-100, max=100)
    cp_high_offset: float = setting(-13.2, "CP+ peak channel offset", unit="V", min=-50, max=50)
    cp_low_gain: float = setting(8.0, "CP- peak channel: pilot V = gain x ADC V + offset", min=-100, max=100)
    cp_low_offset: float = setting(-13.2, "CP- peak channel offset", unit="V", min=-50, max=50)
    pp_pullup_ohm: float = setting(1000.0, "PP pull-up resistor", unit="ohm", min=10, max=100000)
    pp_supply_v: float = setting(3.3, "PP pull-up supply", unit="V", min=1, max=12)


@dataclass(frozen=True)
class OcppSettings:
    """The connection to the central system (CSMS)."""

    url: str = setting(
        "",
        "CSMS URL, ws:// or wss://, the charger id is appended to its path; empty = no CSMS",
        check=_ws_url,
    )
    version: str = setting("1.6", "OCPP version", choices=("1.6",))
    security_profile: int = setting(
        0, "0 none, 1 Basic auth, 2 TLS + Basic auth, 3 TLS + client certificate", min=0, max=3
    )
    authorization_key: str = setting(
        "",
        "HTTP Basic password for profiles 1 and 2, 16 to 40 characters",
        secret=True,
        check=_authorization_key,
    )
    ca_file: str = setting("", "CA certificates to verify the CSMS (TLS); empty = the system's")
    client_cert: str = setting("", "client certificate file (PEM), security profile 3")
    client_key: str = setting("", "client private key file (PEM), security profile 3")
    reconnect_min_s: float = setting(
        1.0, "first wait before reconnecting; doubles per failure, with jitter", unit="s", min=0.1, max=600
    )
    reconnect_max_s: float = setting(300.0, "longest wait between reconnect attempts", unit="s", min=1, max=3600)
    call_timeout_s: float = setting(
        30.0, "a CALL unanswered this long means a stale link: the socket is replaced", unit="s", min=1, max=300
    )


@dataclass(frozen=True)
class AuthSettings:
    """Who may charge."""

    mode: str = setting(
        "local",
        "free: every plugged-in EV charges; local: cards in allowlist; ocpp: the CSMS decides",
        choices=("ocpp", "local", "free"),
    )
    allowlist: tuple[str, ...] = setting((), "card UIDs accepted locally, case-insensitive", length=(1, 20))
    free_id_tag: str = setting("FREEVEND", "the idTag recorded for sessions in free mode", length=(1, 20))


@dataclass(frozen=True)
class StoreSettings:
    """Where state that must survive a restart lives."""

    dir: str = setting("/var/lib/evse", "database, queue, ledger and log files", length=(1, None))
    ledger_interval_s: float = setting(
        10.0, "a running session's ledger row is rewritten this often (a power cut loses at most this)", unit="s",
        min=1, max=300,
    )  # fmt: skip


@dataclass(frozen=True)
class ControlSettings:
    """The local API that the evse command talks to."""

    socket: str = setting("/run/evse/control.sock", "the control/status API Unix socket", length=(1, None))


@dataclass(frozen=True)
class MeterSettings:
    """A Modbus energy meter; the class of both [meter] and the optional [grid_meter]."""

    model: str = setting(
        "auto",
        "meter driver; auto = sim on simulated hardware, sdm630 on a Pi; sim-signing = the simulated meter signing "
        "its register as OCMF (a test key made at start)",
        choices=("auto", "sim", "sim-signing", "sdm630", "sdm120", "sdm72", "abb-b23", "em340", "custom"),
    )
    port: str = setting("/dev/ttyUSB0", "RS-485 serial port")
    baudrate: int = setting(9600, "Modbus RTU speed", unit="baud", choices=_BAUDRATES)
    parity: str = setting("N", "Modbus RTU parity: none, even or odd", choices=("N", "E", "O"))
    address: int = setting(1, "Modbus slave address", min=1, max=247)
    custom_map: Mapping[str, Any] = setting(
        {},
        'the register map when model = "custom": the shape of hal/meters/maps/*.toml, as an inline table',
        check=_meter_map,
    )


@dataclass(frozen=True)
class RfidSettings:
    """The card reader, and how a card UID becomes an idTag."""

    reader: str = setting(
        "auto",
        "card reader driver; auto = sim on simulated hardware, pcsc on a Pi; none = no reader",
        choices=("auto", "sim", "pcsc", "pn532", "none"),
    )
    port: str = setting("/dev/serial0", "serial port of a PN532 reader (pn532 only)")
    uid_byte_order: str = setting("forward", "UID byte order in the idTag", choices=("forward", "reverse"))
    uid_case: str = setting("upper", "case of the hex digits in the idTag", choices=("upper", "lower"))


@dataclass(frozen=True)
class ContactorSettings:
    """The contactor's mirror contact, which proves it really opened or closed."""

    feedback: bool = setting(True, "a mirror contact is wired")
    feedback_timeout_ms: int = setting(
        500, "how long the mirror contact may disagree before weld / stuck-open", unit="ms", min=20, max=5000
    )


@dataclass(frozen=True)
class LoggingSettings:
    """Log verbosity and the size-rotated log file in the store dir."""

    level: str = setting("info", "lowest level logged", choices=("debug", "info", "warning", "error"))
    file_max_kb: int = setting(1024, "size at which the log file rotates", unit="KiB", min=16, max=1048576)
    file_count: int = setting(5, "rotated log files kept", min=1, max=100)


@dataclass(frozen=True)
class SiteSettings:
    """Site fuse protection: keep the house's main fuse from tripping, measured by the [grid_meter]."""

    fuse_a: float = setting(
        0.0,
        "the site's main fuse per phase; 0 = no site fuse protection (needs [grid_meter])",
        unit="A",
        min=0,
        max=2000,
    )
    margin_a: float = setting(2.0, "kept free below the fuse", unit="A", min=0, max=100)
    fallback_a: float = setting(
        6.0, "offered while grid meter data is stale: neither stop nor full", unit="A", min=0, max=80
    )
    stale_after_s: float = setting(5.0, "grid data older than this is stale", unit="s", min=1, max=600)
    rise_delay_s: float = setting(
        10.0,
        "more headroom must last this long before the charger takes it; drops apply at once",
        unit="s",
        min=0,
        max=600,
    )
    poll_interval_s: float = setting(1.0, "how often the grid meter is read", unit="s", min=0.2, max=60)


def _mqtt_url(value: str) -> str | None:
    if not value:
        return None
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port
    except ValueError as exc:
        return f"{_show(value)} is not a valid URL ({exc})"
    if parts.scheme != "mqtt":
        return f"{_show(value)} must start with mqtt://"
    if not host:
        return f"{_show(value)} has no host"
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        return f"{_show(value)} must be mqtt://HOST[:PORT] (credentials go in username/password)"
    return None


def _topic_prefix(value: str) -> str | None:
    if any(c in value for c in "+#\x00") or value.startswith("/") or value.endswith("/") or "//" in value:
        return f"{_show(value)} must be a plain MQTT topic prefix: no +, #, leading/trailing or double /"
    return None


@dataclass(frozen=True)
class SharingSettings:
    """Several chargers on one fuse, coordinated over an MQTT broker with no central box."""

    broker: str = setting("", "MQTT broker, mqtt://HOST[:PORT]; empty = no sharing", check=_mqtt_url)
    group: str = setting(
        "evse/site", "topic prefix shared by the chargers on one fuse", length=(1, 100), check=_topic_prefix
    )
    fuse_a: float = setting(32.0, "the fuse the chargers share, per phase", unit="A", min=6, max=2000)
    margin_a: float = setting(1.0, "kept free below the shared fuse", unit="A", min=0, max=100)
    fallback_a: float = setting(
        6.0,
        "per charger while the broker is lost, and for a member gone silent; chargers x fallback must fit the fuse",
        unit="A",
        min=0,
        max=80,
    )
    member_timeout_s: float = setting(
        10.0, "a charger silent this long counts at the fallback current", unit="s", min=2, max=600
    )
    publish_interval_s: float = setting(1.0, "how often each charger reports", unit="s", min=0.2, max=60)
    username: str = setting("", "MQTT user name; empty = anonymous")
    password: str = setting("", "MQTT password", secret=True)


def _zone(value: str) -> str | None:
    if not value:
        return None
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f'{_show(value)} is not a known IANA time zone (e.g. "Europe/Berlin")'
    return None


def _offpeak_window(value: str) -> str | None:
    from firmware.limits.offpeak import parse_window

    try:
        parse_window(value)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class OffpeakSettings:
    """Charge only in cheap hours, unless a driver asks for a boost; OCPP profiles still cap."""

    windows: tuple[str, ...] = setting(
        (),
        'when charging may run, e.g. "Mon-Fri 22:00-06:00", "Sat,Sun 00:00-24:00", "daily 01:00-05:30"; empty = always',
        length=(1, 40),
        check=_offpeak_window,
    )
    timezone: str = setting("", "IANA time zone of the windows; empty = the system's", check=_zone)


@dataclass(frozen=True)
class ThermalSettings:
    """Derating when the charger's temperature sensor reads hot."""

    derate_start_c: float = setting(60.0, "full current below this", unit="°C", min=-40, max=150)
    cutoff_c: float = setting(80.0, "derated linearly down to 6 A at this; pause above it", unit="°C", min=-40, max=150)
    hysteresis_c: float = setting(
        5.0, "after a cutoff, resume only below cutoff_c minus this", unit="°C", min=0, max=50
    )


@dataclass(frozen=True)
class SolarSettings:
    """Charge from the solar surplus seen as export at the [grid_meter]."""

    enabled: bool = setting(False, "charge only from solar surplus (needs [grid_meter]); evse limits solar on|off")
    start_delay_s: float = setting(
        60.0, "surplus must stay at 6 A or more this long before charging starts", unit="s", min=0, max=3600
    )
    stop_delay_s: float = setting(
        300.0,
        "surplus must stay below 6 A this long before charging stops (held at 6 A meanwhile)",
        unit="s",
        min=0,
        max=7200,
    )
    allow_import_w: float = setting(
        0.0, "grid import tolerated while following the surplus", unit="W", min=0, max=50000
    )
    poll_interval_s: float = setting(2.0, "how often the grid meter is read for the surplus", unit="s", min=0.2, max=60)
    stale_after_s: float = setting(10.0, "grid data older than this pauses solar charging", unit="s", min=1, max=600)


def _currency(value: str) -> str | None:
    if re.fullmatch(r"[A-Z]{3}", value):
        return None
    return f'{_show(value)} is not an ISO 4217 code of three capital letters (e.g. "EUR")'


def _price(value: str) -> str | None:
    from firmware.payment.tariff import to_money

    try:
        to_money(value)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _tariff_band(value: str) -> str | None:
    from firmware.payment.tariff import parse_band

    try:
        parse_band(value)
    except ValueError as exc:
        return str(exc)
    return None


_URL_FIELDS = frozenset({"charger_id", "connector_id"})


def _payment_url(value: str) -> str | None:
    if not value:
        return None
    import string

    try:
        fields_used = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        return f"{_show(value)} is not a valid template ({exc})"
    unknown = sorted(fields_used - _URL_FIELDS)
    if unknown:
        return f"unknown placeholder {{{unknown[0]}}}: use {{charger_id}} and {{connector_id}}"
    parts = urlsplit(value.format(charger_id="CP", connector_id=1))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{_show(value)} must be an http:// or https:// URL with a host"
    return None


@dataclass(frozen=True)
class TariffSettings:
    """The local price list: shown to drivers and used for offline estimates; a backend price (California
    Pricing) replaces it when the CSMS sends one. Prices are strings ("0.39"), never TOML floats."""

    currency: str = setting("EUR", "ISO 4217 currency code", check=_currency)
    decimals: int = setting(2, "places a cost is rounded to (half-up, once per session)", min=0, max=4)
    energy_per_kwh: str = setting(
        "0", 'price per kWh of the meter\'s import register, e.g. "0.39"', unit="currency/kWh", check=_price
    )
    time_per_hour: str = setting("0", "price per hour counted as time_basis says", unit="currency/h", check=_price)
    time_basis: str = setting(
        "charging",
        "which hours the time price counts: while energy flows, or the whole session",
        choices=("charging", "connected"),
    )
    session_fee: str = setting("0", "flat fee once per session", unit="currency", check=_price)
    idle_per_hour: str = setting(
        "0",
        "fee per hour plugged in without drawing current after charging, beyond the grace",
        unit="currency/h",
        check=_price,
    )
    idle_grace_min: int = setting(0, "idle minutes before the idle fee runs", unit="min", min=0, max=10080)
    bands: tuple[str, ...] = setting(
        (),
        'time-of-use prices, e.g. "Mon-Fri 07:00-22:00 kwh=0.45 hour=1.20"; bands must not overlap',
        length=(1, 80),
        check=_tariff_band,
    )
    timezone: str = setting("", "IANA time zone of the bands; empty = the system's", check=_zone)


@dataclass(frozen=True)
class PaymentSettings:
    """How a driver without a card pays."""

    adhoc_url: str = setting(
        "",
        "payment page for ad-hoc drivers, shown by evse status and as QR content; "
        "{charger_id} and {connector_id} are filled in; empty = none",
        check=_payment_url,
    )


@dataclass(frozen=True)
class DiagnosticsSettings:
    """Diagnostics bundles (logs, redacted config, session ledger) for the CSMS and technicians."""

    upload_timeout_s: float = setting(
        120.0, "an upload (HTTP(S) or FTP) that takes longer fails", unit="s", min=5, max=3600
    )
    http_method: str = setting("POST", "HTTP(S) uploads: POST as multipart/form-data, or PUT", choices=("POST", "PUT"))
    max_log_kib: int = setting(
        4096, "logs in a bundle are cut to their newest part beyond this", unit="KiB", min=64, max=65536
    )


@dataclass(frozen=True)
class UpdateSettings:
    """Firmware updates from the CSMS: A/B slots with rollback."""

    dir: str = setting("", "where firmware slots and downloads live; empty = firmware/ in [store] dir")
    confirm_timeout_s: float = setting(
        300.0,
        "a new firmware must reach BootNotification Accepted within this, or the previous one comes back",
        unit="s",
        min=30,
        max=3600,
    )
    manufacturer_root_ca: str = setting(
        "", "PEM file with the root certificate(s) firmware signing certificates must chain to"
    )
    require_signature: bool = setting(
        True, "plain UpdateFirmware packages must be signed too (false: sha256 only, for a lab)"
    )


@dataclass(frozen=True)
class SimSettings:
    """The simulated EV and cable, used when the hardware is simulated."""

    ev_battery_kwh: float = setting(60.0, "battery capacity of the simulated EV", unit="kWh", min=1, max=250)
    ev_soc_percent: float = setting(40.0, "its state of charge when plugged in", unit="%", min=0, max=100)
    ev_max_current_a: float = setting(32.0, "the most current it draws per phase", unit="A", min=6, max=80)
    ev_phases: int = setting(3, "phases it charges on", choices=(1, 3))
    cable_a: float = setting(
        32.0, "rating of the simulated socket cable (PP coding)", unit="A", choices=(13, 20, 32, 63)
    )


@dataclass(frozen=True)
class Settings:
    """The whole configuration; a section missing from the file takes its defaults (grid_meter: None)."""

    charger: ChargerSettings = field(default_factory=ChargerSettings)
    hal: HalSettings = field(default_factory=HalSettings)
    rpi: RpiSettings = field(default_factory=RpiSettings)
    ocpp: OcppSettings = field(default_factory=OcppSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    meter: MeterSettings = field(default_factory=MeterSettings)
    grid_meter: MeterSettings | None = None
    rfid: RfidSettings = field(default_factory=RfidSettings)
    contactor: ContactorSettings = field(default_factory=ContactorSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    site: SiteSettings = field(default_factory=SiteSettings)
    sharing: SharingSettings = field(default_factory=SharingSettings)
    offpeak: OffpeakSettings = field(default_factory=OffpeakSettings)
    thermal: ThermalSettings = field(default_factory=ThermalSettings)
    solar: SolarSettings = field(default_factory=SolarSettings)
    tariff: TariffSettings = field(default_factory=TariffSettings)
    payment: PaymentSettings = field(default_factory=PaymentSettings)
    diagnostics: DiagnosticsSettings = field(default_factory=DiagnosticsSettings)
    update: UpdateSettings = field(default_factory=UpdateSettings)
    sim: SimSettings = field(default_factory=SimSettings)


# ── the generic validator ────────────────────────────────────────────────────────────────────────────────
_BAD: Any = object()
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_STR_LIST = tuple[str, ...]
_TABLE = Mapping[str, Any]
_EXPECTED: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    _STR_LIST: "a list of strings",
    _TABLE: "a table",
}


def _sections() -> Iterator[tuple[str, type[Any], bool]]:
    """(name, settings class, optional) for each section, read from the Settings annotations."""
    hints = typing.get_type_hints(Settings)
    for f in fields(Settings):
        classes = [t for t in typing.get_args(hints[f.name]) if t is not type(None)]
        yield f.name, (classes[0] if classes else hints[f.name]), bool(classes)


def _show(value: Any) -> str:
    """A value as it would be written in TOML, short enough for one error line."""
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...", ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else "a very large integer"
    return str(value)


def _describe(value: Any, secret: bool = False) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(type(value))
    if kind is not None:
        return kind if secret else f"{kind} ({_show(value)})"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return "a date/time"
    return f"a {type(value).__name__}"


def _is_a(tp: Any, value: Any) -> bool:
    if isinstance(value, bool):
        return tp is bool  # TOML booleans are Python ints; never take one for a number
    if tp is float:
        return isinstance(value, int | float)
    return isinstance(value, tp)


def _problem(tp: Any, meta: _Meta, value: Any) -> str | None:
    """What is wrong with one scalar value, without the key."""
    if not _is_a(tp, value):
        return f"expected {_EXPECTED[tp]}, got {_describe(value, meta.secret)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {_show(value)}"
    if meta.choices and value not in meta.choices:
        return f"{_show(value)} is not one of {', '.join(_show(c) for c in meta.choices)}"
    if meta.min is not None and value < meta.min:
        return f"{_show(value)} is below the minimum {_show(meta.min)}"
    if meta.max is not None and value > meta.max:
        return f"{_show(value)} is above the maximum {_show(meta.max)}"
    if meta.length is not None:
        low, high = meta.length
        if low > 0 and not value:
            return "must not be empty"
        if len(value) < low or (high is not None and len(value) > high):
            shown = "" if meta.secret else f"{_show(value)} "
            span = f"at least {low}" if high is None else f"{low} to {high}"
            return f"{shown}must be {span} characters long (got {len(value)})"
    return meta.check(value) if meta.check is not None else None


def _value(key: str, tp: Any, meta: _Meta, raw: Any, errors: list[str]) -> Any:
    """The typed value of one key, or _BAD after adding its error line(s)."""
    if tp == _STR_LIST:
        if not isinstance(raw, list | tuple):
            errors.append(f"{key}: expected {_EXPECTED[tp]}, got {_describe(raw, meta.secret)}")
            return _BAD
        items = [_value(f"{key}[{i}]", str, meta, item, errors) for i, item in enumerate(raw)]
        return _BAD if any(item is _BAD for item in items) else tuple(items)
    if tp == _TABLE:
        if not isinstance(raw, Mapping):
            errors.append(f"{key}: expected {_EXPECTED[tp]}, got {_describe(raw, meta.secret)}")
            return _BAD
        problem = meta.check(raw) if meta.check is not None else None
        if problem is not None:
            errors.append(f"{key}: {problem}")
            return _BAD
        return MappingProxyType(dict(raw))
    problem = _problem(tp, meta, raw)
    if problem is not None:
        errors.append(f"{key}: {problem}")
        return _BAD
    return float(raw) if tp is float else raw


def _unknown(prefix: str, name: Any, known: Iterable[str], what: str) -> str:
    """An unknown name, quoted as TOML would need it, with the likely intended one."""
    shown = name if isinstance(name, str) and _BARE_KEY.fullmatch(name) else json.dumps(str(name))
    close = get_close_matches(str(name), list(known), n=1)
    return f"{prefix}{shown}: unknown {what}" + (f" (did you mean {close[0]}?)" if close else "")


def _section(name: str, cls: type[Any], raw: Any, errors: list[str], bad: set[str]) -> Any:
    schema = fields(cls)
    if not isinstance(raw, Mapping):
        errors.append(f"{name}: expected a table")
        bad.update(f"{name}.{f.name}" for f in schema)
        return cls()
    names = [f.name for f in schema]
    errors.extend(_unknown(f"{name}.", k, names, "key") for k in raw if k not in names)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in schema:
        if f.name in raw:
            value = _value(f"{name}.{f.name}", hints[f.name], _meta(f), raw[f.name], errors)
            if value is _BAD:
                bad.add(f"{name}.{f.name}")
            else:
                values[f.name] = value
    return cls(**values)


def _cross_checks(s: Settings, bad: set[str]) -> Iterator[str]:
    """Rules that tie keys together; each is skipped when one of its keys already failed, to avoid noise."""

    def valid(*keys: str) -> bool:
        return bad.isdisjoint(keys)

    # A key that failed keeps its default, so only the keys whose default would trigger a rule need a guard.
    ocpp, profile = s.ocpp, s.ocpp.security_profile
    if profile in (1, 2) and not ocpp.authorization_key and valid("ocpp.authorization_key"):
        yield f"ocpp.authorization_key: security profile {profile} needs a key of 16 to 40 characters"
    if profile in (2, 3) and not ocpp.url.lower().startswith("wss://") and valid("ocpp.url"):
        yield f"ocpp.url: security profile {profile} needs a wss:// url"
    if profile == 3 and not ocpp.client_cert and valid("ocpp.client_cert"):
        yield "ocpp.client_cert: security profile 3 needs a client certificate file"
    if profile == 3 and not ocpp.client_key and valid("ocpp.client_key"):
        yield "ocpp.client_key: security profile 3 needs a client key file"
    if s.tariff.bands and valid("tariff.bands"):
        from firmware.payment.tariff import check_bands, parse_band

        try:
            check_bands([parse_band(b) for b in s.tariff.bands])
        except ValueError as exc:
            yield f"tariff.bands: {exc}"
    if s.auth.mode == "ocpp" and not ocpp.url and valid("ocpp.url"):
        yield 'auth.mode: "ocpp" needs a CSMS url in ocpp.url'
    for name, meter in (("meter", s.meter), ("grid_meter", s.grid_meter)):
        if meter is None:
            continue
        if meter.model == "custom" and not meter.custom_map and valid(f"{name}.custom_map"):
            yield f'{name}.custom_map: model "custom" needs its register map here'
        elif meter.model != "custom" and meter.custom_map and valid(f"{name}.model"):
            yield f'{name}.custom_map: only used with model = "custom" (model is {_show(meter.model)})'
    if s.site.fuse_a > 0 and s.grid_meter is None and valid("site.fuse_a"):
        yield "site.fuse_a: site fuse protection needs a [grid_meter] section"
    if 0 < s.site.fuse_a <= s.site.margin_a and valid("site.fuse_a", "site.margin_a"):
        yield f"site.margin_a: {_show(s.site.margin_a)} leaves nothing of the {_show(s.site.fuse_a)} A fuse"
    if s.solar.enabled and s.grid_meter is None and valid("solar.enabled"):
        yield "solar.enabled: solar surplus charging needs a [grid_meter] section"
    share = s.sharing
    if share.fallback_a > share.fuse_a - share.margin_a and valid("sharing.fallback_a", "sharing.fuse_a"):
        yield f"sharing.fallback_a: {_show(share.fallback_a)} A does not fit the shared fuse minus its margin"
    elif 0 < share.fallback_a < 6 and valid("sharing.fallback_a"):
        yield f"sharing.fallback_a: {_show(share.fallback_a)} A is below the 6 A minimum; use 0 (pause) or 6 or more"
    need = 3 * share.publish_interval_s + SHARING_RELEASE_S
    if share.member_timeout_s < need and valid("sharing.member_timeout_s", "sharing.publish_interval_s"):
        yield (
            f"sharing.member_timeout_s: must be at least 3 x publish_interval_s + {SHARING_RELEASE_S:g} s = {need:g} s"
            " (time to notice a charger is gone and let its EV follow)"
        )
    if s.thermal.cutoff_c <= s.thermal.derate_start_c and valid("thermal.cutoff_c", "thermal.derate_start_c"):
        yield "thermal.cutoff_c: must be above thermal.derate_start_c"


#: How long an EV may take to follow a lower offer (IEC 61851-1: 5 s); sharing's member timeout builds on it.
SHARING_RELEASE_S = 5.0


# ── public API ───────────────────────────────────────────────────────────────────────────────────────────
def parse_settings(data: Mapping[str, Any], source: str = "<config>") -> Settings:
    """Validates an already-parsed document, so tests and tools need no file; raises ConfigError."""
    errors: list[str] = []
    bad: set[str] = set()
    sections = {name: (cls, optional) for name, cls, optional in _sections()}
    errors.extend(_unknown("", name, sections, "section") for name in data if name not in sections)
    built: dict[str, Any] = {}
    for name, (cls, optional) in sections.items():
        if name in data:
            built[name] = _section(name, cls, data[name], errors, bad)
        elif optional:
            built[name] = None
    settings = Settings(**built)
    errors.extend(_cross_checks(settings, bad))
    if errors:
        raise ConfigError(errors, source)
    return settings


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Reads and validates a config file; file problems are reported as ConfigError lines too."""
    shown = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"config: {shown}: file not found"], shown) from None
    except OSError as exc:
        raise ConfigError([f"config: {shown}: cannot read ({exc.strerror or exc})"], shown) from None
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"config: {shown}: invalid TOML: not UTF-8 (at byte {exc.start})"], shown) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config: {shown}: invalid TOML: {exc}"], shown) from None
    return parse_settings(data, shown)


def default_settings() -> Settings:
    """What runs with no config file at all (e.g. `evse demo`)."""
    return Settings()


def find_config(explicit: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The file to load: --config, then $EVSE_CONFIG, then CONFIG_SEARCH_PATHS; None if none exists.

    A path the user named (--config or $EVSE_CONFIG) is returned even when missing, so the caller reports it
    rather than silently running with another file.
    """
    if explicit:
        return Path(explicit)
    named = (os.environ if env is None else env).get(ENV_VAR)
    if named:
        return Path(named)
    for candidate in CONFIG_SEARCH_PATHS:
        if Path(candidate).is_file():
            return Path(candidate).absolute()
    return None


def iter_keys() -> Iterator[tuple[str, str, Any, str, str]]:
    """(section, key, default, unit, doc) for every key, to document the file and check config.toml."""
    for name, cls, _ in _sections():
        for f in fields(cls):
            meta = _meta(f)
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            yield name, f.name, default, meta.unit, meta.doc


def masked(settings: Settings) -> dict[str, dict[str, Any]]:
    """Settings as plain dicts safe to print or log: non-empty secrets become "********"."""
    out: dict[str, dict[str, Any]] = {}
    for name, _, _ in _sections():
        section = getattr(settings, name)
        if section is None:
            continue
        out[name] = {}
        for f in fields(section):
            value = getattr(section, f.name)
            if _meta(f).secret and value:
                value = MASK
            if isinstance(value, Mapping):
                value = json.loads(json.dumps(value, default=dict))  # plain nested dicts, e.g. for config show
            out[name][f.name] = list(value) if isinstance(value, tuple) else value
    return out
