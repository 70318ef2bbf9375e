"""The config loader: what an installer sees about a wrong file must be exact, complete and name the key."""

import dataclasses
import datetime
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import firmware.config as config
from firmware.config import (
    CONFIG_SEARCH_PATHS,
    AuthSettings,
    ChargerSettings,
    ConfigError,
    MeterSettings,
    OcppSettings,
    Settings,
    default_settings,
    find_config,
    iter_keys,
    load_settings,
    masked,
    parse_settings,
)

CONFIG_TOML = Path(__file__).resolve().parents[1] / "config.toml"
KEY = "0123456789abcdef"  # a valid 16-character authorization key


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(data)
    return info.value.errors


def file_errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value.errors


def toml_value(value: Any) -> str:
    """A default as the config file writes it (whole-number floats without ".0", as installers write them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{}" if not value else json.dumps(dict(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ── defaults and the shipped config.toml ──────────────────────────────────────────────────────────────────
def test_defaults() -> None:
    s = default_settings()
    assert parse_settings({}) == s
    assert s.grid_meter is None
    assert s.charger == ChargerSettings()
    assert s.charger.id == "CP-0001"
    assert s.charger.max_current_a == 32.0
    assert s.auth.mode == "local"
    assert s.auth.allowlist == ()
    assert s.ocpp.url == ""
    assert s.meter.model == "auto"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.charger.phases = 1  # type: ignore[misc]


def test_iter_keys_defaults_match_the_dataclasses() -> None:
    keys = list(iter_keys())
    assert len(keys) == len({(section, key) for section, key, *_ in keys})
    for section, key, default, unit, doc in keys:
        holder = MeterSettings() if section == "grid_meter" else getattr(default_settings(), section)
        assert getattr(holder, key) == default, f"{section}.{key}"
        assert doc, f"{section}.{key} has no doc"
        assert isinstance(unit, str)
    assert {s for s, *_ in keys} == {f.name for f in dataclasses.fields(Settings)}


def test_config_toml_loads_and_equals_defaults() -> None:
    s = load_settings(CONFIG_TOML)
    assert s == default_settings()
    assert s.grid_meter is None
    assert isinstance(s.charger.max_current_a, float)


HEADER = re.compile(r"^#?\s*\[(\w+)\]\s*$")
ASSIGNMENT = re.compile(r"^(#\s*)?([a-z_][a-z0-9_]*)\s*=\s*(.*)$")


def documented_keys() -> dict[tuple[str, str], tuple[Any, str]]:
    """(section, key) -> (value written, its comment: the comment lines just above plus any trailing one)."""
    found: dict[tuple[str, str], tuple[Any, str]] = {}
    section, comments = "", list[str]()
    for line in CONFIG_TOML.read_text(encoding="utf-8").splitlines():
        if header := HEADER.match(line):
            section, comments = header[1], []
            continue
        if (match := ASSIGNMENT.match(line)) and section:
            try:
                value = tomllib.loads(f"v = {match[3]}")["v"]
            except tomllib.TOMLDecodeError:
                value = None  # a comment that happens to contain " = "
            else:
                trailing = match[3].split("#", 1)[1] if "#" in match[3] else ""
                found[(section, match[2])] = (value, " ".join([*comments, trailing]))
                comments = []
                continue
        comments = [*comments, line.lstrip("# ")] if line.startswith("#") else []
    return found


def test_every_key_is_in_config_toml_with_its_default_and_unit() -> None:
    documented = documented_keys()
    expected = {(section, key) for section, key, *_ in iter_keys()}
    assert set(documented) == expected
    for section, key, default, unit, _doc in iter_keys():
        value, comment = documented[(section, key)]
        assert value == (list(default) if isinstance(default, tuple) else default), f"{section}.{key}"
        assert f"default: {toml_value(default)}".lower() in comment.lower(), f"{section}.{key}: {comment}"
        if unit and section != "grid_meter":
            assert f"in {unit}" in comment, f"{section}.{key}: unit {unit} not in {comment!r}"


def test_grid_meter_is_commented_out_in_config_toml() -> None:
    text = CONFIG_TOML.read_text(encoding="utf-8")
    assert "\n# [grid_meter]\n" in text
    assert "grid_meter" not in tomllib.loads(text)


# ── types ─────────────────────────────────────────────────────────────────────────────────────────────────
def test_int_is_accepted_for_a_float_and_converted() -> None:
    s = parse_settings({"charger": {"max_current_a": 16}, "sim": {"cable_a": 20}})
    assert s.charger.max_current_a == 16.0
    assert isinstance(s.charger.max_current_a, float)
    assert s.sim.cable_a == 20.0


def test_sections_and_lists() -> None:
    s = parse_settings(
        {
            "auth": {"mode": "free", "allowlist": ["04A2B3C4", "deadbeef"]},
            "grid_meter": {"address": 2},
            "ocpp": {"url": "wss://csms.example.com/ocpp", "security_profile": 2, "authorization_key": KEY},
        }
    )
    assert s.auth == AuthSettings(mode="free", allowlist=("04A2B3C4", "deadbeef"))
    assert s.grid_meter == MeterSettings(address=2)
    assert s.ocpp == OcppSettings(url="wss://csms.example.com/ocpp", security_profile=2, authorization_key=KEY)
    assert parse_settings({"grid_meter": {}}).grid_meter == MeterSettings()


CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("unknown section", {"foo": {}}, ["foo: unknown section"]),
    ("unknown top-level value", {"foo": 1}, ["foo: unknown section"]),
    ("unknown key", {"charger": {"foo": 1}}, ["charger.foo: unknown key"]),
    (
        "misspelt key",
        {"charger": {"max_curent_a": 16}},
        ["charger.max_curent_a: unknown key (did you mean max_current_a?)"],
    ),
    ("odd section name", {"a.b": {}}, ['"a.b": unknown section']),
    ("odd key name", {"charger": {"a b": 1}}, ['charger."a b": unknown key']),
    ("section not a table", {"charger": 5}, ["charger: expected a table"]),
    ("optional section not a table", {"grid_meter": "x"}, ["grid_meter: expected a table"]),
    (
        "string for a number",
        {"charger": {"max_current_a": "abc"}},
        ['charger.max_current_a: expected a number, got a string ("abc")'],
    ),
    (
        "bool for a float",
        {"charger": {"max_current_a": True}},
        ["charger.max_current_a: expected a number, got a boolean (true)"],
    ),
    (
        "bool for an int",
        {"charger": {"phases": True}},
        ["charger.phases: expected an integer, got a boolean (true)"],
    ),
    (
        "float for an int",
        {"charger": {"phases": 3.0}},
        ["charger.phases: expected an integer, got a number (3.0)"],
    ),
    (
        "int for a bool",
        {"charger": {"tethered_cable": 1}},
        ["charger.tethered_cable: expected true or false, got an integer (1)"],
    ),
    ("int for a string", {"hal": {"backend": 1}}, ["hal.backend: expected a string, got an integer (1)"]),
    ("list for a string", {"store": {"dir": ["a"]}}, ["store.dir: expected a string, got a list"]),
    (
        "table for a bool",
        {"contactor": {"feedback": {}}},
        ["contactor.feedback: expected true or false, got a table"],
    ),
    (
        "date for a string",
        {"store": {"dir": datetime.date(2024, 1, 1)}},
        ["store.dir: expected a string, got a date/time"],
    ),
    (
        "float that is not finite",
        {"charger": {"max_current_a": float("nan")}},
        ["charger.max_current_a: expected a finite number, got nan"],
    ),
    ("not one of ints", {"charger": {"phases": 2}}, ["charger.phases: 2 is not one of 1, 3"]),
    ("not one of floats", {"sim": {"cable_a": 16.0}}, ["sim.cable_a: 16.0 is not one of 13, 20, 32, 63"]),
    (
        "not one of strings",
        {"hal": {"backend": "pi"}},
        ['hal.backend: "pi" is not one of "auto", "sim", "rpi"'],
    ),
    (
        "above the maximum",
        {"charger": {"max_current_a": 100}},
        ["charger.max_current_a: 100 is above the maximum 80"],
    ),
    (
        "below the minimum",
        {"charger": {"max_current_a": 5.5}},
        ["charger.max_current_a: 5.5 is below the minimum 6"],
    ),
    (
        "profile out of range",
        {"ocpp": {"security_profile": 4}},
        ["ocpp.security_profile: 4 is above the maximum 3"],
    ),
    (
        "optional section key",
        {"grid_meter": {"address": 0}},
        ["grid_meter.address: 0 is below the minimum 1"],
    ),
    ("empty charger id", {"charger": {"id": ""}}, ["charger.id: must not be empty"]),
    (
        "charger id too long",
        {"charger": {"id": "x" * 49}},
        [f'charger.id: "{"x" * 49}" must be 1 to 48 characters long (got 49)'],
    ),
    (
        "charger id characters",
        {"charger": {"id": "CP 1/a"}},
        ['charger.id: "CP 1/a" may only contain letters, digits, ".", "_" and "-"'],
    ),
    ("empty store dir", {"store": {"dir": ""}}, ["store.dir: must not be empty"]),
    (
        "url scheme",
        {"ocpp": {"url": "http://csms"}},
        ['ocpp.url: "http://csms" must start with ws:// or wss://'],
    ),
    ("url host", {"ocpp": {"url": "ws:///ocpp"}}, ['ocpp.url: "ws:///ocpp" has no host']),
    (
        "url query",
        {"ocpp": {"url": "ws://csms/ocpp?x=1"}},
        ['ocpp.url: "ws://csms/ocpp?x=1" must not have a query or fragment'],
    ),
    (
        "url unparsable",
        {"ocpp": {"url": "ws://[::1/ocpp"}},
        ['ocpp.url: "ws://[::1/ocpp" is not a valid URL (Invalid IPv6 URL)'],
    ),
    ("version", {"ocpp": {"version": 1.6}}, ["ocpp.version: expected a string, got a number (1.6)"]),
    (
        "allowlist not a list",
        {"auth": {"allowlist": "04A2B3C4"}},
        ['auth.allowlist: expected a list of strings, got a string ("04A2B3C4")'],
    ),
    (
        "allowlist items",
        {"auth": {"allowlist": ["04A2B3C4", "", 5, "x" * 21]}},
        [
            "auth.allowlist[1]: must not be empty",
            "auth.allowlist[2]: expected a string, got an integer (5)",
            f'auth.allowlist[3]: "{"x" * 21}" must be 1 to 20 characters long (got 21)',
        ],
    ),
    (
        "free id tag too long",
        {"auth": {"free_id_tag": "x" * 21}},
        [f'auth.free_id_tag: "{"x" * 21}" must be 1 to 20 characters long (got 21)'],
    ),
    # A secret never appears in an error line.
    (
        "secret of the wrong type",
        {"ocpp": {"authorization_key": 1234567890123456}},
        ["ocpp.authorization_key: expected a string, got an integer"],
    ),
    (
        "secret too short",
        {"ocpp": {"authorization_key": "hunter2"}},
        ["ocpp.authorization_key: must be 16 to 40 characters long (got 7)"],
    ),
    (
        "secret too long",
        {"ocpp": {"authorization_key": "k" * 41}},
        ["ocpp.authorization_key: must be 16 to 40 characters long (got 41)"],
    ),
    # cross-field rules
    (
        "profile 1 without a key",
        {"ocpp": {"url": "ws://csms/ocpp", "security_profile": 1}},
        ["ocpp.authorization_key: security profile 1 needs a key of 16 to 40 characters"],
    ),
    (
        "profile 2 without a key and with ws://",
        {"ocpp": {"url": "ws://csms/ocpp", "security_profile": 2}},
        [
            "ocpp.authorization_key: security profile 2 needs a key of 16 to 40 characters",
            "ocpp.url: security profile 2 needs a wss:// url",
        ],
    ),
    (
        "profile 2 without a url",
        {"ocpp": {"security_profile": 2, "authorization_key": KEY}},
        ["ocpp.url: security profile 2 needs a wss:// url"],
    ),
    (
        "profile 3 without cert and key",
        {"ocpp": {"url": "wss://csms/ocpp", "security_profile": 3}},
        [
            "ocpp.client_cert: security profile 3 needs a client certificate file",
            "ocpp.client_key: security profile 3 needs a client key file",
        ],
    ),
    (
        "profile 3 with ws://",
        {
            "ocpp": {
                "url": "ws://csms/ocpp",
                "security_profile": 3,
                "client_cert": "c.pem",
                "client_key": "k.pem",
            }
        },
        ["ocpp.url: security profile 3 needs a wss:// url"],
    ),
    (
        "ocpp mode without a url",
        {"auth": {"mode": "ocpp"}},
        ['auth.mode: "ocpp" needs a CSMS url in ocpp.url'],
    ),
    # a key that already failed does not also trip the rules that depend on it
    (
        "bad url and ocpp mode",
        {"auth": {"mode": "ocpp"}, "ocpp": {"url": "http://csms"}},
        ['ocpp.url: "http://csms" must start with ws:// or wss://'],
    ),
    (
        "bad key and profile 1",
        {"ocpp": {"security_profile": 1, "authorization_key": "short"}},
        ["ocpp.authorization_key: must be 16 to 40 characters long (got 5)"],
    ),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_lines(data: dict[str, Any], expected: list[str]) -> None:
    assert errors_of(data) == expected


@pytest.mark.parametrize(
    "ocpp",
    [
        {"url": "ws://csms/ocpp", "security_profile": 1, "authorization_key": KEY},
        {"url": "wss://csms/ocpp", "security_profile": 1, "authorization_key": KEY},
        {"url": "wss://csms/ocpp", "security_profile": 0},
        {"url": "WSS://csms:8443/ocpp", "security_profile": 2, "authorization_key": "k" * 40},
        {"url": "wss://csms/ocpp", "security_profile": 3, "client_cert": "c.pem", "client_key": "k.pem"},
    ],
)
def test_valid_security_combinations(ocpp: dict[str, Any]) -> None:
    s = parse_settings({"ocpp": ocpp, "auth": {"mode": "ocpp"}})
    assert s.ocpp.url == ocpp["url"]
    assert s.auth.mode == "ocpp"


def test_several_errors_are_all_reported_in_order() -> None:
    data = {
        "bogus": {},
        "charger": {"max_current_a": 100, "phases": 2, "colour": "red"},
        "hal": {"backend": "pi"},
        "ocpp": {"security_profile": 1},
        "auth": {"mode": "ocpp", "allowlist": [1]},
        "logging": "debug",
        "sim": {"ev_soc_percent": -1},
    }
    assert errors_of(data) == [
        "bogus: unknown section",
        "charger.colour: unknown key",
        "charger.max_current_a: 100 is above the maximum 80",
        "charger.phases: 2 is not one of 1, 3",
        'hal.backend: "pi" is not one of "auto", "sim", "rpi"',
        "auth.allowlist[0]: expected a string, got an integer (1)",
        "logging: expected a table",
        "sim.ev_soc_percent: -1 is below the minimum 0",
        "ocpp.authorization_key: security profile 1 needs a key of 16 to 40 characters",
        'auth.mode: "ocpp" needs a CSMS url in ocpp.url',
    ]


def test_config_error_message_and_source(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[charger]\nphases = 2\n[hal]\nbackend = "pi"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.source == str(path)
    assert (
        str(info.value) == 'charger.phases: 2 is not one of 1, 3\nhal.backend: "pi" is not one of "auto", "sim", "rpi"'
    )


# ── files ─────────────────────────────────────────────────────────────────────────────────────────────────
def test_load_a_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[charger]\nid = "CP-7"\nmax_current_a = 16\n\n[grid_meter]\naddress = 2\n')
    s = load_settings(str(path))
    assert s.charger == ChargerSettings(id="CP-7", max_current_a=16.0)
    assert s.grid_meter == MeterSettings(address=2)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert file_errors(path) == [f"config: {path}: file not found"]


def test_unreadable_path_is_a_directory(tmp_path: Path) -> None:
    assert file_errors(tmp_path) == [f"config: {tmp_path}: cannot read (Is a directory)"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    path.chmod(0)
    try:
        assert file_errors(path) == [f"config: {path}: cannot read (Permission denied)"]
    finally:
        path.chmod(0o600)


def test_broken_toml(tmp_path: Path) -> None:
    text = '[charger]\nid = "CP-1\n'
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(tomllib.TOMLDecodeError) as toml_error:
        tomllib.loads(text)
    message = str(toml_error.value)
    assert "line 2, column" in message
    assert file_errors(path) == [f"config: {path}: invalid TOML: {message}"]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[charger]\nid = "\xff"\n')
    assert file_errors(path) == [f"config: {path}: invalid TOML: not UTF-8 (at byte 16)"]


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'\xef\xbb\xbf[charger]\nid = "CP-9"\n')
    assert load_settings(path).charger.id == "CP-9"


# ── find_config ───────────────────────────────────────────────────────────────────────────────────────────
def test_search_paths() -> None:
    assert CONFIG_SEARCH_PATHS == ("config.toml", "/etc/evse/config.toml")


def test_find_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc" / "config.toml"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(config, "CONFIG_SEARCH_PATHS", ("config.toml", str(etc)))
    env = {"EVSE_CONFIG": str(tmp_path / "env.toml")}

    assert find_config(None, {}) is None
    etc.parent.mkdir()
    etc.write_text("")
    assert find_config(None, {}) == etc
    (work / "config.toml").write_text("")
    assert find_config(None, {}) == work / "config.toml"
    assert find_config(None, {"EVSE_CONFIG": ""}) == work / "config.toml"
    # a path the user named is returned even when missing, so the caller reports it
    assert find_config(None, env) == tmp_path / "env.toml"
    assert find_config("given.toml", env) == Path("given.toml")


def test_find_config_reads_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVSE_CONFIG", "/somewhere/evse.toml")
    assert find_config(None) == Path("/somewhere/evse.toml")
    monkeypatch.delenv("EVSE_CONFIG")
    monkeypatch.setattr(config, "CONFIG_SEARCH_PATHS", ("config.toml",))
    assert find_config(None) is None


# ── masked ────────────────────────────────────────────────────────────────────────────────────────────────
def test_masked_hides_the_authorization_key() -> None:
    s = parse_settings(
        {
            "ocpp": {"url": "ws://csms/ocpp", "security_profile": 1, "authorization_key": KEY},
            "auth": {"allowlist": ["AB"]},
        }
    )
    shown = masked(s)
    assert shown["ocpp"]["authorization_key"] == "********"
    assert shown["ocpp"]["url"] == "ws://csms/ocpp"
    assert shown["auth"]["allowlist"] == ["AB"]
    assert "grid_meter" not in shown
    assert KEY not in json.dumps(shown)
    assert set(shown) == {f.name for f in dataclasses.fields(Settings)} - {"grid_meter"}


def test_masked_leaves_an_empty_secret_empty() -> None:
    shown = masked(parse_settings({"grid_meter": {"address": 3}}))
    assert shown["ocpp"]["authorization_key"] == ""
    assert shown["grid_meter"]["address"] == 3
    assert shown["charger"] == dataclasses.asdict(ChargerSettings())


# ── properties ────────────────────────────────────────────────────────────────────────────────────────────
SCALARS = st.one_of(
    st.text(max_size=30),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.datetimes(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def fits(default: Any, value: Any) -> bool:
    """Whether value has the type the key wants (then it is not a wrong-typed value)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    if isinstance(default, tuple):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if isinstance(default, Mapping):
        return isinstance(value, Mapping)  # a table; whether it is a usable one is a rule of its own
    return isinstance(value, type(default))


