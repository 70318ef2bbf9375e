"""The ``evse`` command: runs the daemon and lets installers and scripts talk to it.

Names, options, exit codes and ``status --json`` fields are a public contract (see CONTRACT.md): exit 0
success, 1 runtime failure, 2 usage or configuration error. Heavy modules are imported inside the commands, so
that ``evse status`` stays fast and a broken subsystem cannot break unrelated commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware import version
from firmware.apiclient import ApiClient, DaemonUnavailable, ProtocolError, RemoteError
from firmware.diagnostics.ledger import parse_moment
from hal.sim.bench import FAULT_KINDS

if TYPE_CHECKING:
    from firmware.config import Settings


_STATE_MEANING = {
    "A": "no vehicle",
    "B": "vehicle connected",
    "C": "charging",
    "D": "charging, ventilation required",
    "E": "error: pilot shorted or no supply",
    "F": "fault: charger unavailable",
}

Command = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """Ends a command with ``code`` after printing ``lines`` to stderr; one place for exit-code policy."""

    def __init__(self, code: int, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.code = code
        self.lines = lines


# --- argument types (bad values become usage errors, exit 2) ------------------------------------------------


def _card_uid(text: str) -> str:
    """A card UID as hex, 1 to 10 bytes (an idTag holds 20 hex digits); ``04:A3:2B:C1`` separators allowed."""
    compact = text.replace(":", "").replace("-", "").strip()
    if not re.fullmatch(r"(?:[0-9A-Fa-f]{2}){1,10}", compact):
        raise argparse.ArgumentTypeError(
            f"invalid card UID {text!r}: expected an even number of hex digits, 1 to 10 bytes (e.g. 04A32BC1)"
        )
    return compact.upper()


def _number(what: str, check: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    """An argparse type for a finite number meeting ``check``; bad values are usage errors (exit 2)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: expected a number") from None
        if not (math.isfinite(value) and check(value)):
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: {rule}")
        return value

    return parse


_amps = _number("current", lambda v: v >= 0, "must be 0 or more amperes")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d)", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def _duration_s(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1.5h``, ``1d`` -> seconds (more than 0, at most 7 days)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: expected e.g. 90s, 30m, 2h or 1d")
    seconds = float(match[1]) * _UNIT_S[match[2].lower()]
    if not 0 < seconds <= 7 * 86400:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be more than 0 and at most 7 days")
    return seconds


def _count(text: str) -> int:
    """A whole number of 1 or more (``--limit``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: must be 1 or more")
    return value


_watts = _number("power", lambda v: v >= 0, "must be 0 or more watts")
_celsius = _number("temperature", lambda v: -60.0 <= v <= 200.0, "must be between -60 and 200 °C")
_percent = _number("percentage", lambda v: 0.0 <= v <= 100.0, "must be between 0 and 100")
_positive = _number("number", lambda v: v > 0, "must be greater than 0")


# --- configuration ------------------------------------------------------------------------------------------


def _looked_in(explicit: str | None) -> str:
    from firmware import config

    places: list[str] = []
    if explicit:
        places.append(explicit)
    env = os.environ.get(config.ENV_VAR)
    if env:
        places.append(f"${config.ENV_VAR}={env}")
    places.extend(p if os.path.isabs(p) else f"./{p}" for p in map(str, config.CONFIG_SEARCH_PATHS))
    return ", ".join(places)


def _find_config(explicit: str | None) -> Path | None:
    from firmware import config

    try:
        return config.find_config(explicit, os.environ)
    except config.ConfigError as exc:
        raise CliError(2, *exc.errors) from None


def _load_settings(path: Path) -> Settings:
    from firmware import config

    try:
        return config.load_settings(path)
    except config.ConfigError as exc:
        raise CliError(2, *exc.errors) from None
    except OSError as exc:
        raise CliError(2, f"config: cannot read {path}: {exc.strerror or exc}") from None


def _require_config(explicit: str | None) -> tuple[Settings, Path]:
    path = _find_config(explicit)
    if path is None:
        raise CliError(2, f"config: no configuration file found (looked in: {_looked_in(explicit)})")
    return _load_settings(path), path


def _settings_or_defaults(explicit: str | None) -> tuple[Settings, Path | None]:
    """Settings from the config lookup, or the built-in defaults when no file exists anywhere."""
    from firmware import config

    path = _find_config(explicit)
    if path is None:
        return config.default_settings(), None
    return _load_settings(path), path


def _client(args: argparse.Namespace) -> ApiClient:
    socket_path: str | None = args.socket
    if not socket_path:
        settings, _ = _settings_or_defaults(args.config)
        socket_path = str(settings.control.socket)
    return ApiClient(socket_path)


# --- commands -----------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon itself; the composition root lives in firmware.app."""
    settings, path = _require_config(args.config)
    from firmware import app

    try:
        return asyncio.run(app.run(settings, config_path=path))
    except KeyboardInterrupt:
        return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from firmware import demo

    return demo.main(args)


