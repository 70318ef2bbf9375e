"""The control socket and the evse CLI, end to end: a real ControlServer with fake handlers, driven by raw
socket lines and by ``cli.main`` (in a worker thread, so the server keeps running on the test's loop)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from firmware import cli
from firmware.api import MAX_LINE, ApiError, ControlServer, Handler
from firmware.apiclient import ApiClient, DaemonUnavailable, RemoteError

STATUS: dict[str, Any] = {
    "state": "C",
    "connector_status": "Charging",
    "contactor": "closed",
    "duty_percent": 26.7,
    "offered_a": 16.0,
    "limit": {"winner": "config", "value_a": 16.0},
    "meter": {
        "power_w": 11040.0,
        "energy_wh": 123456.0,
        "current_a": [16.0, 16.0, 15.9],
        "voltage_v": [230.1, 229.8, 231.0],
    },
    "transaction": {
        "id": 42,
        "id_tag": "04A32BC1",
        "started_at": "2026-11-27T05:14:26+00:00",
        "energy_wh": 3210.0,
        "cost": None,
    },
    "ocpp": {"connected": True, "queued": 3},
    "faults": [],
}

LIMITS: dict[str, Any] = {
    "winner": {"source": "cable", "value_a": 20.0, "reason": "PP 20 A cable"},
    "claims": [
        {
            "source": "hardware",
            "value_a": 32.0,
            "phases": 3,
            "age_s": 125.4,
            "expires_in_s": None,
            "reason": "charger.max_current_a",
            "winner": False,
        },
        {
            "source": "cable",
            "value_a": 20.0,
            "phases": None,
            "age_s": 4.0,
            "expires_in_s": None,
            "reason": "PP 20 A cable",
            "winner": True,
        },
        {
            "source": "manual",
            "value_a": 25.5,
            "phases": 1,
            "age_s": 3725.0,
            "expires_in_s": 600.0,
            "reason": "",
            "winner": False,
        },
    ],
}


@dataclass
class Daemon:
    """What the fake handlers saw, and switches to make them misbehave."""

    path: str
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=lambda: dict(STATUS))
    sim_result: Any = None
    sim_refuses: bool = False


def _handlers(daemon: Daemon) -> dict[str, Handler]:
    async def status(args: dict[str, Any]) -> Any:
        daemon.requests.append(("status", args))
        return daemon.status

    async def limits(args: dict[str, Any]) -> Any:
        daemon.requests.append(("limits", args))
        return LIMITS

    async def sim(args: dict[str, Any]) -> Any:
        daemon.requests.append(("sim", args))
        if daemon.sim_refuses:
            raise ApiError("no simulated hardware")
        return daemon.sim_result

    async def echo(args: dict[str, Any]) -> Any:
        return args

    async def refuse(args: dict[str, Any]) -> Any:
        raise ApiError("no simulated hardware")

    async def boom(args: dict[str, Any]) -> Any:
        raise RuntimeError("boom")

    async def when(args: dict[str, Any]) -> Any:
        return {"at": datetime(2026, 11, 27, 5, 14, 26, tzinfo=UTC)}

    async def unsendable(args: dict[str, Any]) -> Any:
        return object()

    return {
        "status": status,
        "limits": limits,
        "sim": sim,
        "echo": echo,
        "refuse": refuse,
        "boom": boom,
        "when": when,
        "unsendable": unsendable,
    }


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory: Unix socket paths must fit in 108 bytes, pytest's tmp_path may not."""
    path = Path(tempfile.mkdtemp(prefix="evse-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def daemon(sock_dir: Path) -> AsyncIterator[Daemon]:
    state = Daemon(path=str(sock_dir / "run" / "control.sock"))
    async with ControlServer(state.path, _handlers(state)):
        yield state


async def evse(*argv: str) -> int:
    """Run the CLI off the loop, as a separate process would."""
    return await asyncio.to_thread(cli.main, list(argv))


class Conn:
    """A raw JSON-lines connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: str) -> Conn:
        reader, writer = await asyncio.open_unix_connection(path, limit=4 * MAX_LINE)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> Any:
        self.writer.write(raw)
        await self.writer.drain()
        line = await asyncio.wait_for(self.reader.readline(), 5)
        assert line.endswith(b"\n"), line
        return json.loads(line)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


# --- the server ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reply"),
    [
        (b'{"cmd": "echo", "args": {"a": 1}}\n', {"ok": True, "result": {"a": 1}}),
        (b'{"cmd": "echo"}\n', {"ok": True, "result": {}}),
        (b'{"cmd": "echo", "args": null}\n', {"ok": True, "result": {}}),
        (
            b"{nope\n",
            {
                "ok": False,
                "error": "bad request: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
            },
        ),
        (b"\xff\xfe\n", {"ok": False, "error": "bad request: not UTF-8"}),
        (b"[1, 2]\n", {"ok": False, "error": 'bad request: expected a JSON object like {"cmd": "status"}'}),
        (b"{}\n", {"ok": False, "error": 'bad request: missing "cmd"'}),
        (b'{"cmd": 7}\n', {"ok": False, "error": 'bad request: "cmd" must be a string'}),
        (b'{"cmd": "echo", "args": [1]}\n', {"ok": False, "error": 'bad request: "args" must be an object'}),
        (
            b'{"cmd": "fly"}\n',
            {
                "ok": False,
                "error": "unknown command 'fly' (known: boom, echo, limits, refuse, sim, status, unsendable, when)",
            },
        ),
        (b'{"cmd": "refuse"}\n', {"ok": False, "error": "no simulated hardware"}),
        (b'{"cmd": "boom"}\n', {"ok": False, "error": "internal error: RuntimeError: boom"}),
        (b'{"cmd": "when"}\n', {"ok": True, "result": {"at": "2026-11-27T05:14:26+00:00"}}),
    ],
)
async def test_each_request_gets_one_exact_reply_and_the_connection_lives_on(
    daemon: Daemon, raw: bytes, reply: dict[str, Any]
) -> None:
    conn = await Conn.open(daemon.path)
    assert await conn.send(raw) == reply
    assert await conn.send(b'{"cmd": "echo", "args": {"still": "here"}}\n') == {
        "ok": True,
        "result": {"still": "here"},
    }
    await conn.close()


async def test_handler_crash_is_logged_with_traceback_and_server_keeps_serving(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await Conn.open(daemon.path)
    with caplog.at_level(logging.ERROR, logger="firmware.api"):
        assert (await conn.send(b'{"cmd": "boom"}\n'))["error"] == "internal error: RuntimeError: boom"
    [record] = [r for r in caplog.records if r.name == "firmware.api"]
    assert record.exc_info is not None and "'boom'" in record.getMessage()
    assert (await conn.send(b'{"cmd": "unsendable"}\n'))["error"].startswith(
        "internal error: result not JSON serializable"
    )
    await conn.close()
    other = await Conn.open(daemon.path)
    assert await other.send(b'{"cmd": "echo"}\n') == {"ok": True, "result": {}}
    await other.close()


async def test_several_requests_in_one_write_are_answered_in_order_and_blank_lines_skipped(
    daemon: Daemon,
) -> None:
    conn = await Conn.open(daemon.path)
    conn.writer.write(b'{"cmd": "echo", "args": {"n": 1}}\n\n  \n{"cmd": "echo", "args": {"n": 2}}\n')
    await conn.writer.drain()
    first = json.loads(await conn.reader.readline())
    second = json.loads(await conn.reader.readline())
    assert [first["result"]["n"], second["result"]["n"]] == [1, 2]
    await conn.close()


async def test_last_request_without_newline_is_answered_at_eof(daemon: Daemon) -> None:
    conn = await Conn.open(daemon.path)
    conn.writer.write(b'{"cmd": "echo", "args": {"eof": true}}')
    conn.writer.write_eof()
    assert json.loads(await conn.reader.readline()) == {"ok": True, "result": {"eof": True}}
    assert await conn.reader.read() == b""
    await conn.close()


async def test_oversize_line_gets_an_error_and_the_connection_is_closed(daemon: Daemon) -> None:
    conn = await Conn.open(daemon.path)
    padding = "x" * (MAX_LINE + 10)
    reply = await conn.send(json.dumps({"cmd": "echo", "args": {"pad": padding}}).encode() + b"\n")
    assert reply == {"ok": False, "error": f"bad request: line longer than {MAX_LINE} bytes"}
    try:
        rest = await asyncio.wait_for(conn.reader.read(), 5)
    except ConnectionResetError:
        rest = b""  # Linux reports unread input discarded by the server as a reset
    assert rest == b""
    conn.writer.close()
    other = await Conn.open(daemon.path)
    assert (await other.send(b'{"cmd": "echo"}\n'))["ok"] is True
    await other.close()


async def test_a_line_of_exactly_the_limit_is_accepted(daemon: Daemon) -> None:
    conn = await Conn.open(daemon.path)
    body = b'{"cmd": "echo", "args": {"pad": "'
    tail = b'"}}'
    line = body + b"x" * (MAX_LINE - len(body) - len(tail)) + tail
    assert len(line) == MAX_LINE
    assert (await conn.send(line + b"\n"))["ok"] is True
    await conn.close()


async def test_socket_created_with_parent_and_mode_and_removed_on_close(sock_dir: Path) -> None:
    path = sock_dir / "deep" / "er" / "c.sock"
    server = ControlServer(str(path), {}, mode=0o600)
    await server.start()
    st = path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    await server.close()
    assert not path.exists()
    await server.close()  # twice is harmless


async def test_default_mode_is_group_writable(daemon: Daemon) -> None:
    assert stat.S_IMODE(os.stat(daemon.path).st_mode) == 0o660


async def test_stale_socket_file_is_replaced(sock_dir: Path) -> None:
    path = str(sock_dir / "c.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays behind, as after a crash
    async with ControlServer(path, _handlers(Daemon(path))):
        conn = await Conn.open(path)
        assert (await conn.send(b'{"cmd": "echo"}\n'))["ok"] is True
        await conn.close()


async def test_a_live_daemon_on_the_socket_is_not_stolen(daemon: Daemon) -> None:
    with pytest.raises(OSError, match="another daemon is already answering on"):
        await ControlServer(daemon.path, {}).start()
    conn = await Conn.open(daemon.path)
    assert (await conn.send(b'{"cmd": "echo"}\n'))["ok"] is True
    await conn.close()


async def test_a_regular_file_in_the_way_is_not_deleted(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    path.write_text("precious")
    with pytest.raises(OSError, match="is not a socket"):
        await ControlServer(str(path), {}).start()
    assert path.read_text() == "precious"


async def test_close_ends_open_connections(sock_dir: Path) -> None:
    path = str(sock_dir / "c.sock")
    server = ControlServer(path, _handlers(Daemon(path)))
    await server.start()
    conn = await Conn.open(path)
    assert (await conn.send(b'{"cmd": "echo"}\n'))["ok"] is True
    await asyncio.wait_for(server.close(), 5)
    assert await asyncio.wait_for(conn.reader.read(), 5) == b""
    await conn.close()


async def test_api_client_returns_results_and_raises_remote_errors(daemon: Daemon) -> None:
    client = ApiClient(daemon.path)
    assert await asyncio.to_thread(client.request, "echo", {"x": [1, 2]}) == {"x": [1, 2]}
    with pytest.raises(RemoteError, match=r"^no simulated hardware$"):
        await asyncio.to_thread(client.request, "refuse")


def test_api_client_names_the_socket_when_no_daemon(sock_dir: Path) -> None:
    path = str(sock_dir / "none.sock")
    with pytest.raises(DaemonUnavailable, match=re.escape(path)) as caught:
        ApiClient(path).request("status")
    assert isinstance(caught.value, ConnectionError)


# --- the CLI ------------------------------------------------------------------------------------------------


async def test_status_human_summary(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert await evse("status", "--socket", daemon.path) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "state:        C (charging)",
        "connector:    Charging",
        "contactor:    closed",
        "offered:      16.0 A (duty 26.7 %)",
        "limit:        16.0 A by config",
        "meter:        11040 W, 123.456 kWh register",
        "  current:    16.0 / 16.0 / 15.9 A",
        "  voltage:    230.1 / 229.8 / 231.0 V",
        "transaction:  #42, card 04A32BC1, since 2026-11-27T05:14:26+00:00, 3.210 kWh",
        "ocpp:         connected, 3 queued",
        "faults:       none",
    ]
    assert daemon.requests == [("status", {})]


async def test_status_shows_what_a_driver_pays(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    """Running cost (labelled local estimate or CSMS price), the last card's decision, the tariff, the pay link."""
    daemon.status = {
        **STATUS,
        "transaction": {**STATUS["transaction"], "cost": {"source": "local", "total": "1.75", "currency": "EUR"}},
        "payment": {
            "adhoc_url": "https://pay.example.com/CP-1/1",
            "tariff": "EUR: 0.39/kWh, 0.50 per session",
            "last_authorization": {"id_tag": "DEADBEEF", "status": "Invalid", "source": "csms"},
        },
    }
    assert await evse("status", "--socket", daemon.path) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        "transaction:         #42, card 04A32BC1, since 2026-11-27T05:14:26+00:00, 3.210 kWh, cost 1.75 EUR "
        "(local estimate)" in out
    )
    assert "last card:           DEADBEEF Invalid by csms" in out
    assert "tariff:              EUR: 0.39/kWh, 0.50 per session" in out
    assert "pay without a card:  https://pay.example.com/CP-1/1" in out
    daemon.status["transaction"]["cost"] = {"source": "backend", "total": "2.10", "currency": "EUR"}
    assert await evse("status", "--socket", daemon.path) == 0
    assert "cost 2.10 EUR (CSMS price)" in capsys.readouterr().out


async def test_status_json_is_the_daemons_result(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert await evse("--socket", daemon.path, "status", "--json") == 0
    assert json.loads(capsys.readouterr().out) == STATUS


async def test_status_tolerates_missing_and_null_fields(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.status = {"state": "F", "limit": None, "meter": {"power_w": None}, "faults": ["rcd", "weld"]}
    assert await evse("status", "--socket", daemon.path) == 0
    out = capsys.readouterr().out
    assert "state:        F (fault: charger unavailable)" in out
    assert "offered:      - (duty -)" in out
    assert "limit:        - by nobody" in out
    assert "transaction:  none" in out
    assert "faults:       rcd, weld" in out


async def test_limits_table_marks_the_winner(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert await evse("limits", "--socket", daemon.path) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "winner: cable 20.0 A (PP 20 A cable)",
        "   SOURCE     LIMIT  PHASES  AGE    EXPIRES  REASON",
        "   hardware  32.0 A  3       2m05s  -        charger.max_current_a",
        "*  cable     20.0 A  -       4s     -        PP 20 A cable",
        "   manual    25.5 A  1       1h02m  10m00s",
    ]


async def test_limits_json(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert await evse("limits", "--json", "--socket", daemon.path) == 0
    assert json.loads(capsys.readouterr().out) == LIMITS
    assert daemon.requests == [("limits", {})]


@pytest.mark.parametrize(
    ("argv", "action", "value"),
    [
        (["plug"], "plug", None),
        (["unplug"], "unplug", None),
        (["tap", "04a32bc1"], "tap", "04A32BC1"),
        (["tap", "04:A3:2B:C1:5E:80:01"], "tap", "04A32BC15E8001"),
        (["ev", "max-current", "13"], "ev.max_current", 13.0),
        (["ev", "soc", "80.5"], "ev.soc", 80.5),
        (["ev", "full"], "ev.full", None),
        (["ev", "ventilation", "on"], "ev.ventilation", True),
        (["ev", "ventilation", "off"], "ev.ventilation", False),
        (["ev", "request", "on"], "ev.request", True),
        (["ev", "request", "off"], "ev.request", False),
        (["fault", "rcd"], "fault", "rcd"),
        (["fault", "stuck-open"], "fault", "stuck-open"),
        (["fault", "pp-broken"], "fault", "pp-broken"),
        (["clear", "cp-short"], "clear", "cp-short"),
        (["clear"], "clear", None),
    ],
)
async def test_sim_commands_send_the_documented_request(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], argv: list[str], action: str, value: Any
) -> None:
    assert await evse("sim", *argv, "--socket", daemon.path) == 0
    assert daemon.requests == [("sim", {"action": action, "value": value})]
    assert type(daemon.requests[0][1]["value"]) is type(value)
    assert capsys.readouterr().out == "ok\n"


async def test_sim_prints_returned_text(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.sim_result = "EV plugged in (cable 32 A)"
    assert await evse("sim", "plug", "--socket", daemon.path) == 0
    assert capsys.readouterr().out == "EV plugged in (cable 32 A)\n"


async def test_sim_refusal_goes_to_stderr_with_exit_1(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.sim_refuses = True
    assert await evse("sim", "plug", "--socket", daemon.path) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "evse: no simulated hardware\n"


@pytest.mark.parametrize("uid", ["XYZ", "04A", "", "0x04A32BC1", "AA" * 11, "04 A3"])
def test_bad_tap_uid_is_a_usage_error(uid: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "tap", uid, "--socket", "/tmp/unused.sock"]) == 2
    assert "invalid card UID" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["sim", "fault", "lightning"],
        ["sim", "clear", "lightning"],
        ["sim", "ev", "soc", "101"],
        ["sim", "ev", "max-current", "-1"],
        ["sim", "ev", "max-current", "lots"],
        ["sim", "ev", "ventilation", "maybe"],
        ["sim"],
        ["status", "--bogus"],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    assert cli.main([*argv, "--socket", "/tmp/unused.sock"] if argv else []) == 2


def test_daemon_not_running_exits_1_naming_the_socket(sock_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(sock_dir / "control.sock")
    assert cli.main(["status", "--socket", path]) == 1
    err = capsys.readouterr().err
    assert path in err and "is `evse run` running?" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("evse ") and out.strip() != "evse"


# --- configuration through the CLI --------------------------------------------------------------------------


@pytest.fixture
def no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory without config.toml and no $EVSE_CONFIG (the /etc path is absent in tests)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVSE_CONFIG", raising=False)
    if Path("/etc/evse/config.toml").exists():
        pytest.skip("a system-wide /etc/evse/config.toml exists on this machine")
    return tmp_path


async def test_socket_comes_from_config_before_or_after_the_subcommand(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "evse.toml"
    cfg.write_text(f'[control]\nsocket = "{daemon.path}"\n')
    assert await evse("status", "--json", "--config", str(cfg)) == 0
    assert await evse("--config", str(cfg), "sim", "ev", "full") == 0
    assert await evse("sim", "ev", "full", "--config", str(cfg)) == 0
    assert [cmd for cmd, _ in daemon.requests] == ["status", "sim", "sim"]
    capsys.readouterr()


async def test_socket_option_wins_over_config(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "evse.toml"
    cfg.write_text('[control]\nsocket = "/tmp/definitely-not-here.sock"\n')
    assert await evse("status", "--config", str(cfg), "--socket", daemon.path) == 0
    capsys.readouterr()


def test_config_errors_exit_2_one_line_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[control]\nsocket = 5\n")
    assert cli.main(["status", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("control.socket")
    assert cli.main(["config", "check", str(cfg)]) == 2
    assert capsys.readouterr().err == err


def test_config_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "good.toml"
    cfg.write_text('[charger]\nid = "CP-7"\n')
    assert cli.main(["config", "check", str(cfg)]) == 0
    assert capsys.readouterr().out == f"ok: {cfg}\n"
    assert cli.main(["config", "check", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out == f"ok: {cfg}\n"


def test_config_check_missing_named_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.toml"
    assert cli.main(["config", "check", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_config_show_masks_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "secret.toml"
    secret = "s3cr3t-password-123"
    cfg.write_text(f'[ocpp]\nurl = "ws://csms.example/ocpp"\nsecurity_profile = 1\nauthorization_key = "{secret}"\n')
    assert cli.main(["config", "show", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert secret not in out
    assert 'authorization_key = "********"' in out
    assert out.startswith(f"# from {cfg} (secrets masked)\n")
    assert "\n[control]\nsocket = " in out


def test_config_show_without_a_file_shows_defaults(no_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# no configuration file found: built-in defaults")
    assert 'socket = "/run/evse/control.sock"' in out


@pytest.mark.parametrize("argv", [["run"], ["config", "check"]])
def test_no_config_file_is_a_configuration_error(
    no_config: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("config: no configuration file found (looked in: ./config.toml, /etc/evse/config.toml")


def test_without_config_status_uses_the_default_socket(no_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from firmware.config import default_settings

    assert cli.main(["status"]) == 1
    assert default_settings().control.socket in capsys.readouterr().err
