"""Background work that must keep going (the safety net, the task poller): one step every interval until the
store closes; a step that fails is logged and tried again at the next turn."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from billing import store

log = logging.getLogger("tokentoll.background")


async def repeat(step: Callable[[], Awaitable[object]], interval: float, what: str) -> None:
    while True:
        try:
            await step()
        except store.StoreClosed:
            return
        except Exception:  # keep it up; the next turn tries again
            log.exception("%s failed", what)
        await asyncio.sleep(interval)
