"""OCPP 1.6 configuration keys: the table, ChangeConfiguration, GetConfiguration, persistence, secrets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.ocpp.v16.configuration import (
    DEFAULT_MEASURANDS,
    KEYS,
    MEASURANDS,
    Configuration,
    IntRange,
    KeySpec,
    MemoryKeyStorage,
    key_table_markdown,
)

KEY = "0123456789abcdef0123"  # a valid authorization key (20 characters)

# (name, kind, readonly, default) as the brief / 1.6 chapter 9 / security whitepaper give them.
EXPECTED: list[tuple[str, str, bool, str]] = [
    ("HeartbeatInterval", "int", False, "300"),
    ("ConnectionTimeOut", "int", False, "60"),
    ("MeterValueSampleInterval", "int", False, "60"),
    ("MeterValuesSampledData", "csl", False, "Energy.Active.Import.Register"),
    ("MeterValuesSampledDataMaxLength", "int", True, "10"),
    ("ClockAlignedDataInterval", "int", False, "0"),
    ("MeterValuesAlignedData", "csl", False, "Energy.Active.Import.Register"),
    ("MeterValuesAlignedDataMaxLength", "int", True, "10"),
    ("StopTxnSampledData", "csl", False, "Energy.Active.Import.Register"),
    ("StopTxnSampledDataMaxLength", "int", True, "10"),
    ("StopTxnAlignedData", "csl", False, ""),
    ("StopTxnAlignedDataMaxLength", "int", True, "10"),
    ("LocalAuthorizeOffline", "bool", False, "true"),
    ("LocalPreAuthorize", "bool", False, "false"),
    ("AuthorizeRemoteTxRequests", "bool", False, "false"),
    ("AuthorizationCacheEnabled", "bool", False, "true"),
    ("AllowOfflineTxForUnknownId", "bool", False, "false"),
    ("StopTransactionOnInvalidId", "bool", False, "true"),
    ("MaxEnergyOnInvalidId", "int", False, "0"),
    ("StopTransactionOnEVSideDisconnect", "bool", True, "true"),
    ("UnlockConnectorOnEVSideDisconnect", "bool", True, "true"),
    ("TransactionMessageAttempts", "int", False, "3"),
    ("TransactionMessageRetryInterval", "int", False, "60"),
    ("GetConfigurationMaxKeys", "int", True, "50"),
    ("NumberOfConnectors", "int", True, "1"),
    (
        "SupportedFeatureProfiles",
        "csl",
        True,
        "Core,FirmwareManagement,LocalAuthListManagement,Reservation,SmartCharging,RemoteTrigger",
    ),
    ("SupportedFeatureProfilesMaxLength", "int", True, "6"),
    ("ConnectorPhaseRotation", "csl", False, "0.RST,1.RST"),
    ("ConnectorPhaseRotationMaxLength", "int", True, "10"),
    ("ResetRetries", "int", False, "3"),
    ("WebSocketPingInterval", "int", False, "60"),
    ("MinimumStatusDuration", "int", True, "0"),
    ("LocalAuthListEnabled", "bool", False, "true"),
    ("LocalAuthListMaxLength", "int", True, "1000"),
    ("SendLocalListMaxLength", "int", True, "100"),
    ("ReserveConnectorZeroSupported", "bool", True, "false"),
    ("ChargeProfileMaxStackLevel", "int", True, "8"),
    ("ChargingScheduleAllowedChargingRateUnit", "csl", True, "Current,Power"),
    ("ChargingScheduleMaxPeriods", "int", True, "96"),
    ("MaxChargingProfilesInstalled", "int", True, "16"),
    ("SecurityProfile", "int", True, "0"),
    ("AuthorizationKey", "str", False, ""),
    ("CpoName", "str", False, ""),
    # California Pricing (OCA whitepaper, libocpp CostAndPrice): tests/test_ocpp_pricing.py covers their values.
    ("CustomDisplayCostAndPrice", "bool", True, "true"),
    ("DefaultPrice", "str", False, ""),
    ("DefaultPriceText", "str", False, ""),
    ("NumberOfDecimalsForCostValues", "int", False, "3"),
    ("CustomIdleFeeAfterStop", "bool", True, "false"),
    ("CustomMultiLanguageMessages", "bool", True, "false"),
]
REQUIRED_CORE = [
    "HeartbeatInterval", "ConnectionTimeOut", "MeterValueSampleInterval", "MeterValuesSampledData",
    "ClockAlignedDataInterval", "MeterValuesAlignedData", "StopTxnSampledData", "StopTxnAlignedData",
    "LocalAuthorizeOffline", "LocalPreAuthorize", "AuthorizeRemoteTxRequests", "StopTransactionOnInvalidId",
    "StopTransactionOnEVSideDisconnect", "UnlockConnectorOnEVSideDisconnect", "TransactionMessageAttempts",
    "TransactionMessageRetryInterval", "GetConfigurationMaxKeys", "NumberOfConnectors", "SupportedFeatureProfiles",
    "ConnectorPhaseRotation", "ResetRetries",
]  # fmt: skip
# The SmartCharging keys (1.6 §9.4), read-only: the charger enforces these limits on every SetChargingProfile.
SMART_CHARGING_KEYS = [
    "ChargeProfileMaxStackLevel", "ChargingScheduleAllowedChargingRateUnit", "ChargingScheduleMaxPeriods",
    "MaxChargingProfilesInstalled",
]  # fmt: skip
# Keys this firmware does not act on, so it does not offer them (a CSMS gets NotSupported, not a fake Accepted):
# the phases cannot be switched 3 -> 1 here; there is no indicator control over OCPP yet.
REMOVED_KEYS = ["ConnectorSwitch3to1PhaseSupported", "BlinkRepeat", "LightIntensity"]
# Read-only because changing them is not implemented: a ChangeConfiguration must be Rejected, never faked.
NOT_WRITABLE = [
    ("StopTransactionOnEVSideDisconnect", "false"),
    ("UnlockConnectorOnEVSideDisconnect", "false"),
    ("MinimumStatusDuration", "5"),
    ("SecurityProfile", "1"),
    ("SecurityProfile", "0"),
]


def make(**kwargs: object) -> tuple[Configuration, MemoryKeyStorage]:
    storage = MemoryKeyStorage()
    return Configuration(storage, **kwargs), storage  # type: ignore[arg-type]


# ── the table ───────────────────────────────────────────────────────────────────────────────────────────
def test_table_is_exactly_the_expected_keys() -> None:
    assert {(k.name, k.kind, k.readonly, k.default) for k in KEYS} == set(EXPECTED)
    assert len({k.name for k in KEYS}) == len(KEYS)


@pytest.mark.parametrize(("name", "kind", "readonly", "default"), EXPECTED)
def test_each_key_type_access_and_default(name: str, kind: str, readonly: bool, default: str) -> None:
    config, _ = make()
    spec = config.spec(name)
    assert (spec.kind, spec.readonly) == (kind, readonly)
    assert config.raw(name) == default


def test_required_core_keys_are_core_profile() -> None:
    specs = {k.name: k for k in KEYS}
    for name in REQUIRED_CORE:
        assert specs[name].profile == "Core", name
    assert specs["LocalAuthListEnabled"].profile == "LocalAuthListManagement"
    assert specs["ReserveConnectorZeroSupported"].profile == "Reservation"
    assert {k.name for k in KEYS if k.profile == "SmartCharging"} == set(SMART_CHARGING_KEYS)
    assert all(specs[name].readonly for name in SMART_CHARGING_KEYS)
    assert {specs[n].profile for n in ("SecurityProfile", "AuthorizationKey", "CpoName")} == {"Security"}
    assert [k.name for k in KEYS if k.secret] == ["AuthorizationKey"]
    assert not any(k.reboot_required for k in KEYS)


def test_units() -> None:
    specs = {k.name: k for k in KEYS}
    assert specs["HeartbeatInterval"].unit == "s"
    assert specs["MaxEnergyOnInvalidId"].unit == "Wh"
    assert specs["ResetRetries"].unit == "times"
    assert specs["MinimumStatusDuration"].unit == "s"


def test_typed_getters() -> None:
    config, _ = make()
    assert config.get_int("HeartbeatInterval") == 300
    assert config.get_bool("LocalAuthorizeOffline") is True
    assert config.get_bool("LocalPreAuthorize") is False
    assert config.get_list("MeterValuesSampledData") == ["Energy.Active.Import.Register"]
    assert config.get_list("StopTxnSampledData") == ["Energy.Active.Import.Register"]
    assert config.get_list("SupportedFeatureProfiles") == [
        "Core",
        "FirmwareManagement",
        "LocalAuthListManagement",
        "Reservation",
        "SmartCharging",
        "RemoteTrigger",
    ]
    assert config.get_list("ChargingScheduleAllowedChargingRateUnit") == ["Current", "Power"]
    assert config.get_int("ChargingScheduleMaxPeriods") == 96
    assert config.get_bool("StopTransactionOnEVSideDisconnect") is True
    assert config.get_int("SecurityProfile") == 0
    assert config.get_str("CpoName") == ""
    assert config.get_int("heartbeatinterval") == 300  # key names are CiString
    with pytest.raises(TypeError):
        config.get_int("LocalAuthorizeOffline")
    with pytest.raises(KeyError):
        config.raw("NoSuchKey")


def test_key_table_markdown() -> None:
    table = key_table_markdown()
    lines = table.splitlines()
    assert lines[0] == "| key | type | R/RW | default | profile |"
    assert len(lines) == 2 + len(KEYS)
    assert "| HeartbeatInterval | int (s) | RW | `300` | Core |" in lines
    assert "| NumberOfConnectors | int | R | `1` | Core |" in lines
    assert "| AuthorizationKey | str | W |  | Security |" in lines
    assert "| SecurityProfile | int | R | `0` | Security |" in lines
    assert "| MinimumStatusDuration | int (s) | R | `0` | Core |" in lines
    assert "| StopTransactionOnEVSideDisconnect | bool | R | `true` | Core |" in lines
    assert "| UnlockConnectorOnEVSideDisconnect | bool | R | `true` | Core |" in lines
    assert (
        "| SupportedFeatureProfiles | csl | R | "
        "`Core,FirmwareManagement,LocalAuthListManagement,Reservation,SmartCharging,RemoteTrigger` | Core |" in lines
    )
    assert "| ChargeProfileMaxStackLevel | int | R | `8` | SmartCharging |" in lines
    assert "| ChargingScheduleAllowedChargingRateUnit | csl | R | `Current,Power` | SmartCharging |" in lines
    assert "| ChargingScheduleMaxPeriods | int | R | `96` | SmartCharging |" in lines
    assert "| MaxChargingProfilesInstalled | int | R | `16` | SmartCharging |" in lines
    for name in REMOVED_KEYS:
        assert f"| {name} |" not in table


# ── only what is implemented is offered ─────────────────────────────────────────────────────────────────
def test_supported_feature_profiles_lists_only_implemented_profiles() -> None:
    config, _ = make()
    profiles = config.get_list("SupportedFeatureProfiles")
    assert profiles == [
        "Core",
        "FirmwareManagement",
        "LocalAuthListManagement",
        "Reservation",
        "SmartCharging",
        "RemoteTrigger",
    ]
    assert config.change("SupportedFeatureProfiles", "Core") == "Rejected"
    assert config.get_list("SupportedFeatureProfiles") == profiles


@pytest.mark.parametrize(
    ("name", "value"), [("ChargeProfileMaxStackLevel", "100"), ("ChargingScheduleMaxPeriods", "5")]
)
def test_smart_charging_limits_are_read_only(name: str, value: str) -> None:
    config, storage = make()
    before = config.raw(name)
    assert config.change(name, value) == "Rejected"
    assert config.raw(name) == before and storage.values == {}
    assert Configuration(MemoryKeyStorage({name: value})).raw(name) == before  # a stored value is ignored


def test_smart_charging_limits_may_be_narrowed_by_the_installer() -> None:
    config, _ = make(
        overrides={"MaxChargingProfilesInstalled": "4", "ChargingScheduleAllowedChargingRateUnit": "Current"}
    )
    assert config.get_int("MaxChargingProfilesInstalled") == 4
    assert config.get_list("ChargingScheduleAllowedChargingRateUnit") == ["Current"]
    with pytest.raises(ValueError):
        make(overrides={"ChargingScheduleAllowedChargingRateUnit": "Current,Ampere"})


@pytest.mark.parametrize("name", REMOVED_KEYS)
def test_removed_keys_are_not_supported(name: str) -> None:
    config, storage = make()
    assert config.change(name, "1") == "NotSupported"
    assert config.change(name.lower(), "true") == "NotSupported"
    known, unknown = config.get_configuration([name, "HeartbeatInterval"])
    assert known == [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]
    assert unknown == [name]
    everything, _ = config.get_configuration()
    assert name not in {entry["key"] for entry in everything}
    assert name not in {d["name"] for d in config.describe()}
    with pytest.raises(KeyError):
        config.raw(name)
    assert storage.values == {}


def test_removed_keys_ignored_in_storage_and_refused_as_overrides() -> None:
    storage = MemoryKeyStorage({"BlinkRepeat": "5", "LightIntensity": "80", "ConnectorSwitch3to1PhaseSupported": "1"})
    config = Configuration(storage)
    assert all(config.change(name, "1") == "NotSupported" for name in REMOVED_KEYS)
    with pytest.raises(ValueError):
        Configuration(MemoryKeyStorage(), overrides={"LightIntensity": "80"})


@pytest.mark.parametrize(("name", "value"), NOT_WRITABLE)
def test_unimplemented_writable_behaviour_is_read_only(name: str, value: str) -> None:
    config, storage = make()
    seen: list[tuple[str, object]] = []
    config.subscribe(lambda k, v: seen.append((k, v)))
    before = config.raw(name)
    assert config.spec(name).readonly
    assert config.change(name, value) == "Rejected"
    assert config.change(name, before) == "Rejected"
    assert config.raw(name) == before
    known, _ = config.get_configuration([name])
    assert known == [{"key": name, "readonly": True, "value": before}]
    assert storage.values == {}
    assert seen == []


# ── ChangeConfiguration ─────────────────────────────────────────────────────────────────────────────────
def test_change_unknown_key_not_supported() -> None:
    config, storage = make()
    assert config.change("NoSuchKey", "1") == "NotSupported"
    assert config.change("", "1") == "NotSupported"
    assert config.change("HeartbeatInterval" + "x" * 40, "1") == "NotSupported"
    assert storage.values == {}


@pytest.mark.parametrize("name", [name for name, _, readonly, _ in EXPECTED if readonly])
def test_change_read_only_rejected(name: str) -> None:
    config, storage = make()
    before = config.raw(name)
    assert config.change(name, before) == "Rejected"
    assert config.raw(name) == before
    assert storage.values == {}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("HeartbeatInterval", "abc"),
        ("HeartbeatInterval", ""),
        ("HeartbeatInterval", "1.5"),
        ("HeartbeatInterval", "0"),
        ("HeartbeatInterval", "-5"),
        ("HeartbeatInterval", "86401"),
        ("HeartbeatInterval", " 300"),
        ("HeartbeatInterval", "+300"),
        ("HeartbeatInterval", "1_000"),
        ("HeartbeatInterval", "٣٠٠"),  # Arabic-Indic digits: Python's int() would take them
        ("ResetRetries", "11"),
        ("ResetRetries", "-1"),
        ("LocalAuthorizeOffline", "yes"),
        ("LocalAuthorizeOffline", "1"),
        ("LocalAuthorizeOffline", "true "),
        ("LocalAuthorizeOffline", ""),
        ("MeterValuesSampledData", "Energy.Active.Import.Register,Bogus"),
        ("MeterValuesSampledData", "Current.Import.L1"),
        ("MeterValuesSampledData", "Energy.Active.Import.Register,,Voltage"),
        ("MeterValuesSampledData", "Voltage,Voltage"),
        ("ConnectorPhaseRotation", "0.RST,2.RST"),  # only one connector
        ("ConnectorPhaseRotation", "1.XYZ"),
        ("ConnectorPhaseRotation", "RST"),
        ("SecurityProfile", "4"),
        ("SecurityProfile", "-1"),
        ("SecurityProfile", "2"),
        ("AuthorizationKey", "short"),
        ("AuthorizationKey", "x" * 41),
        ("AuthorizationKey", ""),
        ("AuthorizationKey", "0123456789abcdef\n"),
        ("CpoName", "line\nbreak"),
        ("CpoName", "x" * 501),
    ],
)
def test_change_invalid_value_rejected_and_nothing_changes(key: str, value: str) -> None:
    config, storage = make()
    seen: list[tuple[str, object]] = []
    config.subscribe(lambda k, v: seen.append((k, v)))
    before = config.raw(key)
    assert config.change(key, value) == "Rejected"
    assert config.raw(key) == before
    assert storage.values == {}
    assert seen == []


def test_change_valid_values_accepted_persisted_and_typed_to_listeners() -> None:
    config, storage = make()
    seen: list[tuple[str, object]] = []
    config.subscribe(lambda k, v: seen.append((k, v)))
    assert config.change("HeartbeatInterval", "900") == "Accepted"
    assert config.change("localauthorizeoffline", "FALSE") == "Accepted"
    assert config.change("MeterValuesSampledData", " voltage , Energy.Active.Import.Register,Current.Import") == (
        "Accepted"
    )
    assert config.change("StopTxnAlignedData", "") == "Accepted"
    assert config.change("ConnectorPhaseRotation", "0.RST, 1.rts") == "Accepted"
    assert config.change("CpoName", "Example CPO") == "Accepted"
    assert config.change("HeartbeatInterval", "0060") == "Accepted"
    assert config.get_int("HeartbeatInterval") == 60
    assert config.get_bool("LocalAuthorizeOffline") is False
    assert config.get_list("MeterValuesSampledData") == ["Voltage", "Energy.Active.Import.Register", "Current.Import"]
    assert storage.values == {
        "HeartbeatInterval": "60",
        "LocalAuthorizeOffline": "false",
        "MeterValuesSampledData": "Voltage,Energy.Active.Import.Register,Current.Import",
        "StopTxnAlignedData": "",
        "ConnectorPhaseRotation": "0.RST,1.RTS",
        "CpoName": "Example CPO",
    }
    assert seen == [
        ("HeartbeatInterval", 900),
        ("LocalAuthorizeOffline", False),
        ("MeterValuesSampledData", ["Voltage", "Energy.Active.Import.Register", "Current.Import"]),
        ("StopTxnAlignedData", []),
        ("ConnectorPhaseRotation", ["0.RST", "1.RTS"]),
        ("CpoName", "Example CPO"),
        ("HeartbeatInterval", 60),
    ]


def test_reboot_required_key() -> None:
    specs = (*KEYS, KeySpec("VendorRebootKey", "int", False, "1", reboot_required=True, validator=IntRange(0, 9)))
    config, storage = make(specs=specs)
    seen: list[tuple[str, object]] = []
    config.subscribe(lambda k, v: seen.append((k, v)))
    assert config.change("VendorRebootKey", "7") == "RebootRequired"
    assert config.get_int("VendorRebootKey") == 7
    assert storage.values == {"VendorRebootKey": "7"}
    assert config.change("VendorRebootKey", "10") == "Rejected"
    assert seen == [("VendorRebootKey", 7)]


def test_failing_listener_does_not_break_change(caplog: pytest.LogCaptureFixture) -> None:
    config, _ = make()

    def broken(key: str, value: object) -> None:
        raise RuntimeError("boom")

    seen: list[tuple[str, object]] = []
    config.subscribe(broken)
    config.subscribe(lambda k, v: seen.append((k, v)))
    assert config.change("ResetRetries", "5") == "Accepted"
    assert seen == [("ResetRetries", 5)]
    assert "listener failed" in caplog.text


def test_failing_storage_rejects_and_changes_nothing() -> None:
    class Broken(MemoryKeyStorage):
        def save(self, key: str, value: str) -> None:
            raise OSError("disk full")

    config = Configuration(Broken())
    assert config.change("HeartbeatInterval", "900") == "Rejected"
    assert config.get_int("HeartbeatInterval") == 300


def test_unsupported_measurand_rejected() -> None:
    config, _ = make()
    assert "Temperature" in MEASURANDS and "Temperature" not in DEFAULT_MEASURANDS
    assert config.change("MeterValuesSampledData", "Temperature") == "Rejected"
    assert config.change("MeterValuesAlignedData", "Energy.Active.Import.Register,SoC") == "Rejected"
    assert config.change("StopTxnSampledData", "Frequency") == "Rejected"
    assert config.get_list("MeterValuesSampledData") == ["Energy.Active.Import.Register"]
    richer, _ = make(supported_measurands=DEFAULT_MEASURANDS | {"Temperature", "SoC"})
    assert richer.change("MeterValuesSampledData", "Temperature,SoC") == "Accepted"
    assert richer.change("MeterValuesSampledData", "Bogus.Measurand") == "Rejected"


def test_measurand_list_max_length() -> None:
    config, _ = make(supported_measurands=MEASURANDS)
    eleven = ",".join(sorted(MEASURANDS)[:11])
    ten = ",".join(sorted(MEASURANDS)[:10])
    assert config.change("MeterValuesSampledData", eleven) == "Rejected"
    assert config.change("MeterValuesSampledData", ten) == "Accepted"
    small, _ = make(supported_measurands=MEASURANDS, overrides={"MeterValuesSampledDataMaxLength": "2"})
    assert small.change("MeterValuesSampledData", "Voltage,Current.Import,Power.Active.Import") == "Rejected"
    assert small.change("MeterValuesSampledData", "Voltage,Current.Import") == "Accepted"


def test_security_profile_comes_from_the_installer_and_cannot_be_changed_over_ocpp() -> None:
    # Switching profiles over OCPP is not implemented: the installer sets it in config.toml [ocpp].
    storage = MemoryKeyStorage({"SecurityProfile": "3"})  # e.g. persisted by an older firmware
    config = Configuration(storage, overrides={"SecurityProfile": "2"})
    assert config.get_int("SecurityProfile") == 2  # the installer value wins; the stored one is ignored
    for value in ("0", "1", "2", "3"):
        assert config.change("SecurityProfile", value) == "Rejected"
    assert config.get_int("SecurityProfile") == 2
    assert storage.values == {"SecurityProfile": "3"}
    known, _ = config.get_configuration(["SecurityProfile"])
    assert known == [{"key": "SecurityProfile", "readonly": True, "value": "2"}]
    assert Configuration(MemoryKeyStorage()).get_int("SecurityProfile") == 0


@pytest.mark.parametrize("value", ["4", "-1", "x", ""])
def test_bad_security_profile_override_raises(value: str) -> None:
    with pytest.raises(ValueError):
        Configuration(MemoryKeyStorage(), overrides={"SecurityProfile": value})


# ── persistence and overrides ───────────────────────────────────────────────────────────────────────────
def test_persistence_and_defaults_not_written() -> None:
    storage = MemoryKeyStorage()
    first = Configuration(storage)
    assert storage.values == {}
    assert first.change("HeartbeatInterval", "120") == "Accepted"
    assert first.change("AuthorizationKey", KEY) == "Accepted"
    assert storage.values == {"HeartbeatInterval": "120", "AuthorizationKey": KEY}
    second = Configuration(storage)
    assert second.get_int("HeartbeatInterval") == 120
    assert second.get_str("AuthorizationKey") == KEY
    assert second.get_int("ConnectionTimeOut") == 60


def test_bad_stored_values_ignored() -> None:
    storage = MemoryKeyStorage(
        {
            "HeartbeatInterval": "nonsense",
            "NumberOfConnectors": "4",  # read-only: never taken from storage
            "RetiredKey": "1",
            "MeterValuesSampledData": "Temperature",  # the meter no longer provides it
            "ClockAlignedDataInterval": "900",
            "StopTransactionOnEVSideDisconnect": "false",  # read-only now: an earlier write is not honoured
            "LightIntensity": "80",  # removed key
        }
    )
    config = Configuration(storage)
    assert config.get_int("HeartbeatInterval") == 300
    assert config.get_int("NumberOfConnectors") == 1
    assert config.get_list("MeterValuesSampledData") == ["Energy.Active.Import.Register"]
    assert config.get_int("ClockAlignedDataInterval") == 900
    assert config.get_bool("StopTransactionOnEVSideDisconnect") is True


def test_overrides_applied_not_persisted() -> None:
    storage = MemoryKeyStorage()
    config = Configuration(
        storage,
        overrides={
            "NumberOfConnectors": "2",
            "ConnectorPhaseRotation": "0.RST,1.RST,2.STR",
            "HeartbeatInterval": "600",
        },
    )
    assert config.get_int("NumberOfConnectors") == 2
    assert config.get_list("ConnectorPhaseRotation") == ["0.RST", "1.RST", "2.STR"]
    assert config.get_int("HeartbeatInterval") == 600
    assert storage.values == {}
    assert config.change("ConnectorPhaseRotation", "2.RTS") == "Accepted"
    assert config.change("NumberOfConnectors", "3") == "Rejected"
    storage.save("HeartbeatInterval", "60")  # a CSMS change persisted earlier wins over the installer value
    assert Configuration(storage, overrides={"HeartbeatInterval": "600"}).get_int("HeartbeatInterval") == 60


@pytest.mark.parametrize(
    "overrides",
    [{"NoSuchKey": "1"}, {"HeartbeatInterval": "x"}, {"AuthorizationKey": "short"}, {"NumberOfConnectors": "-1"}],
)
def test_bad_override_raises(overrides: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Configuration(MemoryKeyStorage(), overrides=overrides)


def test_override_error_does_not_show_the_secret() -> None:
    with pytest.raises(ValueError) as info:
        Configuration(MemoryKeyStorage(), overrides={"AuthorizationKey": "secret!"})
    assert "secret!" not in str(info.value)


def test_default_measurand_must_be_supported() -> None:
    with pytest.raises(ValueError):
        Configuration(MemoryKeyStorage(), supported_measurands=frozenset({"Voltage"}))


# ── GetConfiguration / describe ─────────────────────────────────────────────────────────────────────────
def test_get_configuration_all_keys() -> None:
    config, _ = make()
    no_keys: tuple[list[str] | None, ...] = (None, [])
    for keys in no_keys:
        known, unknown = config.get_configuration(keys)
        assert unknown == []
        assert [entry["key"] for entry in known] == [k.name for k in KEYS]
    known, _ = config.get_configuration()
    by_key = {entry["key"]: entry for entry in known}
    assert by_key["HeartbeatInterval"] == {"key": "HeartbeatInterval", "readonly": False, "value": "300"}
    assert by_key["NumberOfConnectors"] == {"key": "NumberOfConnectors", "readonly": True, "value": "1"}


def test_get_configuration_named_and_unknown_keys() -> None:
    config, _ = make()
    known, unknown = config.get_configuration(["heartbeatinterval", "Foo", "NumberOfConnectors", "Bar", "Foo"])
    assert known == [
        {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
        {"key": "NumberOfConnectors", "readonly": True, "value": "1"},
    ]
    assert unknown == ["Foo", "Bar"]


def test_get_configuration_max_keys_truncation() -> None:
    config, _ = make(overrides={"GetConfigurationMaxKeys": "3"})
    names = [k.name for k in KEYS]
    known, unknown = config.get_configuration(["Nope", *names[:5]])
    assert [entry["key"] for entry in known] == names[:3]
    assert unknown == ["Nope"]
    default, _ = make()
    known, _ = default.get_configuration([*names, *names])
    assert len(known) == len(KEYS)  # 49 keys <= 50
    assert len(KEYS) <= default.get_int("GetConfigurationMaxKeys")


def test_authorization_key_never_revealed() -> None:
    config, _ = make()
    known, unknown = config.get_configuration(["AuthorizationKey"])
    assert known == [{"key": "AuthorizationKey", "readonly": False}] and unknown == []
    assert config.change("AuthorizationKey", KEY) == "Accepted"
    everything, _ = config.get_configuration()
    named, _ = config.get_configuration(["AuthorizationKey"])
    assert named == [{"key": "AuthorizationKey", "readonly": False}]
    assert KEY not in repr(everything) and KEY not in repr(named)
    described = {d["name"]: d for d in config.describe()}
    assert described["AuthorizationKey"]["value"] == "********"
    assert KEY not in repr(config.describe())
    assert KEY not in key_table_markdown()
    assert config.raw("AuthorizationKey") == KEY  # the link needs it for HTTP Basic auth


def test_authorization_key_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    config, _ = make()
    caplog.set_level("DEBUG")
    config.change("AuthorizationKey", KEY)
    config.change("AuthorizationKey", "tooShortSecret")
    assert KEY not in caplog.text and "tooShortSecret" not in caplog.text


def test_describe() -> None:
    config, _ = make()
    described = config.describe()
    assert [d["name"] for d in described] == [k.name for k in KEYS]
    hb = next(d for d in described if d["name"] == "HeartbeatInterval")
    assert hb == {
        "name": "HeartbeatInterval",
        "type": "int",
        "readonly": False,
        "value": "300",
        "profile": "Core",
        "unit": "s",
        "reboot_required": False,
        "secret": False,
    }
    key = next(d for d in described if d["name"] == "AuthorizationKey")
    assert key["value"] == ""  # not set


# ── properties ──────────────────────────────────────────────────────────────────────────────────────────
KEY_NAMES = st.sampled_from([k.name for k in KEYS]) | st.sampled_from(REMOVED_KEYS) | st.text(max_size=60)
STATUSES = {"Accepted", "Rejected", "RebootRequired", "NotSupported"}


@settings(max_examples=400, deadline=None)
@given(key=KEY_NAMES, value=st.text(max_size=80) | st.integers().map(str) | st.sampled_from(["true", "FALSE"]))
def test_change_never_raises_and_rejected_changes_nothing(key: str, value: str) -> None:
    config, storage = make()
    names = [k.name for k in KEYS]
    before = {name: config.raw(name) for name in names}
    status = config.change(key, value)
    assert status in STATUSES
    if key.lower() in {name.lower() for name in REMOVED_KEYS}:
        assert status == "NotSupported"
    after = {name: config.raw(name) for name in names}
    if status in ("Rejected", "NotSupported"):
        assert after == before
        assert storage.values == {}
    else:
        changed = config.spec(key).name
        assert {n for n in names if after[n] != before[n]} <= {changed}
        assert storage.values == {changed: after[changed]}


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from([k.name for k in KEYS if k.kind == "int" and not k.readonly]),
    n=st.integers(min_value=-(10**12), max_value=10**12),
)
def test_integers_round_trip(key: str, n: int) -> None:
    config, storage = make()
    bounds = config.spec(key).validator
    assert isinstance(bounds, IntRange)
    status = config.change(key, str(n))
    assert status == ("Accepted" if bounds.lo <= n <= bounds.hi else "Rejected")
    if status == "Accepted":
        assert config.get_int(key) == n
        assert config.raw(key) == str(n)
        assert Configuration(storage).get_int(key) == n


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from([k.name for k in KEYS if k.readonly]),
    value=st.text(max_size=40) | st.integers().map(str) | st.sampled_from(["true", "false", "0", "1", "2", "3"]),
)
def test_read_only_keys_never_change(key: str, value: str) -> None:
    config, storage = make()
    before = config.raw(key)
    assert config.change(key, value) == "Rejected"
    assert config.raw(key) == before
    assert storage.values == {}


@settings(max_examples=100, deadline=None)
@given(installed=st.integers(min_value=0, max_value=3), requested=st.integers(min_value=-1, max_value=4))
def test_security_profile_stays_the_installer_value(installed: int, requested: int) -> None:
    config, storage = make(overrides={"SecurityProfile": str(installed)})
    assert config.change("SecurityProfile", str(requested)) == "Rejected"
    assert config.get_int("SecurityProfile") == installed
    assert storage.values == {}