def cmd_config_check(args: argparse.Namespace) -> int:
    explicit = args.path or args.config
    settings, path = _require_config(explicit)
    from firmware.backends import unsupported

    problems = unsupported(settings)
    if problems:
        raise CliError(2, *problems)
    print(f"ok: {path}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from firmware import config

    settings, path = _settings_or_defaults(args.path or args.config)
    header = f"# from {path}" if path else "# no configuration file found: built-in defaults"
    print(header + " (secrets masked)")
    print("\n".join(render_toml(config.masked(settings))))
    return 0


def _show(request: str, formatter: Callable[[Mapping[str, Any]], list[str]]) -> Command:
    """A read-only daemon query printed as JSON (``--json``) or through ``formatter``."""

    def command(args: argparse.Namespace) -> int:
        result = _client(args).request(request)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print("\n".join(formatter(result if isinstance(result, Mapping) else {})))
        return 0

    return command


def _limits(action: str, args_of: Callable[[argparse.Namespace], dict[str, Any]]) -> Command:
    """A ``limits`` subcommand that changes a claim; prints the daemon's one-line answer."""

    def command(args: argparse.Namespace) -> int:
        result = _client(args).request("limits", {"action": action, **args_of(args)})
        print(result if isinstance(result, str) else json.dumps(result))
        return 0

    return command


def _sim(action: str, value: Callable[[argparse.Namespace], Any]) -> Command:
    """A ``sim`` subcommand that sends ``{"action": action, "value": value(args)}``."""

    def command(args: argparse.Namespace) -> int:
        result = _client(args).request("sim", {"action": action, "value": value(args)})
        if result is None or result is True:
            print("ok")
        elif isinstance(result, str):
            print(result)
        else:
            print(json.dumps(result))
        return 0

    return command


def cmd_hal_check(args: argparse.Namespace) -> int:
    """One line per configured device: verdict, device, what was found and what it read; exit 1 on any FAIL."""
    settings, _ = _settings_or_defaults(args.config)
    from firmware import halcheck

    lines = asyncio.run(halcheck.check(settings))
    for line in lines:
        print(line)
    return 1 if any(line.verdict == "FAIL" for line in lines) else 0


def cmd_hal_calibrate(args: argparse.Namespace) -> int:
    settings, _ = _settings_or_defaults(args.config)
    from firmware import halcheck
    from firmware.backends import resolve_backend

    if resolve_backend(settings) != "rpi":
        raise CliError(2, "hal calibrate: only the Raspberry Pi board has a pilot ADC to calibrate ([hal] backend)")
    try:
        lines = halcheck.calibrate(settings)
    except (ValueError, OSError) as exc:
        raise CliError(1, f"hal calibrate: {exc}") from None
    print("# paste into [rpi] of config.toml (unplug the EV first: it was measured with the pilot open)")
    print("\n".join(lines))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from firmware import logs

    since = None
    if args.since:
        try:
            since = logs.parse_since(args.since, datetime.now(UTC))
        except ValueError as exc:
            raise CliError(2, f"evse logs: --since: {exc}") from None
    settings, _ = _settings_or_defaults(args.config)
    log_dir = Path(settings.store.dir)
    if not args.follow and not logs.log_files(log_dir):
        raise CliError(1, f"evse logs: no log files in {log_dir} (the daemon writes {logs.LOG_FILE_NAME} there)")
    lines = logs.follow_logs(log_dir, since) if args.follow else logs.read_logs(log_dir, since)
    try:
        for line in lines:
            print(line, flush=args.follow)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader (head, less) went away; stop quietly and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 0


def _utcnow() -> datetime:
    """Now, for the running time of open sessions (one place, so tests can fix it)."""
    return datetime.now(UTC)


def cmd_sessions(args: argparse.Namespace) -> int:
    """The session ledger straight from the store file (read-only): works with the daemon stopped or running."""
    from firmware.diagnostics import ledger

    since, until = _period(args.from_, args.to)
    settings, _ = _settings_or_defaults(args.config)
    db_path = Path(settings.store.dir) / ledger.DB_FILE_NAME
    try:
        with ledger.read_only(db_path) as conn:
            if args.csv:
                sys.stdout.write(ledger.sessions_csv(conn, since=since, until=until))
                return 0
            if args.summary:
                cards, total = ledger.summary(conn, since=since, until=until)
                if args.json:
                    print(json.dumps([_totals_json(c) for c in [*cards, total]], indent=2))
                else:
                    print("\n".join(format_summary(cards, total, since, until)))
                return 0
            rows = ledger.sessions(conn, limit=args.limit, since=since, until=until)
    except ledger.LedgerError as exc:
        raise CliError(1, f"evse sessions: {exc}") from None
    now = _utcnow()
    views = [session_view(row, now) for row in rows]
    if args.json:
        print(json.dumps(views, indent=2))
    elif not views:
        print(f"no sessions in {db_path}")
    else:
        print("\n".join(format_sessions(views)))
    return 0


def _period(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    """``--from``/``--to``: an ISO date (whole days, UTC; --to includes its day) or an ISO date-time."""

    def parse(text: str | None, flag: str, end_of_day: bool) -> datetime | None:
        if not text:
            return None
        try:
            if len(text) == 10:
                day = datetime.fromisoformat(text).replace(tzinfo=UTC)
                return day + timedelta(days=1) if end_of_day else day
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise CliError(2, f"evse sessions: {flag}: {text!r} is not an ISO date or date-time") from None
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

    since, until = parse(start, "--from", False), parse(end, "--to", True)
    if since is not None and until is not None and until <= since:
        raise CliError(2, "evse sessions: --to is not after --from")
    return since, until


def _totals_json(totals: Any) -> dict[str, Any]:
    return {
        "id_tag": totals.id_tag,
        "sessions": totals.sessions,
        "running": totals.running,
        "energy_kwh": str(totals.energy_kwh),
        "revenue": {currency: str(amount) for currency, amount in sorted(totals.revenue.items())},
    }


def format_summary(cards: Sequence[Any], total: Any, since: datetime | None, until: datetime | None) -> list[str]:
    """Revenue, energy and sessions per card, then the total (the sum of the lines above)."""
    period = f"{since.isoformat() if since else 'the start'} to {until.isoformat() if until else 'now'}"
    table = [("CARD", "SESSIONS", "ENERGY", "REVENUE")]

    def revenue(t: Any) -> str:
        return ", ".join(f"{amount} {currency}" for currency, amount in sorted(t.revenue.items())) or "-"

    def sessions_text(t: Any) -> str:
        return f"{t.sessions}" + (f" ({t.running} running)" if t.running else "")

    for t in [*cards, total]:
        table.append((t.id_tag, sessions_text(t), f"{t.energy_kwh} kWh", revenue(t)))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = [f"sessions started from {period}"]
    for index, row in enumerate(table):
        if index == len(table) - 1:
            lines.append("  ".join("-" * w for w in widths))
        lines.append(
            "  ".join(
                cell.rjust(width) if column in (1, 2) else cell.ljust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    return lines


def cmd_diag(args: argparse.Namespace) -> int:
    """Write a diagnostics bundle locally, with the same code the CSMS's GetDiagnostics uses."""
    from firmware import logs
    from firmware.diagnostics import bundle

    now = datetime.now(UTC)
    try:
        since = logs.parse_since(args.since, now) if args.since else None
        until = logs.parse_since(args.until, now) if args.until else None
    except ValueError as exc:
        raise CliError(2, f"evse diag: {exc}") from None
    window = bundle.TimeWindow(since, until)
    settings, _ = _settings_or_defaults(args.config)
    out = Path(args.output).resolve()
    if not out.is_dir():
        raise CliError(1, f"evse diag: {out} is not a directory")
    try:
        written = bundle.write_bundle(settings, out, now=now, window=window, journal=not args.no_journal)
    except bundle.BundleError as exc:
        raise CliError(1, f"evse diag: {exc}") from None
    print(f"{written.path} ({written.size} bytes, {len(written.members) + 1} files)")
    for note in written.notes:
        print(f"note: {note}")
    return 0


# --- human output -------------------------------------------------------------------------------------------


def _num(value: Any, fmt: str = "g", unit: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    text = format(value, fmt)
    return f"{text} {unit}" if unit else text


def _text(value: Any, default: str = "-") -> str:
    return default if value is None or value == "" else str(value)


def _triple(values: Any, fmt: str, unit: str) -> str:
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        return "-"
    return " / ".join(_num(v, fmt) for v in values) + f" {unit}"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def format_status(status: Mapping[str, Any]) -> list[str]:
    """A short summary of ``status`` for people; any field may be missing or null."""
    state = _text(status.get("state"), "?")
    meaning = _STATE_MEANING.get(state[:1])
    limit = _mapping(status.get("limit"))
    meter = _mapping(status.get("meter"))
    ocpp = _mapping(status.get("ocpp"))
    offered = _num(status.get("offered_a"), ".1f", "A")
    duty = _num(status.get("duty_percent"), ".1f", "%")
    rows = [
        ("state", f"{state} ({meaning})" if meaning else state),
        ("connector", _text(status.get("connector_status"))),
        ("contactor", _text(status.get("contactor"))),
        ("offered", f"{offered} (duty {duty})"),
        ("limit", f"{_num(limit.get('value_a'), '.1f', 'A')} by {_text(limit.get('winner'), 'nobody')}"),
        (
            "meter",
            f"{_num(meter.get('power_w'), '.0f', 'W')}, {_num(_kwh(meter.get('energy_wh')), '.3f', 'kWh')} register",
        ),
        ("  current", _triple(meter.get("current_a"), ".1f", "A")),
        ("  voltage", _triple(meter.get("voltage_v"), ".1f", "V")),
        ("transaction", _format_transaction(status.get("transaction"))),
    ]
    payment = _mapping(status.get("payment"))
    last = _mapping(payment.get("last_authorization"))
    if last:
        rows.append(
            ("last card", f"{_text(last.get('id_tag'))} {_text(last.get('status'))} by {_text(last.get('source'))}")
        )
    if payment.get("tariff"):
        rows.append(("tariff", _text(payment.get("tariff"))))
    if payment.get("adhoc_url"):
        rows.append(("pay without a card", _text(payment.get("adhoc_url"))))
    if ocpp and ocpp.get("enabled") is False:
        rows.append(("ocpp", "off (no [ocpp] url configured)"))
    elif ocpp:
        connected = ocpp.get("connected")
        link = "connected" if connected else "disconnected" if connected is not None else "unknown"
        if not connected and ocpp.get("state"):
            link += f" ({ocpp['state']})"
        rows.append(("ocpp", f"{link}, {_num(ocpp.get('queued'), 'd')} queued"))
        if not connected and ocpp.get("last_error"):
            rows.append(("  last error", _text(ocpp.get("last_error"))))
    else:
        rows.append(("ocpp", "-"))
    faults = status.get("faults")
    rows.append(("faults", ", ".join(map(str, faults)) if isinstance(faults, list) and faults else "none"))
    width = max(len(label) for label, _ in rows) + 3  # the colon and two spaces
    return [f"{label + ':':<{width}}{value}" for label, value in rows]


def _kwh(wh: Any) -> Any:
    return wh / 1000 if isinstance(wh, int | float) and not isinstance(wh, bool) else None


def _format_transaction(tx: Any) -> str:
    if not isinstance(tx, Mapping):
        return "none"
    parts = [f"#{_text(tx.get('id'), '?')}"]
    if tx.get("id_tag"):
        parts.append(f"card {tx['id_tag']}")
    if tx.get("started_at"):
        parts.append(f"since {tx['started_at']}")
    parts.append(_num(_kwh(tx.get("energy_wh")), ".3f", "kWh"))
    cost = tx.get("cost")
    if isinstance(cost, Mapping) and cost.get("total") is not None:
        label = "CSMS price" if cost.get("source") == "backend" else "local estimate"
        parts.append(f"cost {cost['total']} {_text(cost.get('currency'), '')}".rstrip() + f" ({label})")
    return ", ".join(parts)


def _utc_text(text: Any) -> str:
    """A stored timestamp shown in UTC to the second (``2026-11-27 05:14:26Z``); other text as it is."""
    moment = parse_moment(text)
    if moment is None:
        return _text(text)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def session_view(row: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """One ledger row for people and scripts: the stored columns plus running, duration_s and energy_kwh.

    Columns are read by name and may be missing (older or newer stores); open sessions are ``running``.
    """
    started, stopped = parse_moment(row.get("started_at")), parse_moment(row.get("stopped_at"))
    running = row.get("stopped_at") is None
    end = now if running else stopped
    duration = (end - started).total_seconds() if started is not None and end is not None else None
    start_wh, stop_wh = row.get("meter_start_wh"), row.get("meter_stop_wh")
    energy = None
    stored = row.get("energy_wh")  # the ledger keeps the register difference, also while a session runs
    if isinstance(stored, int | float):
        energy = round(stored / 1000, 3)
    elif isinstance(start_wh, int | float) and isinstance(stop_wh, int | float) and not running:
        energy = round((stop_wh - start_wh) / 1000, 3)
    return {
        **dict(row),
        "ref": row.get("id", row.get("ref")),
        "running": running,
        "duration_s": None if duration is None else round(duration, 1),
        "energy_kwh": energy,
    }


def format_sessions(views: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ledger as an aligned table, newest first (as given)."""
    table = [("REF", "TX", "IDTAG", "START", "STOP", "DURATION", "ENERGY", "COST", "REASON")]
    for v in views:
        cost = v.get("cost")
        cost_text = "-" if cost is None else f"{cost} {v.get('currency') or ''}".rstrip()
        if cost is not None and v.get("cost_source") == "backend":
            cost_text += " (CSMS)"
        table.append(
            (
                _text(v.get("ref")),
                _text(v.get("transaction_id")),
                _text(v.get("id_tag")),
                _utc_text(v.get("started_at")),
                "running" if v.get("running") else _utc_text(v.get("stopped_at")),
                _duration(v.get("duration_s")),
                _num(v.get("energy_kwh"), ".3f", "kWh"),
                cost_text,
                _text(v.get("stop_reason")),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    right = {0, 1, 5, 6, 7}  # numbers line up on their last digit
    return [
        "  ".join(
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in table
    ]


def _duration(seconds: Any) -> str:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return "-"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def format_limits(limits: Mapping[str, Any]) -> list[str]:
    """The claims as an aligned table, winner marked with ``*``."""
    winner = limits.get("winner")
    if isinstance(winner, Mapping):
        reason = f" ({winner['reason']})" if winner.get("reason") else ""
        head = f"winner: {_text(winner.get('source'))} {_num(winner.get('value_a'), '.1f', 'A')}{reason}"
    else:
        head = "winner: none"
    claims = [c for c in limits.get("claims") or [] if isinstance(c, Mapping)]
    if not claims:
        return [head, "no current-limit claims"]
    table = [("", "SOURCE", "LIMIT", "PHASES", "AGE", "EXPIRES", "REASON")]
    for claim in claims:
        table.append(
            (
                "*" if claim.get("winner") else "",
                _text(claim.get("source")),
                _num(claim.get("value_a"), ".1f", "A"),
                _text(claim.get("phases")),
                _duration(claim.get("age_s")),
                _duration(claim.get("expires_in_s")),
                _text(claim.get("reason"), ""),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [head]
    for row in table:
        cells = [
            cell.rjust(width) if column == 2 else cell.ljust(width)  # amperes line up on the unit
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    sources = limits.get("sources")
    if isinstance(sources, Mapping):
        for name, detail in sources.items():
            if isinstance(detail, Mapping):
                lines.append(f"{name}: {_flat(detail)}")
    return lines


def _flat(detail: Mapping[str, Any]) -> str:
    """A source's details on one line: scalars as ``key value``, lists joined by ``/``, tables in braces."""
    parts: list[str] = []
    for key, value in detail.items():
        if value is None or key == "reason" or (isinstance(value, list | tuple) and not value):
            continue  # the reason is in the table already
        if isinstance(value, list | tuple) and any(isinstance(v, Mapping) for v in value):
            parts.append(f"{key} {len(value)}")  # per-phase / per-member rows: see --json
            continue
        if isinstance(value, Mapping):
            parts.append(f"{key} {{{_flat(value)}}}")
        elif isinstance(value, list | tuple):
            shown = [_flat(v) if isinstance(v, Mapping) else _text(v) for v in value]
            parts.append(
                f"{key} " + ("/".join(shown) if all(isinstance(v, int | float) for v in value) else "; ".join(shown))
            )
        elif isinstance(value, bool):
            parts.append(f"{key} {'yes' if value else 'no'}")
        else:
            parts.append(f"{key} {_text(value)}")
    return ", ".join(parts) if parts else "-"


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return (
            repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else f"{'-' if value < 0 else ''}inf")
        )
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def render_toml(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """TOML-like text for ``config show``; ``None`` (unset) becomes a comment since TOML has no null."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            tables.append((f"{prefix}{_toml_key(str(key))}", value))
        elif value is None:
            lines.append(f"# {_toml_key(str(key))} = (not set)")
        else:
            lines.append(f"{_toml_key(str(key))} = {_toml_value(value)}")
    for name, table in tables:
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        lines.extend(render_toml(table, prefix=f"{name}."))
    return lines


# --- parser -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; ``--config``/``--socket`` work before and after the subcommand."""
    config_opt = argparse.ArgumentParser(add_help=False)
    config_opt.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="configuration file (default: lookup order)",
    )
    socket_opt = argparse.ArgumentParser(add_help=False)
    socket_opt.add_argument(
        "--socket", metavar="PATH", default=argparse.SUPPRESS, help="daemon control socket ([control] socket)"
    )
    daemon = [config_opt, socket_opt]

    parser = argparse.ArgumentParser(
        prog="evse", description="EV charger controller: run the daemon, inspect and drive it."
    )
    parser.add_argument("--version", action="version", version=f"evse {version()}")
    parser.add_argument("--config", metavar="PATH", default=None, help="configuration file")
    parser.add_argument("--socket", metavar="PATH", default=None, help="daemon control socket")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def leaf(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        func: Command,
        help_text: str,
        parents: list[argparse.ArgumentParser],
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, help=help_text, parents=parents)
        p.set_defaults(func=func)
        return p

    leaf(sub, "run", cmd_run, "run the charger daemon", [config_opt])

    p = leaf(sub, "demo", cmd_demo, "a whole session on simulated hardware, shown live", [config_opt])
    p.add_argument("--speed", type=_positive, default=60.0, help="simulated seconds per real second (60)")
    p.add_argument("--minutes", type=_positive, default=30.0, help="simulated minutes of charging (30)")

    cfg = sub.add_parser("config", help="check or show the configuration", parents=[config_opt])
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    p = leaf(cfg_sub, "check", cmd_config_check, "validate; one line per error naming the key", [config_opt])
    p.add_argument("path", nargs="?", metavar="PATH", help="file to check (default: lookup order)")
    p = leaf(cfg_sub, "show", cmd_config_show, "print the effective settings, secrets masked", [config_opt])
    p.add_argument("path", nargs="?", metavar="PATH", help="file to show (default: lookup order)")

    p = leaf(sub, "status", _show("status", format_status), "live state of the running daemon", daemon)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = leaf(sub, "limits", _show("limits", format_limits), "every current-limit claim and the winner", daemon)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    lim_sub = p.add_subparsers(dest="limits_command", metavar="ACTION", required=False)
    p = leaf(
        lim_sub,
        "set",
        _limits("set", lambda a: {"value_a": a.amps, "for_s": a.duration}),
        "manual override: cap the current (a claim like any other; the lowest still wins)",
        daemon,
    )
    p.add_argument("amps", type=_amps, metavar="A")
    p.add_argument("--for", dest="duration", type=_duration_s, metavar="DURATION", help="e.g. 30m, 2h (max 7 days)")
    leaf(lim_sub, "clear", _limits("clear", lambda a: {}), "remove the manual override", daemon)
    p = leaf(
        lim_sub,
        "boost",
        _limits("boost", lambda a: {"for_s": a.duration}),
        "charge now outside the off-peak windows (default: until the next window opens)",
        daemon,
    )
    p.add_argument("--for", dest="duration", type=_duration_s, metavar="DURATION", help="e.g. 2h")
    leaf(lim_sub, "unboost", _limits("unboost", lambda a: {}), "cancel a boost", daemon)
    p = leaf(lim_sub, "solar", _limits("solar", lambda a: {"on": a.on == "on"}), "solar surplus charging", daemon)
    p.add_argument("on", choices=("on", "off"))

    sim = sub.add_parser("sim", help="drive the simulated hardware of a running daemon", parents=daemon)
    sim_sub = sim.add_subparsers(dest="sim_command", metavar="ACTION", required=True)
    leaf(sim_sub, "plug", _sim("plug", lambda a: None), "plug the simulated EV in", daemon)
    leaf(sim_sub, "unplug", _sim("unplug", lambda a: None), "unplug the simulated EV", daemon)
    p = leaf(sim_sub, "tap", _sim("tap", lambda a: a.uid), "tap a card on the simulated reader", daemon)
    p.add_argument("uid", type=_card_uid, metavar="UID", help="card UID in hex, e.g. 04A32BC1")
    ev = sim_sub.add_parser("ev", help="change the simulated EV", parents=daemon)
    ev_sub = ev.add_subparsers(dest="ev_command", metavar="ACTION", required=True)
    p = leaf(ev_sub, "max-current", _sim("ev.max_current", lambda a: a.amps), "EV's own current limit", daemon)
    p.add_argument("amps", type=_amps, metavar="A")
    p = leaf(ev_sub, "soc", _sim("ev.soc", lambda a: a.percent), "battery state of charge", daemon)
    p.add_argument("percent", type=_percent, metavar="PERCENT")
    leaf(ev_sub, "full", _sim("ev.full", lambda a: None), "battery full: the EV stops drawing", daemon)
    p = leaf(ev_sub, "ventilation", _sim("ev.ventilation", lambda a: a.on == "on"), "state D request", daemon)
    p.add_argument("on", choices=("on", "off"))
    p = leaf(ev_sub, "request", _sim("ev.request", lambda a: a.on == "on"), "EV asks for power (B↔C)", daemon)
    p.add_argument("on", choices=("on", "off"))
    p = leaf(
        sim_sub,
        "house-load",
        _sim("house_load", lambda a: a.amps[0] if len(a.amps) == 1 else a.amps),
        "the house's own load at the simulated grid meter",
        daemon,
    )
    p.add_argument("amps", type=_amps, nargs="+", metavar="A", help="one value for all phases, or L1 L2 L3")
    p = leaf(
        sim_sub,
        "pv",
        _sim("pv", lambda a: a.watts[0] if len(a.watts) == 1 else a.watts),
        "solar power behind the simulated grid meter",
        daemon,
    )
    p.add_argument("watts", type=_watts, nargs="+", metavar="W", help="a total spread over 3 phases, or L1 L2 L3")
    p = leaf(
        sim_sub, "temperature", _sim("temperature", lambda a: a.celsius), "force the charger's temperature", daemon
    )
    p.add_argument("celsius", type=_celsius, metavar="C")
    p = leaf(sim_sub, "ambient", _sim("ambient", lambda a: a.celsius), "the air temperature around it", daemon)
    p.add_argument("celsius", type=_celsius, metavar="C")
    p = leaf(sim_sub, "fault", _sim("fault", lambda a: a.kind), "inject a hardware fault", daemon)
    p.add_argument("kind", choices=FAULT_KINDS, metavar="KIND", help=", ".join(FAULT_KINDS))
    p = leaf(sim_sub, "clear", _sim("clear", lambda a: a.kind), "clear one fault, or all", daemon)
    p.add_argument("kind", choices=FAULT_KINDS, metavar="KIND", nargs="?", help="default: all")

    p = leaf(
        sub,
        "sessions",
        cmd_sessions,
        "the session ledger, newest first (from the store; no daemon needed)",
        [config_opt],
    )
    p.add_argument("--limit", type=_count, metavar="N", help="only the newest N sessions")
    p.add_argument("--from", dest="from_", metavar="DATE", help="sessions started on or after (ISO date or time, UTC)")
    p.add_argument("--to", metavar="DATE", help="sessions started before the end of this day (or this time)")
    p.add_argument("--summary", action="store_true", help="sessions, energy and revenue per card, and the total")
    p.add_argument("--csv", action="store_true", help="every ledger column as CSV, oldest first")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = leaf(sub, "diag", cmd_diag, "write a diagnostics bundle (logs, redacted config, ledger)", [config_opt])
    p.add_argument("--output", "-o", metavar="DIR", default=".", help="directory to write it in (default: .)")
    p.add_argument("--since", metavar="TIME", help="logs from this time: ISO date/time, 10m, 2h, 1d, today, yesterday")
    p.add_argument("--until", metavar="TIME", help="logs up to this time (same forms)")
    p.add_argument("--no-journal", action="store_true", help="leave the systemd journal out")

    p = leaf(sub, "logs", cmd_logs, "local logs", [config_opt])
    p.add_argument("--since", metavar="TIME", help="ISO date/time, 10m, 2h, 1d, today, yesterday")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")

    hal = sub.add_parser("hal", help="hardware checks", parents=[config_opt])
    hal_sub = hal.add_subparsers(dest="hal_command", metavar="ACTION", required=True)
    leaf(hal_sub, "check", cmd_hal_check, "probe each configured device (daemon stopped)", [config_opt])
    leaf(hal_sub, "calibrate", cmd_hal_calibrate, "two-point calibration of the pilot ADC (no EV)", [config_opt])

    from firmware.fleet.cli import add_parser as add_fleet
    from firmware.update import commands as firmware_commands

    firmware_commands.register(sub, [config_opt])
    add_fleet(sub, [config_opt])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``evse`` console script; returns the exit code instead of raising SystemExit."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    func: Command = args.func
    try:
        return func(args)
    except CliError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return exc.code
    except (DaemonUnavailable, RemoteError, ProtocolError) as exc:
        print(f"evse: {exc}", file=sys.stderr)
        return 1
