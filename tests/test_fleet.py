"""The fleet simulator: fifty real chargers against the strict CSMS, two chargers that must share nothing,
and the scenario file's validation."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from csms.central import TestCentralSystem
from csms.fixtures import central_system_fixture, strict_csms_fixture  # noqa: F401
from csms.strict import StrictCentralSystem
from hypothesis import given
from hypothesis import strategies as st
from ocpp.v16 import call

from firmware.app import ChargePointApp
from firmware.charging.connector import Status
from firmware.config import Settings
from firmware.fleet.charger import charger_settings
from firmware.fleet.runner import Fleet, FleetOptions, format_report
from firmware.fleet.scenario import Scenario, ScenarioError, load_scenario, scenario_from_mapping
from firmware.fleet.stats import percentile


def _work(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


# ---- fifty chargers, strict CSMS ---------------------------------------------------------------------
async def test_fifty_chargers_against_the_strict_csms(strict_csms: StrictCentralSystem) -> None:
    """0 schema violations, and the report's per-action counts equal what the central system received."""
    csms = strict_csms
    scenario = Scenario(
        arrivals_per_hour=900.0,  # an EV every 4 s per charger on average: sessions within a short run
        dwell_mean_minutes=0.15,
        dwell_min_minutes=0.1,
        energy_mean_kwh=1.0,
        energy_sd_kwh=0.2,
        unknown_card_share=0.1,
        ramp_up_s=3.0,
        expect_csms_actions=("ChangeConfiguration", "RemoteStartTransaction"),
        seed=7,
    )
    fleet = Fleet(Settings(), scenario, FleetOptions(count=50, url=csms.url, duration_s=25.0, work_dir=_work("fleet-")))
    ids = [c.id for c in fleet.chargers]
    assert len(set(ids)) == 50 and ids[0] == "CP-0001"

    async def configure() -> None:
        # What a CSMS does after a boot: ask for meter values every 3 s (the chargers then send MeterValues).
        await csms.wait_for(lambda: all(csms.connected(i) for i in ids) and csms.count("BootNotification") >= 50, 15)
        for charger_id in ids:
            await csms.call(charger_id, "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "3"})

    configurer = asyncio.create_task(configure())
    report = await fleet.run()
    await configurer

    fleet_counts = {action: row["sent"] for action, row in report["messages"].items()}
    await csms.wait_for(lambda: sum(csms.count(a) for a in fleet_counts) >= report["messages_sent_total"], 10)
    central_counts = Counter(f["frame"][2] for f in csms.calls())
    assert dict(central_counts) == fleet_counts
    assert csms.violations == []
    assert report["failures"] == {}
    assert report["csms_calls"] == {"ChangeConfiguration": 50}
    assert report["expected_csms_actions_missing"] == ["RemoteStartTransaction"]
    assert fleet_counts["BootNotification"] == 50
    assert fleet_counts["MeterValues"] > 0 and fleet_counts["StartTransaction"] > 0
    sessions = report["sessions"]
    assert sessions["completed"] > 0 and sessions["energy_kwh"] > 0
    # A session that began (or ended) in the last instants may still have its message in the queue at the end.
    queued = report["end"]["queued"]
    assert 0 <= sessions["started"] - fleet_counts["StartTransaction"] <= queued
    assert 0 <= sessions["completed"] - fleet_counts["StopTransaction"] <= queued
    # The strict peer accepts every card, so the unknown ones charge too; still, each was presented.
    assert sessions["rejected"] == 0
    table = format_report(report)
    assert "BootNotification" in table and "50 chargers" in table
    json.dumps(report)  # the JSON report is plain data


# ---- two chargers in one process share nothing ----------------------------------------------------
def _settings(charger_id: str, url: str, work: Path, max_current_a: float) -> Settings:
    base = Settings()
    base = replace(base, charger=replace(base.charger, max_current_a=max_current_a))
    return charger_settings(base, charger_id, url, work / charger_id)


async def test_two_chargers_in_one_process_share_nothing(central_system: TestCentralSystem) -> None:
    csms = central_system
    work = _work("fleet-two-")
    (work / "CP-A").mkdir()
    (work / "CP-B").mkdir()
    a = ChargePointApp(_settings("CP-A", csms.url, work, 16.0), sim_tick_s=0.05, control_tick_s=0.05)
    b = ChargePointApp(_settings("CP-B", csms.url, work, 32.0), sim_tick_s=0.05, control_tick_s=0.05)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(app.run(stop, serve_api=False)) for app in (a, b)]
    try:
        await csms.wait_for(lambda: csms.connected("CP-A") and csms.connected("CP-B"), 10)
        # Booted on the charger's side: the central system counts a BootNotification when it arrives, before its
        # answer (whose interval sets HeartbeatInterval) has reached the charger.
        await csms.wait_for(lambda: all(app.ocpp is not None and app.ocpp.service.online for app in (a, b)), 10)
        # Configuration, local list and a charging profile go to A only.
        await csms.call("CP-A", call.ChangeConfiguration(key="HeartbeatInterval", value="77"))
        await csms.call(
            "CP-A",
            call.SendLocalList(
                list_version=5,
                update_type="Full",
                local_authorization_list=[{"idTag": "ONLYA", "idTagInfo": {"status": "Accepted"}}],
            ),
        )
        await csms.call(
            "CP-A",
            call.SetChargingProfile(
                connector_id=1,
                cs_charging_profiles={
                    "chargingProfileId": 1,
                    "stackLevel": 0,
                    "chargingProfilePurpose": "TxDefaultProfile",
                    "chargingProfileKind": "Absolute",
                    "chargingSchedule": {
                        "chargingRateUnit": "A",
                        "startSchedule": "2020-01-01T00:00:00Z",
                        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}],
                    },
                },
            ),
        )
        # A session on A only.
        assert a.sim is not None and b.sim is not None
        a.sim.plug()
        b.sim.plug()
        decision = await a.sessions.present_id_tag("CARDA")
        assert decision is not None and decision.accepted
        await csms.wait_for(lambda: a.controller.connector.status is Status.CHARGING, 10)
        await csms.wait_for(lambda: csms.count("StartTransaction") >= 1, 10)
        await asyncio.sleep(0.3)  # a few control ticks for B, which has no session
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    assert a.ocpp is not None and b.ocpp is not None
    starts = [r for r in csms.received if r.action == "StartTransaction"]
    assert [r.charge_point_id for r in starts] == ["CP-A"]
    assert a.settings.charger.id == "CP-A" and b.settings.charger.id == "CP-B"
    # Offered current: A obeys its own 16 A and then the 10 A profile; B never had a session and offers none.
    assert a.controller.offered_a == 0.0  # stopped safe
    assert b.controller.connector.status is Status.PREPARING
    # Stores: separate files, the transaction only in A's.
    rows_a = sqlite3.connect(work / "CP-A" / "evse.db").execute("SELECT id_tag FROM transactions").fetchall()
    rows_b = sqlite3.connect(work / "CP-B" / "evse.db").execute("SELECT id_tag FROM transactions").fetchall()
    assert rows_a == [("CARDA",)] and rows_b == []
    profiles_b = sqlite3.connect(work / "CP-B" / "evse.db").execute("SELECT COUNT(*) FROM charging_profiles")
    assert profiles_b.fetchone() == (0,)
    kv_b = dict(sqlite3.connect(work / "CP-B" / "evse.db").execute("SELECT key, value FROM kv").fetchall())
    assert not any("ONLYA" in v for v in kv_b.values())
    assert "ocpp.key.HeartbeatInterval" not in kv_b or kv_b["ocpp.key.HeartbeatInterval"] != "77"
    kv_a = dict(sqlite3.connect(work / "CP-A" / "evse.db").execute("SELECT key, value FROM kv").fetchall())
    assert kv_a.get("ocpp.key.HeartbeatInterval") == "77"
    # In-memory state is separate too.
    assert a.ocpp.local_list is not b.ocpp.local_list
    assert a.arbiter is not b.arbiter
    assert a.controller.connector is not b.controller.connector
    assert b.ocpp.configuration.get_int("HeartbeatInterval") != 77


