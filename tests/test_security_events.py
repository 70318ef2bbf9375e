"""Security events (OCPP 1.6 security whitepaper): critical ones through the durable outbox, the others when the
CSMS can be reached, all in the security log; against the Python central system and the strict one."""

from __future__ import annotations

import json
import logging
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from csms.central import TestCentralSystem
from csms.fixtures import central_system, strict_csms_fixture  # noqa: F401
from csms.strict import StrictCentralSystem
from hypothesis import given
from hypothesis import strategies as st
from ocpp.v16 import call
from ocpp_harness import OcppHarness

from firmware.diagnostics.bundle import is_security_record
from firmware.ocpp.v16.security_events import CRITICAL, PENDING_MAX, TYPES

CP = "CP-SEC"


@pytest.fixture
async def harness(central_system: TestCentralSystem) -> AsyncIterator[OcppHarness[TestCentralSystem]]:  # noqa: F811
    h = OcppHarness(central_system, CP, work=Path(tempfile.mkdtemp(prefix="evse-sec-", dir="/tmp")))
    await h.start()
    yield h
    await h.close()


def events(csms: TestCentralSystem) -> list[dict[str, Any]]:
    return csms.payloads("SecurityEventNotification")


def queued_events(work: Path) -> list[dict[str, Any]]:
    rows = sqlite3.connect(work / "evse.db").execute(
        "SELECT payload FROM outbox WHERE action = 'SecurityEventNotification' ORDER BY id"
    )
    return [json.loads(r[0]) for r in rows]


async def test_startup_is_reported_once_with_the_version(harness: OcppHarness[TestCentralSystem]) -> None:
    csms, app = harness.csms, harness.app
    (startup,) = events(csms)
    assert startup["type"] == "StartupOfTheDevice"
    assert app.ocpp.service.firmware_version in startup["techInfo"] and startup["techInfo"].startswith("pievse ")
    assert startup["timestamp"].endswith("Z")
    assert queued_events(harness.work) == []  # delivered, so gone from the outbox


async def test_reset_is_reported_before_the_restart(harness: OcppHarness[TestCentralSystem]) -> None:
    csms, app = harness.csms, harness.app
    assert (await csms.call(CP, call.Reset(type="Soft"))).status == "Accepted"
    await csms.wait_for(lambda: app.restart_requested is not None)
    assert [e["type"] for e in events(csms)] == ["StartupOfTheDevice", "ResetOrReboot"]
    assert events(csms)[-1]["techInfo"] == "Soft reset requested by the CSMS"


async def test_a_new_authorization_key_is_reported_without_the_key(harness: OcppHarness[TestCentralSystem]) -> None:
    csms = harness.csms
    key = "0123456789abcdef0123"
    assert (await csms.call(CP, call.ChangeConfiguration(key="AuthorizationKey", value=key))).status == "Accepted"
    await csms.wait_for(lambda: len(events(csms)) == 2)
    event = events(csms)[1]
    assert event["type"] == "ReconfigurationOfSecurityParameters"
    assert key not in json.dumps(event)


async def test_critical_events_wait_on_disk_while_offline(harness: OcppHarness[TestCentralSystem]) -> None:
    csms, app = harness.csms, harness.app
    port = csms.port
    await csms.stop()
    await csms.wait_for(lambda: not app.ocpp.service.online)
    app.ocpp.service.security.record("TamperDetectionActivated", "enclosure opened")
    app.ocpp.service.security.record("InvalidMessages", "garbage from somewhere")
    # The critical one is on disk (it survives a restart); the other is held in memory.
    assert [e["type"] for e in queued_events(harness.work)] == ["TamperDetectionActivated"]
    assert [e["type"] for e in app.ocpp.service.security.pending] == ["InvalidMessages"]
    csms.received.clear()
    await csms.start(port=port)
    await csms.wait_for(lambda: len(events(csms)) == 2, timeout=10.0)
    assert sorted(e["type"] for e in events(csms)) == ["InvalidMessages", "TamperDetectionActivated"]
    assert app.ocpp.service.security.pending == []
    await csms.wait_for(lambda: queued_events(harness.work) == [])


