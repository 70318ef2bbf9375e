"""``evse fleet``: the command line of the fleet simulator (registered by firmware.cli)."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the fleet's modules load only when the command runs: every `evse` call builds this parser
    from firmware.config import Settings
    from firmware.fleet.runner import FleetOptions

DESCRIPTION = """\
Run N chargers, each the real controller (state machine, OCPP client, outbox, limits) on simulated hardware with
its own identity and store, in this one process, against the CSMS at --url. Progress goes to stderr; the report
(messages per action, CSMS latency percentiles, failures, sessions, energy, CPU and RSS) to stdout, and as JSON to
--report. Each charger authorizes cards with the CSMS (auth mode ocpp); a --config file gives the rest of their
settings (security profile, ratings, ...).
"""


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "fleet",
        help="simulate a fleet of chargers against a CSMS",
        description=DESCRIPTION,
        parents=parents,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--count", type=int, required=True, help="how many chargers")
    p.add_argument("--url", required=True, help="CSMS URL (ws:// or wss://); each charger appends its id")
    p.add_argument("--id-prefix", default="CP-", help="charger ids are PREFIX0001, PREFIX0002, ... (default CP-)")
    p.add_argument("--scenario", default=None, help="scenario TOML file (default: the built-in scenario)")
    p.add_argument("--duration", type=float, default=300.0, help="seconds to run (default 300)")
    p.add_argument("--report", default=None, help="write the JSON report to this file")
    p.add_argument("--work-dir", default=None, help="where the chargers' stores go (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the chargers' stores after the run")
    p.set_defaults(func=cmd_fleet)
    return p


def _base_settings(explicit: str | None) -> Settings:
    from firmware.config import ConfigError, default_settings, load_settings

    if not explicit:
        return default_settings()
    try:
        return load_settings(explicit)
    except ConfigError as exc:
        raise SystemExit("\n".join(exc.errors)) from None


def cmd_fleet(args: argparse.Namespace) -> int:
    from firmware.fleet.runner import FleetOptions, default_work_dir, format_report, setup_fleet_logging
    from firmware.fleet.scenario import ScenarioError, load_scenario

    if args.count < 1:
        print("evse fleet: --count must be at least 1", file=sys.stderr)
        return 2
    if args.duration <= 0:
        print("evse fleet: --duration must be positive", file=sys.stderr)
        return 2
    if not str(args.url).startswith(("ws://", "wss://")):
        print(f"evse fleet: --url must start with ws:// or wss:// (got {args.url!r})", file=sys.stderr)
        return 2
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        for line in exc.errors:
            print(f"evse fleet: scenario: {line}", file=sys.stderr)
        return 2
    try:
        base = _base_settings(getattr(args, "config", None))
    except SystemExit as exc:
        print(f"evse fleet: config: {exc}", file=sys.stderr)
        return 2
    setup_fleet_logging()
    work = Path(args.work_dir) if args.work_dir else default_work_dir()
    options = FleetOptions(
        count=args.count, url=args.url, id_prefix=args.id_prefix, duration_s=args.duration, work_dir=work
    )
    try:
        report = asyncio.run(_run(base, scenario, options))
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(format_report(report))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"report: {args.report}")
    return 0


async def _run(base: Settings, scenario: Any, options: FleetOptions) -> dict[str, Any]:
    from firmware.fleet.runner import Fleet, progress_printer

    fleet = Fleet(base, scenario, options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C ends the run early, with a report
        loop.add_signal_handler(sig, stop.set)
    report = await fleet.run(stop, progress=progress_printer(sys.stderr))
    print(file=sys.stderr)
    return report