async def test_each_charger_sees_only_its_own_settings(central_system: TestCentralSystem) -> None:
    """Max current differs per charger: the PWM each offers follows its own setting."""
    csms = central_system
    work = _work("fleet-pwm-")
    for name in ("CP-16", "CP-32"):
        (work / name).mkdir()
    low = ChargePointApp(_settings("CP-16", csms.url, work, 16.0), sim_tick_s=0.05, control_tick_s=0.05)
    high = ChargePointApp(_settings("CP-32", csms.url, work, 32.0), sim_tick_s=0.05, control_tick_s=0.05)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(app.run(stop, serve_api=False)) for app in (low, high)]
    offered: dict[str, float] = {}
    try:
        for app in (low, high):
            await csms.wait_for(lambda app=app: app.ocpp is not None and app.ocpp.service.online, 10)
            assert app.sim is not None
            app.sim.plug()
            decision = await app.sessions.present_id_tag(f"TAG-{app.settings.charger.id}")
            assert decision is not None and decision.accepted
        for app in (low, high):
            await csms.wait_for(lambda app=app: app.controller.offered_a > 0, 10)
            offered[app.settings.charger.id] = app.controller.offered_a
        await csms.wait_for(lambda: csms.count("StartTransaction") >= 2, 10)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert offered == {"CP-16": 16.0, "CP-32": 32.0}
    tags = {r.charge_point_id: r.payload.get("idTag") for r in csms.received if r.action == "StartTransaction"}
    assert tags == {"CP-16": "TAG-CP-16", "CP-32": "TAG-CP-32"}


