"""GetDiagnostics and GetLog end to end: the whole charge point against the test central systems, uploading to
real HTTP and FTP servers on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from csms.central import TestCentralSystem
from csms.fixtures import central_system_fixture, strict_csms_fixture  # noqa: F401
from csms.strict import StrictCentralSystem
from diagnostics_peers import UploadFtpServer, UploadHttpServer
from ocpp.v16 import call, call_result
from ocpp_harness import OcppHarness

from firmware.ocpp.v16.diagnostics import OcppDiagnostics

CP = "CP-DIAG"
NAME = re.compile(r"CP-DIAG-(diagnostics|securitylog)-\d{8}T\d{6}Z\.tar\.gz")
LOG_LINES = (
    "2026-01-01T00:00:00.000+00:00 INFO firmware.ocpp.connection: connected to ws://csms (subprotocol ocpp1.6)\n"
    "2026-01-01T00:00:05.000+00:00 INFO firmware.charging: state A -> B\n"
)


class Harness(OcppHarness[TestCentralSystem]):
    def __init__(self, csms: TestCentralSystem) -> None:
        super().__init__(csms, CP, work=Path(tempfile.mkdtemp(prefix="evse-diag-", dir="/tmp")))
        (self.work / "evse.log").write_text(LOG_LINES)

    @property
    def diagnostics(self) -> OcppDiagnostics:
        diagnostics = self.app.ocpp.service.diagnostics
        assert diagnostics is not None
        return diagnostics

    def statuses(self, action: str = "DiagnosticsStatusNotification") -> list[Any]:
        return [p["status"] for p in self.csms.payloads(action)]

    def log_statuses(self) -> list[tuple[int, str]]:
        return [(p["requestId"], p["status"]) for p in self.csms.payloads("LogStatusNotification")]


def answer_log_status(csms: TestCentralSystem) -> None:
    """The test central system has no LogStatusNotification handler (a security-extension message): add one."""

    def on_log_status(**kwargs: Any) -> Any:
        return call_result.LogStatusNotification()

    csms.charge_point(CP).route_map["LogStatusNotification"] = {"_on_action": on_log_status}


@pytest.fixture
async def harness(central_system: TestCentralSystem) -> AsyncIterator[Harness]:
    h = Harness(central_system)
    await h.start()
    answer_log_status(central_system)
    yield h
    await h.diagnostics.close()
    await h.close()


@pytest.fixture
def http() -> Any:
    with UploadHttpServer() as server:
        yield server


def bundle_is_intact(data: bytes) -> dict[str, bytes]:
    """The members of a received bundle, after checking each against the manifest's sha256."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {}
        for info in tar.getmembers():
            handle = tar.extractfile(info)
            assert handle is not None
            members[info.name.split("/", 1)[1]] = handle.read()
    manifest = json.loads(members.pop("manifest.json"))
    assert {m["name"] for m in manifest["members"]} == set(members)
    for m in manifest["members"]:
        assert hashlib.sha256(members[m["name"]]).hexdigest() == m["sha256"]
    return members


def wire(csms: TestCentralSystem) -> list[tuple[str, Any]]:
    """(direction, parsed frame) of every frame with the charger, in order."""
    return [(d, json.loads(text)) for cp, d, text in csms.frames if cp == CP]


async def test_get_diagnostics_uploads_by_http_and_reports_each_status(harness: Harness, http: Any) -> None:
    csms = harness.csms
    result = await csms.call(
        CP,
        call.GetDiagnostics(
            location=http.url + "/diagnostics/",
            start_time="2025-12-31T00:00:00Z",
            stop_time="2026-01-02T00:00:00Z",
        ),
    )
    assert result.file_name is not None and NAME.fullmatch(result.file_name)
    await csms.wait_for(lambda: harness.statuses() == ["Uploading", "Uploaded"])
    assert list(http.files) == [result.file_name]
    members = bundle_is_intact(http.files[result.file_name])
    assert members["logs/evse.log"].decode() == LOG_LINES
    assert {"config.json", "sessions.csv", "status.json", "versions.json"} <= set(members)
    # on the wire: the answer first, then the notifications
    frames = wire(csms)
    answer = next(i for i, (d, f) in enumerate(frames) if d == "in" and f[0] == 3 and "fileName" in f[2])
    notes = [
        i for i, (d, f) in enumerate(frames) if d == "in" and f[0] == 2 and f[2] == "DiagnosticsStatusNotification"
    ]
    assert answer < notes[0] < notes[1]
    assert harness.diagnostics.status() == "Idle"
    assert list((harness.work / "diagnostics").iterdir()) == []  # the local copy is gone


