"""The demo provider's answer object: what a real upstream's response gives the relay (status, headers, the body
at once or chunk by chunk), made in-process. Shared by the demo's text, image and video answers."""

from __future__ import annotations

import asyncio


class DemoResponse:
    def __init__(self, status: int, payload: bytes, events: list[bytes], delay: float) -> None:
        self.status = status
        self.headers = {"content-type": "text/event-stream" if events else "application/json"}
        self._payload = payload
        self._events = events
        self._delay = delay

    async def read(self) -> bytes:
        return self._payload

    async def read_chunk(self) -> bytes:
        if not self._events:
            return b""
        if self._delay:
            await asyncio.sleep(self._delay)
        return self._events.pop(0)

    async def drain(self, seconds: float) -> None:
        self._events = []

    def close(self) -> None:
        self._events = []
