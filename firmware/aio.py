"""Small asyncio helpers that Python 3.11 gets subtly wrong."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set (True) or ``timeout`` passes (False); never swallows a cancellation.

    On 3.11, ``asyncio.wait_for`` and ``asyncio.timeout`` can turn an outside ``cancel()`` that lands as the
    timer expires into a TimeoutError (CPython gh-86296); a loop that suppresses TimeoutError would then
    never stop. Here a pending cancellation always wins.
    """
    task = asyncio.current_task()
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
            return True
    except TimeoutError:
        if task is not None and task.cancelling():
            raise asyncio.CancelledError from None
        return False