async def test_refused_upload_fails_after_the_retries(harness: Harness, http: Any) -> None:
    csms = harness.csms
    http.status = 500
    result = await csms.call(CP, call.GetDiagnostics(location=http.url + "/", retries=2, retry_interval=30))
    assert result.file_name is not None
    await csms.wait_for(lambda: harness.diagnostics.next_attempt_at("diagnostics"))
    assert http.requests == 1
    assert harness.diagnostics.next_attempt_at("diagnostics") == harness.clock.monotonic() + 30
    assert harness.statuses() == ["Uploading"]
    trigger = await csms.call(CP, call.TriggerMessage(requested_message="DiagnosticsStatusNotification"))
    assert trigger.status == "Accepted"
    await csms.wait_for(lambda: len(harness.statuses()) == 2)
    assert harness.statuses() == ["Uploading", "Uploading"]  # the triggered one: still busy (retry wait)
    await harness.advance(20.0, dt=1.0)
    await asyncio.sleep(0.4)
    assert http.requests == 1  # retryInterval not over yet
    await harness.advance(10.0, dt=1.0)
    await csms.wait_for(lambda: http.requests == 2)
    await csms.wait_for(lambda: harness.diagnostics.next_attempt_at("diagnostics"))
    assert harness.statuses()[-1] == "Uploading"
    await harness.advance(30.0, dt=1.0)
    await csms.wait_for(lambda: harness.statuses()[-1] == "UploadFailed")
    assert http.requests == 3 and http.files == {}
    assert harness.statuses() == ["Uploading", "Uploading", "UploadFailed"]
    await csms.call(CP, call.TriggerMessage(requested_message="DiagnosticsStatusNotification"))
    await csms.wait_for(lambda: len(harness.statuses()) == 4)
    assert harness.statuses()[-1] == "Idle"


@pytest.mark.parametrize(
    "request_payload",
    [
        {"location": "sftp://example.com/up/"},
        {"location": "not a url"},
        {"location": "http://127.0.0.1:9/", "start_time": "yesterday"},
        {"location": "http://127.0.0.1:9/", "stop_time": "2026-02-30T00:00:00Z"},
    ],
)
async def test_unusable_get_diagnostics_gets_no_file_name(harness: Harness, request_payload: dict[str, Any]) -> None:
    csms = harness.csms
    result = await csms.call(CP, call.GetDiagnostics(**request_payload))
    assert result.file_name is None
    answer = [f for d, f in wire(csms) if d == "in" and f[0] == 3][-1]
    assert answer[2] == {}
    await asyncio.sleep(0.2)
    assert harness.statuses() == []


async def test_a_second_get_diagnostics_supersedes_the_first(harness: Harness, http: Any) -> None:
    csms = harness.csms
    http.status = 500
    first = await csms.call(CP, call.GetDiagnostics(location=http.url + "/", retries=5, retry_interval=600))
    await csms.wait_for(lambda: harness.diagnostics.next_attempt_at("diagnostics"))
    http.status = 200
    harness.clock.advance(1.0)  # a different second, so a different file name
    second = await csms.call(CP, call.GetDiagnostics(location=http.url + "/"))
    assert second.file_name is not None and second.file_name != first.file_name
    await csms.wait_for(lambda: harness.statuses()[-1] == "Uploaded")
    assert harness.statuses() == ["Uploading", "Uploading", "Uploaded"]
    assert list(http.files) == [second.file_name]
    await harness.advance(600.0, dt=10.0)
    await asyncio.sleep(0.4)
    assert http.requests == 2  # the first never tried again


