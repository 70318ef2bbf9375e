"""Starts the active firmware slot, rolling a failed trial back first (standard library only).

systemd runs it from the FACTORY venv, so it never depends on a slot that may be broken::

    ExecStart=/opt/evse/venv/bin/python -m firmware.update.launcher run --config /etc/evse/config.toml

Everything after the module name is passed unchanged to the chosen slot's ``bin/evse``. The launcher finds the
update directory the way the daemon does (``[update] dir``, else ``firmware/`` in ``[store] dir``), reading the
TOML itself with tomllib: a newer version's config keys must never stop the fallback from starting. It applies
``Launch`` (firmware.update.state) under the state lock, writes the state, and replaces itself (exec) with the
slot's ``evse``: systemd's main PID, sd_notify and the watchdog then belong to the daemon as before.

The daemon learns from the environment what started it: ``EVSE_SLOT`` (factory, a or b), ``EVSE_UPDATE_DIR``
and ``EVSE_RELAUNCH`` (a JSON argv that starts this launcher again; a restart after an install or a failed trial
must go through it, see ``relaunch_command``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from pathlib import Path

from firmware.update.state import FACTORY, Launch, apply, locked, read_state, runnable_slots, write_state

ENV_SLOT = "EVSE_SLOT"
ENV_UPDATE_DIR = "EVSE_UPDATE_DIR"
ENV_RELAUNCH = "EVSE_RELAUNCH"
ENV_FACTORY = "EVSE_FACTORY"
DEFAULT_STORE = "/var/lib/evse"
CONFIG_SEARCH = ("config.toml", "/etc/evse/config.toml")


def _say(message: str) -> None:
    print(f"evse-launch: {message}", file=sys.stderr, flush=True)


def config_path(args: list[str], env: dict[str, str]) -> Path | None:
    """The config file ``evse`` would use: ``--config``, then $EVSE_CONFIG, then the search paths."""
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    if env.get("EVSE_CONFIG"):
        return Path(env["EVSE_CONFIG"])
    for candidate in CONFIG_SEARCH:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def update_dir_from_config(path: Path | None) -> Path:
    """``[update] dir`` or ``[store] dir``/firmware; defaults when the file is missing or unreadable."""
    data: dict[str, object] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            _say(f"cannot read {path} ({exc}); using the default update directory")
    update = data.get("update")
    if isinstance(update, dict) and isinstance(update.get("dir"), str) and update["dir"]:
        return Path(update["dir"])
    store = data.get("store")
    store_dir = store.get("dir") if isinstance(store, dict) else None
    return Path(store_dir if isinstance(store_dir, str) and store_dir else DEFAULT_STORE) / "firmware"


def relaunch_command(env: dict[str, str] | None = None) -> list[str] | None:
    """The argv that starts the launcher again (set by the launcher for the daemon); None when not launched."""
    raw = (os.environ if env is None else env).get(ENV_RELAUNCH)
    if not raw:
        return None
    try:
        argv = json.loads(raw)
    except ValueError:
        return None
    return [str(a) for a in argv] if isinstance(argv, list) and argv else None


def choose(update_dir: Path, now: float) -> str:
    """Apply ``Launch`` to the state on disk (written back) and return the slot to run."""
    with locked(update_dir):
        try:
            state = read_state(update_dir)
        except ValueError as exc:
            bad = update_dir / "state.json"
            _say(f"unreadable state ({exc}); kept as {bad.name}.bad, starting the factory version")
            os.replace(bad, bad.with_name("state.json.bad"))
            return FACTORY
        new = apply(state, Launch(now, runnable_slots(update_dir)))
        if new != state:
            write_state(update_dir, new)
    trial = new.trial
    if state.trial is not None and trial is None:
        reason = new.result.reason if new.result is not None else ""
        _say(f"firmware {state.trial.version} in slot {state.trial.slot} rolled back to {new.active}: {reason}")
    elif trial is not None:
        _say(f"slot {trial.slot} ({trial.version}) on trial, start {trial.attempts} of {trial.max_attempts}")
    return new.active


def target(update_dir: Path, slot: str, factory: Path) -> Path:
    return (factory if slot == FACTORY else update_dir / "slots" / slot) / "bin" / "evse"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    factory = Path(env.get(ENV_FACTORY) or sys.prefix)
    update_dir = (
        Path(env[ENV_UPDATE_DIR]) if env.get(ENV_UPDATE_DIR) else update_dir_from_config(config_path(args, env))
    )
    try:
        slot = choose(update_dir, time.time())
    except OSError as exc:  # e.g. the data partition is missing: the factory version still runs
        _say(f"cannot use {update_dir} ({exc}); starting the factory version")
        slot = FACTORY
    program = target(update_dir, slot, factory)
    env[ENV_SLOT] = slot
    env[ENV_UPDATE_DIR] = str(update_dir)
    env[ENV_FACTORY] = str(factory)
    env[ENV_RELAUNCH] = json.dumps([sys.executable, *sys.orig_argv[1:]])
    if slot != FACTORY:
        env.pop("PYTHONPATH", None)  # a slot runs its own installed code only
    try:
        os.execve(program, [str(program), *args], env)
    except OSError as exc:
        _say(f"cannot start {program}: {exc}")
        if slot == FACTORY:
            return 1
        fallback = target(update_dir, FACTORY, factory)
        env[ENV_SLOT] = FACTORY
        os.execve(fallback, [str(fallback), *args], env)
    return 1  # not reached: execve does not return


if __name__ == "__main__":
    sys.exit(main())
