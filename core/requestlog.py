"""The request log: one JSON line per request (ids, model, status, tokens, usage source, durations).
It never holds a key, a prompt or a completion: callers pass only the fields listed in RequestLog.write."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import IO, Any

import orjson


class RequestLog:
    """Lines are written once per event-loop turn: under load one write carries many of them."""

    def __init__(self, target: str) -> None:
        self._pending: list[bytes] = []
        self._out: IO[bytes] | None
        if target == "":
            self._out = None
        elif target == "-":
            self._out = sys.stdout.buffer
        else:
            self._out = open(target, "ab")  # noqa: SIM115 - kept open for the process's life

    def write(self, entry: dict[str, Any]) -> None:
        if self._out is None:
            return
        entry["ts"] = round(time.time(), 3)
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: write at once
                self._pending.append(orjson.dumps(entry) + b"\n")
                self.flush()
                return
        self._pending.append(orjson.dumps(entry) + b"\n")

    def flush(self) -> None:
        if self._out is None or not self._pending:
            return
        lines, self._pending = self._pending, []
        self._out.write(b"".join(lines))
        self._out.flush()

    def close(self) -> None:
        self.flush()
        if self._out is not None and self._out is not sys.stdout.buffer:
            self._out.close()