async def test_statuses_not_sent_while_offline_are_not_sent_later(harness: Harness, http: Any) -> None:
    csms = harness.csms
    http.status = 500
    await csms.call(CP, call.GetDiagnostics(location=http.url + "/", retries=1, retry_interval=30))
    await csms.wait_for(lambda: harness.diagnostics.next_attempt_at("diagnostics"))
    csms.refuse = True
    await csms.drop(CP)
    await harness.advance(30.0, dt=1.0)
    await csms.wait_for(lambda: http.requests == 2)
    await asyncio.sleep(0.3)
    assert harness.diagnostics.status() == "Idle"  # the job ended (UploadFailed could not be sent)
    csms.refuse = False
    await csms.wait_for(lambda: harness.app.ocpp.service.online, timeout=10)
    await asyncio.sleep(0.3)
    assert harness.statuses() == ["Uploading"]
    await csms.call(CP, call.TriggerMessage(requested_message="DiagnosticsStatusNotification"))
    await csms.wait_for(lambda: len(harness.statuses()) == 2)
    assert harness.statuses() == ["Uploading", "Idle"]


async def test_get_log_by_ftp(harness: Harness, tmp_path: Path) -> None:
    csms = harness.csms
    with UploadFtpServer(tmp_path / "ftp") as ftp:
        result = await csms.call(
            CP,
            call.GetLog(
                log_type="DiagnosticsLog",
                request_id=7,
                log={"remote_location": ftp.url(), "oldest_timestamp": "2025-12-31T23:00:00Z"},
            ),
        )
        assert result.status == "Accepted" and NAME.fullmatch(result.filename)
        await csms.wait_for(lambda: harness.log_statuses() == [(7, "Uploading"), (7, "Uploaded")])
        files = ftp.files()
    assert list(files) == [f"upload/{result.filename}"]
    members = bundle_is_intact(files[f"upload/{result.filename}"])
    assert members["logs/evse.log"].decode() == LOG_LINES


async def test_security_log_holds_the_security_records(harness: Harness, http: Any) -> None:
    csms = harness.csms
    result = await csms.call(
        CP, call.GetLog(log_type="SecurityLog", request_id=8, log={"remote_location": http.url + "/sec/"})
    )
    assert result.status == "Accepted" and "-securitylog-" in result.filename
    await csms.wait_for(lambda: harness.log_statuses() == [(8, "Uploading"), (8, "Uploaded")])
    members = bundle_is_intact(http.files[result.filename])
    assert members["logs/security.log"].decode() == LOG_LINES.splitlines(keepends=True)[0]
    assert "config.json" not in members and "sessions.csv" not in members


async def test_get_log_refused_by_the_ftp_server(harness: Harness, tmp_path: Path) -> None:
    csms = harness.csms
    with UploadFtpServer(tmp_path / "ftp") as ftp:
        result = await csms.call(
            CP,
            call.GetLog(log_type="DiagnosticsLog", request_id=9, log={"remote_location": ftp.url(password="nope")}),
        )
        assert result.status == "Accepted"
        await csms.wait_for(lambda: len(harness.log_statuses()) == 2)
        assert ftp.files() == {}
    assert harness.log_statuses() == [(9, "Uploading"), (9, "PermissionDenied")]


async def test_get_log_http_failure_after_retries(harness: Harness, http: Any) -> None:
    csms = harness.csms
    http.status = 503
    await csms.call(
        CP,
        call.GetLog(
            log_type="DiagnosticsLog",
            request_id=10,
            log={"remote_location": http.url + "/"},
            retries=1,
            retry_interval=5,
        ),
    )
    await csms.wait_for(lambda: harness.diagnostics.next_attempt_at("log"))
    # Waiting to retry is still uploading: ExtendedTriggerMessage reports it with the GetLog's requestId.
    trigger = await csms.call(CP, call.ExtendedTriggerMessage(requested_message="LogStatusNotification"))
    assert trigger.status == "Accepted"
    await csms.wait_for(lambda: len(harness.log_statuses()) == 2)
    await harness.advance(5.0, dt=1.0)
    await csms.wait_for(lambda: len(harness.log_statuses()) == 3)
    assert harness.log_statuses() == [(10, "Uploading"), (10, "Uploading"), (10, "UploadFailure")]
    assert http.requests == 2


