"""What the meter-fed limit sources (site fuse, solar) share: reading the grid meter and polling it forever."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from hal.interfaces import DeviceError, EnergyMeter, MeterReading

log = logging.getLogger("firmware.limits")


async def read_or_why_not(meter: EnergyMeter, timeout_s: float) -> MeterReading | str:
    """A reading, or the reason there is none. A driver bug counts as a failed read (logged with its
    traceback): it must neither end the limit source nor leave a stale claim standing."""
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation that lands with a result.
        async with asyncio.timeout(timeout_s):
            return await meter.read()
    except DeviceError as exc:
        return str(exc)
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except Exception as exc:
        log.exception("grid meter read raised an unexpected error")
        return f"{type(exc).__name__}: {exc}"


async def poll_forever(poll_once: Callable[[], Awaitable[object]], interval_s: float, what: str) -> None:
    """Run ``poll_once`` every ``interval_s`` until cancelled; one failed poll is logged, not fatal."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    while True:
        started = loop.time()
        try:
            await poll_once()
        except Exception:
            log.exception("%s poll failed", what)
        if task is not None and task.cancelling():
            raise asyncio.CancelledError  # a driver swallowed our cancellation: honour it here
        await asyncio.sleep(max(0.0, interval_s - (loop.time() - started)))
