"""A tiny sd_notify(3) client: READY/STATUS/STOPPING/WATCHDOG datagrams to ``$NOTIFY_SOCKET``, no dependency.

Every call is a no-op when ``NOTIFY_SOCKET`` is unset (not started by systemd with ``Type=notify``). Send errors are
logged once and never raised: a notify failure must not take down the control loop. The watchdog task sends
``WATCHDOG=1`` only while ``healthy()`` holds, so a stuck control loop stops the pings and systemd restarts the service
after ``WatchdogSec=`` (platform notes §7; the same rule as the board's watchdog latch in ``firmware.supervision``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("firmware.sdnotify")

_warned = False


def _address(env: Mapping[str, str]) -> str | None:
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]  # abstract namespace
    return path


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send one ``state`` datagram (e.g. ``"READY=1"``); True when sent, False when unset or failed."""
    global _warned
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        if not _warned:
            _warned = True
            log.warning("sd_notify to %r failed (further failures not logged): %s", address, exc)
        return False
    return True


def ready() -> bool:
    """``READY=1``: send only once the pilot and contactor are in a safe state."""
    return notify("READY=1")


def watchdog() -> bool:
    """``WATCHDOG=1``: the service is alive (send only while the control loop is healthy)."""
    return notify("WATCHDOG=1")


def stopping() -> bool:
    """``STOPPING=1``: shutdown has begun."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """``STATUS=<text>`` (one line, shown by ``systemctl status``)."""
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval_s(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, as sd_watchdog_enabled(3) recommends; None when the watchdog is off.

    None also when ``WATCHDOG_PID`` names another process, or either variable is malformed.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    wd_pid = env.get("WATCHDOG_PID", "")
    if wd_pid:
        try:
            if int(wd_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return value / 2_000_000


async def run_watchdog(healthy: Callable[[], bool], interval_s: float) -> None:
    """Ping ``WATCHDOG=1`` every ``interval_s`` while ``healthy()``; stay silent (systemd restarts us) otherwise."""
    if interval_s <= 0:
        raise ValueError(f"watchdog interval must be > 0 s, got {interval_s}")
    silent = False
    while True:
        if healthy():
            watchdog()
            silent = False
        elif not silent:
            silent = True
            log.critical("control loop unhealthy: systemd watchdog no longer pinged")
        await asyncio.sleep(interval_s)