@pytest.mark.parametrize(
    "log",
    [
        {"remote_location": "gopher://example.com/"},
        {"remote_location": "http://127.0.0.1:9/", "oldest_timestamp": "not a time"},
        {"remote_location": ""},
    ],
)
async def test_unusable_get_log_is_rejected(harness: Harness, log: dict[str, Any]) -> None:
    result = await harness.csms.call(CP, call.GetLog(log_type="DiagnosticsLog", request_id=11, log=log))
    assert result.status == "Rejected" and result.filename is None
    await asyncio.sleep(0.2)
    assert harness.log_statuses() == []


async def test_a_new_get_log_cancels_the_running_one(harness: Harness, http: Any) -> None:
    csms = harness.csms
    http.status = 500
    first = await csms.call(
        CP,
        call.GetLog(
            log_type="DiagnosticsLog",
            request_id=1,
            log={"remote_location": http.url + "/"},
            retries=3,
            retry_interval=600,
        ),
    )
    assert first.status == "Accepted"
    await csms.wait_for(lambda: harness.diagnostics.next_attempt_at("log"))
    http.status = 200
    second = await csms.call(
        CP, call.GetLog(log_type="SecurityLog", request_id=2, log={"remote_location": http.url + "/"})
    )
    assert second.status == "AcceptedCanceled"
    await csms.wait_for(lambda: (2, "Uploaded") in harness.log_statuses())
    assert harness.log_statuses() == [(1, "Uploading"), (2, "Uploading"), (2, "Uploaded")]
    assert list(http.files) == [second.filename]


async def test_every_diagnostics_frame_is_schema_valid(strict_csms: StrictCentralSystem, tmp_path: Path) -> None:
    """GetDiagnostics and GetLog flows against the strict peer (ocpp-rpc strictMode): no schema violation."""
    h = OcppHarness(strict_csms, CP, response_timeout_s=5.0, work=tmp_path / "work", serve_api=False)
    (tmp_path / "work").mkdir(exist_ok=True)
    (tmp_path / "work" / "evse.log").write_text(LOG_LINES)
    await h.start()
    diagnostics = h.app.ocpp.service.diagnostics
    assert diagnostics is not None
    try:
        with UploadHttpServer() as server, UploadFtpServer(tmp_path / "ftp") as ftp:
            answer = await strict_csms.call(
                CP,
                "GetDiagnostics",
                {"location": server.url + "/d/", "startTime": "2025-12-31T00:00:00Z", "retries": 1, "retryInterval": 1},
            )
            assert NAME.fullmatch(answer["fileName"])
            await strict_csms.wait_for(lambda: strict_csms.count("DiagnosticsStatusNotification") == 2)
            refused = await strict_csms.call(CP, "GetDiagnostics", {"location": "sftp://x/"})
            assert refused == {}
            log = await strict_csms.call(
                CP,
                "GetLog",
                {"logType": "SecurityLog", "requestId": 42, "log": {"remoteLocation": ftp.url()}, "retries": 0},
            )
            assert log["status"] == "Accepted" and NAME.fullmatch(log["filename"])
            await strict_csms.wait_for(lambda: strict_csms.count("LogStatusNotification") == 2)
            rejected = await strict_csms.call(
                CP, "GetLog", {"logType": "DiagnosticsLog", "requestId": 43, "log": {"remoteLocation": "x"}}
            )
            assert rejected == {"status": "Rejected"}
            assert (
                await strict_csms.call(CP, "TriggerMessage", {"requestedMessage": "DiagnosticsStatusNotification"})
            )["status"] == "Accepted"
            await strict_csms.wait_for(lambda: strict_csms.count("DiagnosticsStatusNotification") == 3)
            await asyncio.sleep(0.2)
            assert answer["fileName"] in server.files and f"upload/{log['filename']}" in ftp.files()
    finally:
        await diagnostics.close()
        await h.close()
    assert [p["status"] for p in strict_csms.received("DiagnosticsStatusNotification")] == [
        "Uploading",
        "Uploaded",
        "Idle",
    ]
    assert [(p["requestId"], p["status"]) for p in strict_csms.received("LogStatusNotification")] == [
        (42, "Uploading"),
        (42, "Uploaded"),
    ]
    sent = [f for f in strict_csms.frames if f["dir"] == "in" and f["client"] == CP]
    results = [f for f in sent if isinstance(f["frame"], list) and f["frame"][0] == 3]
    assert len(results) >= 5
    violations = [v for v in strict_csms.violations if v["client"] == CP]
    assert violations == [], violations
