"""``evse firmware``: the technician's view of the firmware slots (run as the service user, e.g. ``sudo -u evse``).

* ``evse firmware status [--json]``: active slot, rollback target, a trial, the last outcome, each slot's version;
* ``evse firmware rollback``: back to the previous slot (takes effect at the next start: ``systemctl restart evse``);
* ``evse firmware install FILE``: a package from a USB stick or scp, checked like one from the CSMS
  (manifest sha256s; its signature when ``[update] require_signature``), installed into the inactive slot and put
  on trial; the daemon confirms it at its next accepted BootNotification, else it rolls back.

cli.py adds these with one line: ``commands.register(sub, [config_opt])``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESTART_HINT = "takes effect at the next start: sudo systemctl restart evse"


class _ConfigProblem(Exception):
    pass


def _settings(args: argparse.Namespace) -> tuple[Any, Path | None]:
    from firmware import config

    try:
        path = config.find_config(getattr(args, "config", None), None)
        if path is None:
            return config.default_settings(), None
        return config.load_settings(path), path
    except config.ConfigError as exc:
        raise _ConfigProblem("; ".join(exc.errors)) from None


def _update_dir(settings: Any) -> Path:
    from firmware.ocpp.v16.firmware import update_dir_of

    return update_dir_of(settings)


def _fail(message: str, code: int = 1) -> int:
    print(f"evse firmware: {message}", file=sys.stderr)
    return code


def cmd_status(args: argparse.Namespace) -> int:
    from firmware.update import state

    try:
        settings, _ = _settings(args)
        update_dir = _update_dir(settings)
        current = state.read_state(update_dir)
    except (ValueError, _ConfigProblem) as exc:
        return _fail(str(exc), 2)
    runnable = state.runnable_slots(update_dir)
    if args.json:
        print(json.dumps({"update_dir": str(update_dir), **current.to_json(), "runnable": sorted(runnable)}, indent=2))
        return 0
    print(f"update directory: {update_dir}")
    print(
        f"active:   {current.active}"
        + (f" ({current.slots[current.active].version})" if current.active in current.slots else "")
    )
    print(f"previous: {current.previous or '-'}")
    for slot in state.SLOTS:
        info = current.slots.get(slot)
        where = "installed" if slot in runnable else "empty"
        text = f"{info.version}{', rolled back from' if info.failed else ''}" if info else "-"
        print(f"slot {slot}:   {text} ({where})")
    if current.trial is not None:
        t = current.trial
        print(
            f"trial:    slot {t.slot} ({t.version}), start {t.attempts} of {t.max_attempts}"
            + (f", failed: {t.failed}" if t.failed else "")
        )
    if current.result is not None:
        r = current.result
        print(
            f"last:     {r.version} {r.outcome}{': ' + r.reason if r.reason else ''}"
            f"{'' if r.reported else ' (not yet reported to the CSMS)'}"
        )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from firmware.update import state

    try:
        settings, _ = _settings(args)
        update_dir = _update_dir(settings)
        new = state.update_state(update_dir, lambda s: state.apply(s, state.Rollback()))
    except (ValueError, state.StateError, _ConfigProblem, OSError) as exc:
        return _fail(str(exc))
    print(f"active slot is now {new.active}; {RESTART_HINT}")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from firmware.update import install, package, state

    try:
        settings, config_file = _settings(args)
    except _ConfigProblem as exc:
        return _fail(str(exc), 2)
    update_dir = _update_dir(settings)
    try:
        manifest = package.verify(
            args.file,
            require_signature=settings.update.require_signature,
            root_ca=settings.update.manufacturer_root_ca,
            now=datetime.now(UTC),
        )
        with install.install_lock(update_dir):
            current = state.read_state(update_dir)
            if current.trial is not None:
                return _fail(f"slot {current.trial.slot} is still on trial; wait for it or roll back first")
            done = asyncio.run(install.install(args.file, manifest, update_dir, current, config_path=config_file))
            switch = state.Switch(done.slot, done.version, time.time(), settings.update.confirm_timeout_s)
            state.update_state(update_dir, lambda s: state.apply(s, switch))
    except (package.PackageError, install.InstallError, state.StateError, ValueError, OSError) as exc:
        return _fail(str(exc))
    print(f"installed {done.version} into slot {done.slot} in {done.seconds:.0f} s, on trial; {RESTART_HINT}")
    return 0


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``firmware`` with its actions to the ``evse`` subcommands."""
    fw = sub.add_parser("firmware", help="firmware slots: status, rollback, install a package", parents=parents)
    actions = fw.add_subparsers(dest="firmware_command", metavar="ACTION", required=True)
    p = actions.add_parser("status", help="slots, trial and the last update outcome", parents=parents)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    p = actions.add_parser("rollback", help="go back to the previous slot at the next start", parents=parents)
    p.set_defaults(func=cmd_rollback)
    p = actions.add_parser("install", help="install a local firmware package into the inactive slot", parents=parents)
    p.add_argument("file", type=Path, metavar="FILE")
    p.set_defaults(func=cmd_install)
