"""The request log: one JSON line per request (ids, model, status, tokens, usage source, durations).
It never holds a key, a prompt or a completion: callers pass only the fields listed in RequestLog.write."""

from __future__ import annotations

import sys
import time
from typing import IO, Any

import orjson


class RequestLog:
    def __init__(self, target: str) -> None:
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
        self._out.write(orjson.dumps(entry) + b"\n")
        self._out.flush()

    def close(self) -> None:
        if self._out is not None and self._out is not sys.stdout.buffer:
            self._out.close()