@settings(max_examples=300)
@given(st.sampled_from(list(iter_keys())), SCALARS, st.data())
def test_wrong_type_names_the_key(key: tuple[str, str, Any, str, str], value: Any, data: st.DataObject) -> None:
    section, name, default, _unit, _doc = key
    if isinstance(default, tuple) and isinstance(value, list):
        value = [*value, data.draw(st.integers())]  # a list with at least one non-string item
    if fits(default, value):
        return
    errors = errors_of({section: {name: value}})
    assert errors, "no error"
    if isinstance(default, tuple) and isinstance(value, list):
        assert all(line.startswith(f"{section}.{name}[") for line in errors), errors
    else:
        assert len(errors) == 1, errors
        assert errors[0].startswith(f"{section}.{name}: expected "), errors


TOML_VALUES = st.recursive(
    st.one_of(st.text(max_size=8), st.integers(), st.floats(), st.booleans(), st.datetimes()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
SECTION_NAMES = st.sampled_from([f.name for f in dataclasses.fields(Settings)]) | st.text(min_size=1, max_size=8)
KEY_NAMES = st.sampled_from(sorted({k for _, k, *_ in iter_keys()})) | st.text(min_size=1, max_size=8)


@settings(max_examples=300)
@given(st.dictionaries(SECTION_NAMES, st.dictionaries(KEY_NAMES, TOML_VALUES, max_size=4) | TOML_VALUES, max_size=4))
def test_any_document_gives_settings_or_config_error(data: dict[str, Any]) -> None:
    try:
        parsed = parse_settings(data)
    except ConfigError as exc:
        assert exc.errors
        # every line names a section of the document (quoted if TOML would quote it), or a cross-checked key
        names = [*data, *(json.dumps(name) for name in data), "ocpp.", "auth."]
        for line in exc.errors:
            assert any(line.startswith(name) for name in names), line
    else:
        assert isinstance(parsed, Settings)


@given(st.floats(6, 80), st.integers(5, 3600), st.sampled_from(["ocpp", "local", "free"]))
def test_values_in_range_are_accepted(current: float, timeout: int, mode: str) -> None:
    s = parse_settings(
        {
            "charger": {"max_current_a": current, "connection_timeout_s": timeout},
            "auth": {"mode": mode},
            "ocpp": {"url": "ws://csms/ocpp"},
        }
    )
    assert (s.charger.max_current_a, s.charger.connection_timeout_s, s.auth.mode) == (current, timeout, mode)


def test_a_custom_meter_map_is_checked_where_it_is_written() -> None:
    registers = {"energy_import": {"address": 342}, "total_power": {"address": 52}}
    good = {"function_code": 4, "defaults": {"type": "float32"}, "registers": registers}
    s = parse_settings({"meter": {"model": "custom", "custom_map": good}})
    assert s.meter.custom_map["registers"]["energy_import"]["address"] == 342
    assert errors_of({"meter": {"model": "custom"}}) == ['meter.custom_map: model "custom" needs its register map here']
    assert errors_of({"meter": {"model": "sdm630", "custom_map": good}}) == [
        'meter.custom_map: only used with model = "custom" (model is "sdm630")'
    ]
    (line,) = errors_of({"meter": {"model": "custom", "custom_map": {"function_code": 7, "registers": {}}}})
    assert line.startswith("meter.custom_map: not a usable register map: ")
    (line,) = errors_of({"grid_meter": {"model": "custom", "custom_map": "sdm630"}})
    assert line == 'grid_meter.custom_map: expected a table, got a string ("sdm630")'