# ---- scenario file --------------------------------------------------------------------------------
def test_scenario_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        "arrivals_per_hour = 2.5\ndwell_mean_minutes = 90\nev_max_current_a = [16, 20]\n"
        'unknown_card_share = 0.2\nramp_up_s = 120\nexpect_csms_actions = ["SetChargingProfile"]\nseed = 3\n'
    )
    s = load_scenario(path)
    assert s == Scenario(
        arrivals_per_hour=2.5,
        dwell_mean_minutes=90.0,
        ev_max_current_a=(16.0, 20.0),
        unknown_card_share=0.2,
        ramp_up_s=120.0,
        expect_csms_actions=("SetChargingProfile",),
        seed=3,
    )
    assert load_scenario(None) == Scenario()


def test_scenario_errors_name_every_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('arrivals_per_hour = -1\ncards = 2.5\nev_max_current_a = [3]\ncolour = "red"\n')
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    lines = info.value.errors
    assert len(lines) == 4
    for key in ("arrivals_per_hour", "cards", "ev_max_current_a", "colour"):
        assert any(line.startswith(f"{path}: {key}:") for line in lines), key
    path.write_text("arrivals_per_hour = [")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(path)


_toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@given(st.dictionaries(st.sampled_from([*Scenario.__dataclass_fields__, "other"]), _toml_values, max_size=6))
def test_any_scenario_mapping_gives_a_scenario_or_a_scenario_error(data: dict[str, Any]) -> None:
    try:
        s = scenario_from_mapping(data)
    except ScenarioError as exc:
        assert exc.errors and all(line.split(":")[0] in data for line in exc.errors)
        return
    assert 0 <= s.unknown_card_share <= 1 and s.ev_max_current_a and s.cards >= 1


@given(st.integers(min_value=0, max_value=10_000), st.floats(min_value=0, max_value=3600))
def test_scenario_streams_are_reproducible_and_valid(index: int, rate: float) -> None:
    s = Scenario(arrivals_per_hour=rate)
    r1, r2 = s.rng(index), s.rng(index)
    assert [s.next_arrival_s(r1) for _ in range(3)] == [s.next_arrival_s(r2) for _ in range(3)]
    assert s.dwell_s(r1) >= 60.0 * s.dwell_min_minutes
    assert 1.0 <= s.energy_kwh(r1) <= 0.9 * s.battery_kwh
    tag, known = s.card(r1)
    assert (len(tag) == 8) == known and (len(tag) == 14) == (not known)
    assert 0.0 <= s.boot_delay_s(r1) <= s.ramp_up_s


@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=50),
    st.sampled_from([50, 90, 99, 100]),
)
def test_percentile_is_the_nearest_rank(values: list[float], q: int) -> None:
    ordered = sorted(values)
    p = percentile(ordered, q)
    assert p in ordered
    at_or_below = sum(1 for v in ordered if v <= p)
    assert at_or_below >= q / 100 * len(ordered)
    assert sum(1 for v in ordered if v < p) < q / 100 * len(ordered) or q == 0