async def test_refused_credentials_are_reported_once_the_csms_lets_us_in(
    harness: OcppHarness[TestCentralSystem],
) -> None:
    """Each refused attempt is the same event: one FailedToAuthenticateAtCentralSystem, after the key is fixed."""
    csms, app = harness.csms, harness.app
    csms.refuse_status, csms.refuse = HTTPStatus.UNAUTHORIZED, True
    reconnects = app.ocpp.service.connection.reconnects
    await csms.drop(CP)
    await csms.wait_for(lambda: app.ocpp.service.connection.reconnects >= reconnects + 3)
    assert [e["type"] for e in app.ocpp.service.security.pending] == ["FailedToAuthenticateAtCentralSystem"]
    csms.refuse = False
    await csms.wait_for(lambda: len(events(csms)) == 2, timeout=10.0)
    failed = events(csms)[1]
    assert failed["type"] == "FailedToAuthenticateAtCentralSystem"
    assert failed["techInfo"] == "CSMS refused the WebSocket: HTTP 401 (credentials rejected)"


async def test_the_security_log_holds_every_event(
    harness: OcppHarness[TestCentralSystem], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    harness.app.ocpp.service.security.record("InvalidMessages", "a frame that was not JSON")
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    lines = [formatter.format(r) for r in caplog.records if "SecurityEvent" in r.getMessage()]
    assert lines and all(is_security_record(line) for line in lines)


async def test_held_events_are_bounded_and_repeats_collapse(harness: OcppHarness[TestCentralSystem]) -> None:
    csms, app = harness.csms, harness.app
    security = app.ocpp.service.security
    await csms.stop()
    await csms.wait_for(lambda: not app.ocpp.service.online)
    for i in range(PENDING_MAX + 5):
        security.record("InvalidMessages", f"frame {i}")
        security.record("InvalidMessages", f"frame {i}")  # the same again: no new entry
    held = security.pending
    assert len(held) == PENDING_MAX
    assert [e["techInfo"] for e in held] == [f"frame {i}" for i in range(5, PENDING_MAX + 5)]  # the newest


class _Offline:
    async def send_live(self, payload: Any) -> Any | None:
        return None


def _security(path: Path) -> tuple[Any, Any]:
    from firmware.ocpp.outbox import Outbox
    from firmware.ocpp.v16.security_events import SecurityEvents
    from firmware.store import Store
    from hal.clock import FakeClock

    store = Store(path)
    security = SecurityEvents(
        outbox=Outbox(store, wall=lambda: 0.0), clock=FakeClock(), kick=lambda: None, sender=_Offline()
    )
    return store, security


def _queued(store: Any) -> list[tuple[str, dict[str, Any]]]:
    rows = store.conn.execute("SELECT action, payload FROM outbox ORDER BY id").fetchall()
    return [(action, json.loads(payload)) for action, payload in rows]


def test_unknown_types_and_odd_tech_info(tmp_path: Path) -> None:
    store, security = _security(tmp_path / "evse.db")
    with pytest.raises(ValueError, match="NoSuchEvent"):
        security.record("NoSuchEvent")
    security.record("StartupOfTheDevice", "é" * 300)
    security.record("ResetOrReboot")
    (_, first), (_, second) = _queued(store)
    assert first["techInfo"] == "?" * 255  # CiString255: printable ASCII
    assert "techInfo" not in second and second["type"] == "ResetOrReboot"
    store.close()


@given(st.sampled_from(sorted(TYPES)), st.text(max_size=400))
def test_every_type_is_routed_by_criticality(kind: str, tech_info: str) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        store, security = _security(Path(tmp) / "evse.db")
        security.record(kind, tech_info)
        queued = _queued(store)
        if kind in CRITICAL:
            assert [action for action, _ in queued] == ["SecurityEventNotification"] and security.pending == []
            payload = queued[0][1]
        else:
            assert queued == [] and len(security.pending) == 1
            payload = security.pending[0]
        assert payload["type"] == kind
        info = payload.get("techInfo", "")
        assert len(info) <= 255 and all(" " <= c <= "~" for c in info)
        store.close()


async def test_events_are_schema_valid_on_the_strict_csms(strict_csms: StrictCentralSystem) -> None:
    h = OcppHarness(strict_csms, "CP-SEC-STRICT", work_prefix="evse-sec-strict-")
    await h.start()
    try:
        h.app.ocpp.service.security.record("InvalidMessages", "x" * 255)
        await strict_csms.wait_for(lambda: len(strict_csms.received("SecurityEventNotification")) == 2)
        assert [p["type"] for p in strict_csms.received("SecurityEventNotification")] == [
            "StartupOfTheDevice",
            "InvalidMessages",
        ]
    finally:
        await h.close()
    assert [v for v in strict_csms.violations if v["client"] == "CP-SEC-STRICT"] == []
