"""Installs a verified firmware package into the inactive slot and proves it runs before anything switches.

Steps (any failure removes the half-made slot and raises InstallError; the running slot is never touched):

1. pick the target: a slot that is neither active nor the rollback target if there is one, else the other slot;
2. extract exactly the manifest's wheels, checking each sha256 (firmware.update.package);
3. ``python -m venv --without-pip`` (mirroring the factory venv's include-system-site-packages, so the Pi's apt
   packages stay visible as they are to the factory); pip comes from the factory venv (``pip --python``), so
   slots carry no pip and creating one is quick;
4. ``pip install --isolated --no-index --find-links <wheels> <requirement>``: offline, and deaf to pip config;
5. ``compileall`` (an overlay root would otherwise recompile at every start);
6. ``<slot>/bin/evse --version`` must print the manifest's version and ``evse config check`` must accept the
   live configuration.

The caller then records the switch (firmware.update.state ``Switch``) and restarts through the launcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from firmware.update.package import Manifest, PackageError, extract_wheels
from firmware.update.state import FACTORY, SLOTS, SlotState

log = logging.getLogger("firmware.update")


class InstallError(Exception):
    """The install failed; the target slot was removed and nothing switched."""


class InstallBusy(InstallError):
    """Another install (daemon or technician) holds the install lock."""


@dataclass(frozen=True)
class Installed:
    slot: str
    version: str
    seconds: float


def target_slot(state: SlotState) -> str:
    """The slot to install into: never the active one; spare the rollback target when possible."""
    free = [s for s in SLOTS if s != state.active and s != state.previous]
    if free:
        return free[0]
    return next(s for s in SLOTS if s != state.active)


def factory_prefix() -> Path:
    return Path(os.environ.get("EVSE_FACTORY") or sys.prefix)


def _pip_python(factory: Path) -> str:
    """A python with pip: the factory venv's, else the running one's."""
    candidate = factory / "bin" / "python"
    if (factory / "bin" / "pip").exists() or list((factory / "lib").glob("python3*/site-packages/pip")):
        return str(candidate)
    return sys.executable


def _system_site_packages(factory: Path) -> bool:
    try:
        cfg = (factory / "pyvenv.cfg").read_text()
    except OSError:
        return False
    return any(line.replace(" ", "").lower() == "include-system-site-packages=true" for line in cfg.splitlines())


@contextlib.contextmanager
def install_lock(update_dir: Path) -> Iterator[None]:
    update_dir.mkdir(parents=True, exist_ok=True)
    with open(update_dir / "install.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InstallBusy("another firmware install is running") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


async def _run(argv: list[str], timeout_s: float, what: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise InstallError(f"{what} took longer than {timeout_s:g} s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise InstallError(f"{what} failed ({proc.returncode}): {tail}")
    return text


async def install(
    package: Path,
    manifest: Manifest,
    update_dir: Path,
    state: SlotState,
    *,
    config_path: Path | None,
    factory: Path | None = None,
    python: str | None = None,
) -> Installed:
    """Install ``package`` into the inactive slot and verify it; the caller holds ``install_lock``."""
    started = time.monotonic()
    slot = target_slot(state)
    if slot == state.active or slot == FACTORY:
        raise InstallError(f"refusing to install into the active slot {slot}")
    factory = factory or factory_prefix()
    root = update_dir / "slots" / slot
    wheels = update_dir / "unpacked"
    try:
        await asyncio.to_thread(shutil.rmtree, root, True)
        await asyncio.to_thread(shutil.rmtree, wheels, True)
        try:
            await asyncio.to_thread(extract_wheels, package, manifest, wheels)
        except PackageError as exc:
            raise InstallError(f"package: {exc}") from exc
        base = python or sys.executable
        venv = [base, "-m", "venv", "--without-pip"]
        if _system_site_packages(factory):
            venv.append("--system-site-packages")
        await _run([*venv, str(root)], 120, "python -m venv")
        slot_python = str(root / "bin" / "python")
        pip = [_pip_python(factory), "-m", "pip", "--isolated", "--disable-pip-version-check", "--python", slot_python]
        await _run(
            [*pip, "install", "--no-index", "--no-cache-dir", "--find-links", str(wheels), manifest.requirement],
            900,
            "pip install",
        )
        await _run([slot_python, "-m", "compileall", "-q", str(root / "lib")], 600, "compileall")
        evse = str(root / "bin" / "evse")
        shown = (await _run([evse, "--version"], 120, "evse --version")).strip()
        if shown != f"evse {manifest.version}":
            raise InstallError(f"evse --version says {shown!r}, the package is {manifest.version}")
        if config_path is not None:
            await _run([evse, "config", "check", str(config_path)], 120, "evse config check")
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, root, True)
        raise
    finally:
        await asyncio.to_thread(shutil.rmtree, wheels, True)
    seconds = time.monotonic() - started
    log.info("firmware %s installed into slot %s in %.1f s", manifest.version, slot, seconds)
    return Installed(slot, manifest.version, seconds)
