"""The charge point's OCPP 1.6 configuration keys (1.6 chapter 9, security whitepaper ed. 2).

The keys are data (:data:`KEYS`, one :class:`KeySpec` each); :class:`Configuration` holds their current values,
validates ChangeConfiguration values, persists accepted changes through a :class:`KeyStorage` and answers
GetConfiguration. Pure: no I/O besides the injected storage.

Value precedence at start: spec default < installer ``overrides`` < value persisted by an earlier accepted
ChangeConfiguration. Overrides are never written to storage. A persisted value that no longer validates (a key
that became read-only, a measurand the meter lost, a narrower range) is ignored with a warning.

Key names are CiString50 in OCPP 1.6, so look-ups are case-insensitive; answers use the canonical spelling.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal, Protocol

log = logging.getLogger("firmware.ocpp.configuration")

Kind = Literal["int", "bool", "str", "csl"]
Profile = Literal[
    "Core",
    "LocalAuthListManagement",
    "Reservation",
    "SmartCharging",
    "RemoteTrigger",
    "FirmwareManagement",
    "Security",
    "CostAndPrice",
]
ChangeStatus = Literal["Accepted", "Rejected", "RebootRequired", "NotSupported"]
#: A typed value: int for "int", bool for "bool", str for "str", list[str] for "csl".
Value = int | bool | str | list[str]
Listener = Callable[[str, object], None]

#: ChangeConfiguration.req key is CiString50, value CiString500 (1.6 §6.9).
KEY_MAX_LENGTH: Final = 50
VALUE_MAX_LENGTH: Final = 500
INT32_MAX: Final = 2_147_483_647

#: The OCPP 1.6 Measurand enumeration (1.6 §7.31).
MEASURANDS: Final = frozenset(
    {
        "Current.Export",
        "Current.Import",
        "Current.Offered",
        "Energy.Active.Export.Register",
        "Energy.Active.Import.Register",
        "Energy.Reactive.Export.Register",
        "Energy.Reactive.Import.Register",
        "Energy.Active.Export.Interval",
        "Energy.Active.Import.Interval",
        "Energy.Reactive.Export.Interval",
        "Energy.Reactive.Import.Interval",
        "Frequency",
        "Power.Active.Export",
        "Power.Active.Import",
        "Power.Factor",
        "Power.Offered",
        "Power.Reactive.Export",
        "Power.Reactive.Import",
        "RPM",
        "SoC",
        "Temperature",
        "Voltage",
    }
)
#: What the charger's meter provides by default (same set as ``meter_values.SUPPORTED_MEASURANDS``).
DEFAULT_MEASURANDS: Final = frozenset(
    {"Energy.Active.Import.Register", "Power.Active.Import", "Current.Import", "Voltage", "Current.Offered"}
)
FEATURE_PROFILES: Final = frozenset(
    {"Core", "FirmwareManagement", "LocalAuthListManagement", "Reservation", "SmartCharging", "RemoteTrigger"}
)
PHASE_ROTATIONS: Final = frozenset({"NotApplicable", "Unknown", "RST", "RTS", "SRT", "STR", "TRS", "TSR"})
_PHASE_SUFFIX = re.compile(r"\.(L1|L2|L3|N|L1-N|L2-N|L3-N|L1-L2|L2-L3|L3-L1)$", re.IGNORECASE)
_INT = re.compile(r"-?[0-9]+", re.ASCII)
_SECRET_MASK: Final = "********"


class InvalidValue(ValueError):
    """A value a key does not accept; the message says why (logged, never sent to the CSMS)."""


@dataclass(frozen=True)
class ValidationContext:
    """What a validator may look at besides the value itself."""

    key: str
    #: The key's current raw value; None while the configuration is being built.
    current: str | None
    supported_measurands: frozenset[str]
    #: Current raw value of another key (None if unknown or not yet set).
    lookup: Callable[[str], str | None]


#: Checks a parsed value; returns it (possibly canonicalised) or raises :class:`InvalidValue`.
Validator = Callable[[Value, ValidationContext], Value]


@dataclass(frozen=True)
class IntRange:
    lo: int
    hi: int

    def __call__(self, value: Value, ctx: ValidationContext) -> Value:
        assert isinstance(value, int)
        if not self.lo <= value <= self.hi:
            raise InvalidValue(f"{value} is outside {self.lo}..{self.hi}")
        return value


@dataclass(frozen=True)
class AllOf:
    validators: tuple[Validator, ...]

    def __call__(self, value: Value, ctx: ValidationContext) -> Value:
        for validator in self.validators:
            value = validator(value, ctx)
        return value


@dataclass(frozen=True)
class Members:
    """A CSL whose items come from ``allowed`` (matched case-insensitively, returned canonically)."""

    allowed: frozenset[str]

    def __call__(self, value: Value, ctx: ValidationContext) -> Value:
        assert isinstance(value, list)
        canonical = {a.lower(): a for a in self.allowed}
        out: list[str] = []
        for item in value:
            if item.lower() not in canonical:
                raise InvalidValue(f"{item!r} is not one of {', '.join(sorted(self.allowed))}")
            out.append(canonical[item.lower()])
        return out


@dataclass(frozen=True)
class Measurands:
    """A measurand CSL: OCPP Measurand values the meter can provide; no phase suffix (1.6 §3.16.4)."""

    def __call__(self, value: Value, ctx: ValidationContext) -> Value:
        assert isinstance(value, list)
        canonical = {m.lower(): m for m in MEASURANDS}
        out: list[str] = []
        for item in value:
            name = canonical.get(item.lower())
            if name is None:
                if _PHASE_SUFFIX.search(item) and _PHASE_SUFFIX.sub("", item).lower() in canonical:
                    raise InvalidValue(f"{item!r}: no phase suffix in the key, phases are reported automatically")
                raise InvalidValue(f"{item!r} is not an OCPP 1.6 measurand")
            if name not in ctx.supported_measurands:
                raise InvalidValue(f"{name} is not provided by this charger's meter")
            out.append(name)
        return out


@dataclass(frozen=True)
class PhaseRotation:
    """ConnectorPhaseRotation items ``<connectorId>.<rotation>``, connector 0..NumberOfConnectors (1.6 §9.1.7)."""

    def __call__(self, value: Value, ctx: ValidationContext) -> Value:
        assert isinstance(value, list)
        connectors_raw = ctx.lookup("NumberOfConnectors")
        connectors = int(connectors_raw) if connectors_raw is not None and _INT.fullmatch(connectors_raw) else 1
        rotations = {r.lower(): r for r in PHASE_ROTATIONS}
        out: list[str] = []
        seen: set[int] = set()
        for item in value:
            cid, dot, rotation = item.partition(".")
            if not dot or not _INT.fullmatch(cid) or rotation.lower() not in rotations:
                raise InvalidValue(f"{item!r} is not <connectorId>.<{'|'.join(sorted(PHASE_ROTATIONS))}>")
            n = int(cid)
            if not 0 <= n <= connectors:
                raise InvalidValue(f"{item!r}: connector {n} does not exist (0..{connectors})")
            if n in seen:
                raise InvalidValue(f"{item!r}: connector {n} listed twice")
            seen.add(n)
            out.append(f"{n}.{rotations[rotation.lower()]}")
        return out


@dataclass(frozen=True)
class Printable:
    """A string of printable characters only (no control characters, no line breaks)."""

    def __call__(self, value: Value, ctx: ValidationContext) -> Value:
        assert isinstance(value, str)
        if not value.isprintable():
            raise InvalidValue("contains non-printable characters")
        return value


@dataclass(frozen=True)
class AuthorizationKeyFormat:
    """Security whitepaper: 16..20 bytes, sent as up to 40 characters (hex). Empty (no key) only as the
    default or installer value; a CSMS cannot remove the key."""

    def __call__(self, value: Value, ctx: ValidationContext) -> Value:
        assert isinstance(value, str)
        if not value and ctx.current is None:
            return value
        if not 16 <= len(value) <= 40:
            raise InvalidValue(f"must be 16 to 40 characters long (got {len(value)})")
        if not value.isprintable():
            raise InvalidValue("contains non-printable characters")
        return value


#: Highest cost or price a DefaultPrice may state (the bound California Pricing messages have, see costmsg).
PRICE_MAX: Final = Decimal(1_000_000_000)
#: NumberOfDecimalsForCostValues range (libocpp's default is 3).
COST_DECIMALS_MAX: Final = 6


def _no_constant(name: str) -> object:
    raise InvalidValue(f"{name} is not a JSON number")


def _json_object(raw: str) -> dict[str, Any]:
    """A JSON text holding one object; numbers are read as exact Decimals."""
    try:
        value = json.loads(raw, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidValue(f"not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(value, dict):
        raise InvalidValue("must be a JSON object")
    return value


def _text_field(obj: dict[str, Any], key: str, *, required: bool = False) -> None:
    if key not in obj:
        if required:
            raise InvalidValue(f"{key} is missing")
        return
    value = obj[key]
    if not isinstance(value, str):
        raise InvalidValue(f"{key} must be a string")
    if not value.isprintable():
        raise InvalidValue(f"{key} contains non-printable characters")


@dataclass(frozen=True)
class DefaultPriceFormat:
    """California Pricing DefaultPrice: ``{"priceText", "priceTextOffline", "chargingPrice": {"kWhPrice",
    "hourPrice", "flatFee"}}``, each optional but at least one present; amounts 0..10^9. Empty = no default
    price. Keys we do not know are ignored (later whitepaper additions); null is not a value."""

    def __call__(self, value: Value, ctx: ValidationContext) -> Value:
        assert isinstance(value, str)
        if not value:
            return value
        obj = _json_object(value)
        if not {"priceText", "priceTextOffline", "chargingPrice"} & obj.keys():
            raise InvalidValue("needs priceText, priceTextOffline or chargingPrice")
        _text_field(obj, "priceText")
        _text_field(obj, "priceTextOffline")
        if "chargingPrice" in obj:
            prices = obj["chargingPrice"]
            if not isinstance(prices, dict):
                raise InvalidValue("chargingPrice must be a JSON object")
            for key in ("kWhPrice", "hourPrice", "flatFee"):
                if key not in prices:
                    continue
                amount = prices[key]
                if isinstance(amount, bool) or not isinstance(amount, int | Decimal):
                    raise InvalidValue(f"chargingPrice.{key} must be a number")
                if not 0 <= amount <= PRICE_MAX:
                    raise InvalidValue(f"chargingPrice.{key} must be between 0 and {PRICE_MAX}")
        return value


@dataclass(frozen=True)
class DefaultPriceTextFormat:
    """California Pricing DefaultPriceText in the charger's one language: ``{"priceText", "priceTextOffline"?}``
    (libocpp's per-language value). Empty = none."""

    def __call__(self, value: Value, ctx: ValidationContext) -> Value:
        assert isinstance(value, str)
        if not value:
            return value
        obj = _json_object(value)
        _text_field(obj, "priceText", required=True)
        _text_field(obj, "priceTextOffline")
        return value


@dataclass(frozen=True)
class KeySpec:
    """One configuration key. ``default`` is the string OCPP reports; ``max_length`` counts characters for
    "str" and items for "csl"."""

    name: str
    kind: Kind
    readonly: bool
    default: str
    profile: Profile = "Core"
    unit: str = ""
    doc: str = ""
    reboot_required: bool = False
    validator: Validator | None = None
    max_length: int | None = None
    #: Write-only: GetConfiguration lists the key without its value; describe() masks it.
    secret: bool = False


def _int(
    name: str,
    default: int,
    lo: int,
    hi: int,
    *,
    readonly: bool = False,
    unit: str = "",
    doc: str = "",
    profile: Profile = "Core",
) -> KeySpec:
    return KeySpec(name, "int", readonly, str(default), profile, unit, doc, validator=IntRange(lo, hi))


def _ro_int(name: str, default: int, *, unit: str = "", doc: str = "", profile: Profile = "Core") -> KeySpec:
    return _int(name, default, 0, INT32_MAX, readonly=True, unit=unit, doc=doc, profile=profile)


def _bool(name: str, default: bool, *, readonly: bool = False, doc: str = "", profile: Profile = "Core") -> KeySpec:
    return KeySpec(name, "bool", readonly, "true" if default else "false", profile, doc=doc)


#: SmartCharging limits (read-only keys of the same names).
SMART_MAX_STACK_LEVEL: Final = 8
SMART_MAX_PERIODS: Final = 96
SMART_MAX_PROFILES: Final = 16
#: Items a measurand CSL may hold (reported in the matching ...MaxLength key).
MEASURAND_LIST_MAX: Final = 10
_DAY: Final = 86_400


def _measurand_keys(name: str, default: str, doc: str) -> tuple[KeySpec, KeySpec]:
    return (
        KeySpec(name, "csl", False, default, doc=doc, validator=Measurands(), max_length=MEASURAND_LIST_MAX),
        _ro_int(f"{name}MaxLength", MEASURAND_LIST_MAX, doc=f"maximum number of items in {name}"),
    )


KEYS: Final[tuple[KeySpec, ...]] = (
    # ── Core (1.6 §9.1) ──────────────────────────────────────────────────────────────────────────────────
    _bool("AllowOfflineTxForUnknownId", False, doc="start a transaction offline for an idTag not known locally"),
    _bool("AuthorizationCacheEnabled", True, doc="the authorization cache is used"),
    _bool("AuthorizeRemoteTxRequests", False, doc="authorize RemoteStartTransaction idTags before starting"),
    _int("ClockAlignedDataInterval", 0, 0, _DAY, unit="s", doc="clock-aligned meter value interval; 0 = off"),
    _int("ConnectionTimeOut", 60, 1, 3600, unit="s", doc="Preparing -> Available when no EV is plugged in within"),
    KeySpec(
        "ConnectorPhaseRotation",
        "csl",
        False,
        "0.RST,1.RST",
        doc="phase rotation per connector",
        validator=PhaseRotation(),
        max_length=10,
    ),
    _ro_int("ConnectorPhaseRotationMaxLength", 10, doc="maximum number of items in ConnectorPhaseRotation"),
    _ro_int("GetConfigurationMaxKeys", 50, doc="maximum number of keys in one GetConfiguration.req"),
    _int("HeartbeatInterval", 300, 1, _DAY, unit="s", doc="inactivity after which a Heartbeat is sent"),
    _bool("LocalAuthorizeOffline", True, doc="start transactions offline for locally authorized idTags"),
    _bool("LocalPreAuthorize", False, doc="start online for locally authorized idTags without Authorize.conf"),
    _int("MaxEnergyOnInvalidId", 0, 0, INT32_MAX, unit="Wh", doc="energy allowed after an idTag turns invalid"),
    *_measurand_keys("MeterValuesAlignedData", "Energy.Active.Import.Register", "clock-aligned measurands"),
    *_measurand_keys("MeterValuesSampledData", "Energy.Active.Import.Register", "sampled measurands"),
    _int("MeterValueSampleInterval", 60, 0, _DAY, unit="s", doc="sampled meter value interval; 0 = off"),
    _int(
        "MinimumStatusDuration",
        0,
        0,
        3600,
        readonly=True,
        unit="s",
        doc="statuses are sent at once; changing it over OCPP is not implemented",
    ),
    _ro_int("NumberOfConnectors", 1, doc="physical connectors of this charge point"),
    _int("ResetRetries", 3, 0, 10, unit="times", doc="reset attempts when a reset fails"),
    _bool(
        "StopTransactionOnEVSideDisconnect",
        True,
        readonly=True,
        doc="a transaction always ends when the EV unplugs (libocpp also reports it read-only)",
    ),
    _bool("StopTransactionOnInvalidId", True, doc="stop when StartTransaction.conf is not Accepted"),
    *_measurand_keys("StopTxnAlignedData", "", "clock-aligned measurands in StopTransaction.req"),
    *_measurand_keys(
        "StopTxnSampledData", "Energy.Active.Import.Register", "Transaction.Begin/End measurands in StopTransaction.req"
    ),
    KeySpec(
        "SupportedFeatureProfiles",
        "csl",
        True,
        "Core,FirmwareManagement,LocalAuthListManagement,Reservation,SmartCharging,RemoteTrigger",
        doc="feature profiles this charge point supports",
        validator=Members(FEATURE_PROFILES),
        max_length=len(FEATURE_PROFILES),
    ),
    _ro_int(
        "SupportedFeatureProfilesMaxLength", len(FEATURE_PROFILES), doc="maximum items in SupportedFeatureProfiles"
    ),
    _int("TransactionMessageAttempts", 3, 0, 100, unit="times", doc="tries for a transaction message"),
    _int("TransactionMessageRetryInterval", 60, 0, _DAY, unit="s", doc="wait x n before the n-th retransmission"),
    _bool(
        "UnlockConnectorOnEVSideDisconnect",
        True,
        readonly=True,
        doc="there is no lock actuator: the connector is never locked",
    ),
    _int("WebSocketPingInterval", 60, 0, _DAY, unit="s", doc="WebSocket ping interval; 0 = off; next connection"),
    # ── LocalAuthListManagement (1.6 §9.2) ──────────────────────────────────────────────────────────────
    _bool("LocalAuthListEnabled", True, doc="the local authorization list is used", profile="LocalAuthListManagement"),
    _ro_int("LocalAuthListMaxLength", 1000, doc="idTags the local list can hold", profile="LocalAuthListManagement"),
    _ro_int("SendLocalListMaxLength", 100, doc="idTags in one SendLocalList.req", profile="LocalAuthListManagement"),
    # ── Reservation (1.6 §9.3) ──────────────────────────────────────────────────────────────────────────
    _bool(
        "ReserveConnectorZeroSupported", False, readonly=True, doc="connector 0 can be reserved", profile="Reservation"
    ),
    # ── SmartCharging (1.6 §9.4) ────────────────────────────────────────────────────────────────────────
    # Sized for a Pi Zero 2 W: a GetCompositeSchedule over every installed profile at the period maximum stays
    # well inside the CSMS's call timeout (see firmware/ocpp/v16/smart_charging.py).
    _ro_int(
        "ChargeProfileMaxStackLevel", SMART_MAX_STACK_LEVEL, doc="highest stackLevel accepted", profile="SmartCharging"
    ),
    KeySpec(
        "ChargingScheduleAllowedChargingRateUnit",
        "csl",
        True,
        "Current,Power",
        "SmartCharging",
        doc="chargingRateUnit values accepted in a charging schedule (A and W)",
        validator=Members(frozenset({"Current", "Power"})),
        max_length=2,
    ),
    _ro_int(
        "ChargingScheduleMaxPeriods",
        SMART_MAX_PERIODS,
        doc="chargingSchedulePeriod entries accepted in one schedule",
        profile="SmartCharging",
    ),
    _ro_int(
        "MaxChargingProfilesInstalled",
        SMART_MAX_PROFILES,
        doc="charging profiles the charge point keeps at one time",
        profile="SmartCharging",
    ),
    # ── Security whitepaper ed. 2 ───────────────────────────────────────────────────────────────────────
    KeySpec(
        "SecurityProfile",
        "int",
        True,
        "0",
        "Security",
        doc="0 none, 1 Basic auth, 2 +TLS, 3 TLS client cert; set by the installer in config.toml [ocpp]",
        validator=IntRange(0, 3),
    ),
    KeySpec(
        "AuthorizationKey",
        "str",
        False,
        "",
        "Security",
        doc="HTTP Basic password; write-only; used from the next connection",
        validator=AuthorizationKeyFormat(),
        max_length=40,
        secret=True,
    ),
    KeySpec(
        "CpoName",
        "str",
        False,
        "",
        "Security",
        doc="CPO name as in the charge point certificate (O=)",
        validator=Printable(),
        max_length=VALUE_MAX_LENGTH,
    ),
    # ── California Pricing (OCA whitepaper, 1.6 via DataTransfer org.openchargealliance.costmsg) ─────────
    _bool(
        "CustomDisplayCostAndPrice",
        True,
        readonly=True,
        doc="the backend's SetUserPrice / RunningCost / FinalCost are accepted and shown",
        profile="CostAndPrice",
    ),
    KeySpec(
        "DefaultPrice",
        "str",
        False,
        "",
        "CostAndPrice",
        doc='JSON {"priceText", "priceTextOffline", "chargingPrice": {"kWhPrice", "hourPrice", "flatFee"}}',
        validator=DefaultPriceFormat(),
        max_length=VALUE_MAX_LENGTH,
    ),
    KeySpec(
        "DefaultPriceText",
        "str",
        False,
        "",
        "CostAndPrice",
        doc='JSON {"priceText", "priceTextOffline"} in the charger\'s language',
        validator=DefaultPriceTextFormat(),
        max_length=VALUE_MAX_LENGTH,
    ),
    _int(
        "NumberOfDecimalsForCostValues",
        3,
        0,
        COST_DECIMALS_MAX,
        doc="decimals the backend's costs are shown with",
        profile="CostAndPrice",
    ),
    _bool(
        "CustomIdleFeeAfterStop",
        False,
        readonly=True,
        doc="the transaction ends at the stop; it is not extended for an idle fee",
        profile="CostAndPrice",
    ),
    _bool(
        "CustomMultiLanguageMessages",
        False,
        readonly=True,
        doc="price texts in one language only",
        profile="CostAndPrice",
    ),
)


class KeyStorage(Protocol):
    """Where accepted ChangeConfiguration values live across restarts (raw OCPP strings)."""

    def load(self) -> dict[str, str]: ...

    def save(self, key: str, value: str) -> None: ...


class MemoryKeyStorage:
    """A :class:`KeyStorage` in a dict (tests, simulation)."""

    def __init__(self, initial: Mapping[str, str] | None = None) -> None:
        self.values: dict[str, str] = dict(initial or {})

    def load(self) -> dict[str, str]:
        return dict(self.values)

    def save(self, key: str, value: str) -> None:
        self.values[key] = value


def _parse(spec: KeySpec, raw: str) -> Value:
    """Raw string -> typed value per the key's kind; raises :class:`InvalidValue`."""
    if spec.kind == "int":
        if not _INT.fullmatch(raw):
            raise InvalidValue(f"{raw!r} is not an integer")
        return int(raw)
    if spec.kind == "bool":
        if raw.lower() not in ("true", "false"):
            raise InvalidValue(f'{raw!r} is not "true" or "false"')
        return raw.lower() == "true"
    if spec.kind == "str":
        return raw
    items = [item.strip() for item in raw.split(",")] if raw.strip() else []
    if any(not item for item in items):
        raise InvalidValue(f"{raw!r} has an empty item")
    if len({item.lower() for item in items}) != len(items):
        raise InvalidValue(f"{raw!r} lists an item twice")
    return items


def _format(spec: KeySpec, value: Value) -> str:
    """Typed value -> the canonical string OCPP reports."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


class Configuration:
    """Current values of the OCPP configuration keys; ChangeConfiguration / GetConfiguration semantics."""

    def __init__(
        self,
        storage: KeyStorage,
        *,
        supported_measurands: frozenset[str] = DEFAULT_MEASURANDS,
        overrides: Mapping[str, str] | None = None,
        specs: Sequence[KeySpec] = KEYS,
    ) -> None:
        """Raises ValueError for duplicate specs, a default that does not validate, or a bad override."""
        self._storage = storage
        self.supported_measurands = frozenset(supported_measurands)
        self._specs: dict[str, KeySpec] = {}
        for spec in specs:
            if spec.name.lower() in self._specs:
                raise ValueError(f"configuration key {spec.name} defined twice")
            self._specs[spec.name.lower()] = spec
        self._values: dict[str, str] = {spec.name: spec.default for spec in specs}
        self._listeners: list[Listener] = []
        origin = dict.fromkeys(self._values, "default")
        for key, value in (overrides or {}).items():
            target = self._spec(key)
            if target is None:
                raise ValueError(f"override for unknown configuration key {key!r}")
            self._values[target.name], origin[target.name] = value, "override"
        # Validate only once every default and override is in place: some keys depend on others
        # (ConnectorPhaseRotation on NumberOfConnectors, lists on their ...MaxLength key).
        for spec in specs:
            self._values[spec.name] = self._checked(spec, self._values[spec.name], what=origin[spec.name])
        for key, value in storage.load().items():
            stored = self._spec(key)
            if stored is None:
                log.warning("ignoring stored value of unknown configuration key %s", key)
                continue
            if stored.readonly:
                log.warning("ignoring stored value of read-only configuration key %s", stored.name)
                continue
            try:
                self._values[stored.name] = self._normalise(stored, value, None)
            except InvalidValue as exc:
                log.warning("ignoring stored %s: %s", stored.name, "invalid" if stored.secret else exc)

    # ── look-ups ─────────────────────────────────────────────────────────────────────────────────────────
    @property
    def specs(self) -> list[KeySpec]:
        return list(self._specs.values())

    def spec(self, name: str) -> KeySpec:
        """The spec of a key (case-insensitive); KeyError if unknown."""
        spec = self._spec(name)
        if spec is None:
            raise KeyError(name)
        return spec

    def _spec(self, name: str) -> KeySpec | None:
        return self._specs.get(name.lower())

    def raw(self, name: str) -> str:
        """The current value as OCPP reports it (the real value, also for secret keys); KeyError if unknown."""
        return self._values[self.spec(name).name]

    def _typed(self, name: str, kind: Kind) -> Value:
        spec = self.spec(name)
        if spec.kind != kind:
            raise TypeError(f"{spec.name} is {spec.kind}, not {kind}")
        return _parse(spec, self._values[spec.name])

    def get_int(self, name: str) -> int:
        value = self._typed(name, "int")
        assert isinstance(value, int)
        return value

    def get_bool(self, name: str) -> bool:
        value = self._typed(name, "bool")
        assert isinstance(value, bool)
        return value

    def get_str(self, name: str) -> str:
        value = self._typed(name, "str")
        assert isinstance(value, str)
        return value

    def get_list(self, name: str) -> list[str]:
        value = self._typed(name, "csl")
        assert isinstance(value, list)
        return value

    # ── validation ───────────────────────────────────────────────────────────────────────────────────────
    def _lookup(self, name: str) -> str | None:
        spec = self._spec(name)
        return None if spec is None else self._values.get(spec.name)

    def _normalise(self, spec: KeySpec, raw: str, current: str | None) -> str:
        """Validate ``raw`` for ``spec``; returns the canonical string or raises :class:`InvalidValue`."""
        if len(raw) > VALUE_MAX_LENGTH:
            raise InvalidValue(f"longer than {VALUE_MAX_LENGTH} characters")
        value = _parse(spec, raw)
        limit = self._max_length(spec)
        if limit is not None and isinstance(value, str | list) and len(value) > limit:
            unit = "items" if spec.kind == "csl" else "characters"
            raise InvalidValue(f"{len(value)} {unit}, at most {limit} allowed")
        if spec.validator is not None:
            ctx = ValidationContext(spec.name, current, self.supported_measurands, self._lookup)
            value = spec.validator(value, ctx)
        return _format(spec, value)

    def _max_length(self, spec: KeySpec) -> int | None:
        """A "<Key>MaxLength" key, when present (possibly an installer override), rules over the spec."""
        companion = self._lookup(f"{spec.name}MaxLength")
        if companion is not None and _INT.fullmatch(companion):
            return int(companion)
        return spec.max_length

    def _checked(self, spec: KeySpec, raw: str, *, what: str) -> str:
        try:
            return self._normalise(spec, raw, None)
        except InvalidValue as exc:
            shown = _SECRET_MASK if spec.secret else repr(raw)
            raise ValueError(f"configuration key {spec.name}: {what} {shown}: {exc}") from exc

    # ── ChangeConfiguration ──────────────────────────────────────────────────────────────────────────────
    def subscribe(self, listener: Listener) -> None:
        """``listener(key, typed_value)`` after every Accepted or RebootRequired change."""
        self._listeners.append(listener)

    def change(self, key: str, value: str) -> ChangeStatus:
        """ChangeConfiguration.req -> status. Never raises; a Rejected change alters nothing."""
        spec = self._spec(key) if len(key) <= KEY_MAX_LENGTH else None
        if spec is None:
            log.info("ChangeConfiguration %s: unknown key", key[:KEY_MAX_LENGTH])
            return "NotSupported"
        if spec.readonly:
            log.info("ChangeConfiguration %s: read-only", spec.name)
            return "Rejected"
        shown = _SECRET_MASK if spec.secret else repr(value[:VALUE_MAX_LENGTH])
        try:
            canonical = self._normalise(spec, value, self._values[spec.name])
        except InvalidValue as exc:
            log.info("ChangeConfiguration %s=%s rejected: %s", spec.name, shown, exc if not spec.secret else "invalid")
            return "Rejected"
        except Exception:  # a validator bug must not break the CSMS exchange
            log.exception("ChangeConfiguration %s: validator failed", spec.name)
            return "Rejected"
        try:
            self._storage.save(spec.name, canonical)
        except Exception:
            log.exception("ChangeConfiguration %s: could not persist; rejected", spec.name)
            return "Rejected"
        self._values[spec.name] = canonical
        status: ChangeStatus = "RebootRequired" if spec.reboot_required else "Accepted"
        log.info("ChangeConfiguration %s=%s: %s", spec.name, _SECRET_MASK if spec.secret else canonical, status)
        typed = _parse(spec, canonical)
        for listener in list(self._listeners):
            try:
                listener(spec.name, typed)
            except Exception:
                log.exception("configuration listener failed for %s", spec.name)
        return status

    # ── GetConfiguration ─────────────────────────────────────────────────────────────────────────────────
    def _entry(self, spec: KeySpec) -> dict[str, object]:
        entry: dict[str, object] = {"key": spec.name, "readonly": spec.readonly}
        if not spec.secret:
            entry["value"] = self._values[spec.name]
        return entry

    def get_configuration(self, keys: Sequence[str] | None = None) -> tuple[list[dict[str, object]], list[str]]:
        """GetConfiguration.req -> (configurationKey, unknownKey) in wire field names.

        No or an empty key list -> every key. Otherwise each requested key once, in request order; at most
        GetConfigurationMaxKeys known keys are answered (the first ones), every unknown key is listed.
        Secret keys are listed without a value.
        """
        if not keys:
            return [self._entry(spec) for spec in self._specs.values()], []
        max_keys = self.get_int("GetConfigurationMaxKeys") if self._spec("GetConfigurationMaxKeys") else len(keys)
        known: list[dict[str, object]] = []
        unknown: list[str] = []
        seen: set[str] = set()
        for key in keys:
            if key.lower() in seen:
                continue
            seen.add(key.lower())
            spec = self._spec(key) if len(key) <= KEY_MAX_LENGTH else None
            if spec is None:
                unknown.append(key)
            elif len(known) < max_keys:
                known.append(self._entry(spec))
        return known, unknown

    def describe(self) -> list[dict[str, object]]:
        """Every key for documentation and status: name, type, readonly, value (secret masked), profile, unit."""
        out: list[dict[str, object]] = []
        for spec in self._specs.values():
            value = self._values[spec.name]
            if spec.secret:
                value = _SECRET_MASK if value else ""
            out.append(
                {
                    "name": spec.name,
                    "type": spec.kind,
                    "readonly": spec.readonly,
                    "value": value,
                    "profile": spec.profile,
                    "unit": spec.unit,
                    "reboot_required": spec.reboot_required,
                    "secret": spec.secret,
                }
            )
        return out


def _access(spec: KeySpec) -> str:
    if spec.readonly:
        return "R"
    return "W" if spec.secret else "RW"


def key_table_markdown(specs: Sequence[KeySpec] = KEYS) -> str:
    """A Markdown table of the keys: name | type | R/RW | default | profile (W = write-only)."""
    lines = ["| key | type | R/RW | default | profile |", "|---|---|---|---|---|"]
    for spec in specs:
        kind = f"{spec.kind} ({spec.unit})" if spec.unit else spec.kind
        default = "" if spec.secret else f"`{spec.default}`" if spec.default else '""'
        lines.append(f"| {spec.name} | {kind} | {_access(spec)} | {default} | {spec.profile} |")
    return "\n".join(lines) + "\n"
