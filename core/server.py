"""Serving: hypercorn on uvloop over a socket the caller bound. One worker runs in this process;
several are forked children sharing the socket, supervised: a worker that dies is replaced."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import time
import traceback
from typing import Any

import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from core.app import Gateway
from core.config import Settings

log = logging.getLogger("tokentoll.server")
RESTART_DELAY = 1.0  # seconds before replacing a worker that died
PR_SET_PDEATHSIG = 1


def run(settings: Settings, sock: socket.socket, admin_sock: socket.socket | None = None) -> int:
    """Serve on `sock`, and /admin on `admin_sock` alone when server.admin_listen is set."""
    if settings.server.workers == 1:
        uvloop.run(serve_worker(settings, sock, admin_sock))
        return 0
    return supervise(settings, sock, settings.server.workers, admin_sock)


def listen_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket on host:port: IPv6 when the host is an IPv6 address ("::1", "[::]"), else IPv4."""
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


def hypercorn_config(socks: list[socket.socket], grace: float = 10.0, idle: float = 75.0) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"fd://{sock.fileno()}" for sock in socks]
    hc.accesslog = None  # the gateway writes its own request log
    hc.errorlog = logging.getLogger("hypercorn.error")  # through our handler: one line per message
    hc.include_server_header = False
    # A connection that has not sent a request's headers (or the next request) within `idle` seconds is closed:
    # the timer runs from the accept, so headers sent a byte at a time cannot hold it open.
    # Bodies have their own deadline (server.body_timeout, core/edge.py); hypercorn's read_timeout stays unset,
    # since a long streamed answer reads nothing from its client for minutes.
    hc.keep_alive_timeout = idle
    hc.graceful_timeout = grace  # on SIGTERM: how long open requests may still run
    return hc


async def serve_worker(settings: Settings, sock: socket.socket, admin_sock: socket.socket | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.set_exception_handler(_quiet_cancellations)
    socks = [sock] if admin_sock is None else [sock, admin_sock]
    admin_address = None if admin_sock is None else admin_sock.getsockname()[:2]
    config = hypercorn_config(socks, settings.server.shutdown_grace, settings.server.idle_timeout)
    await serve(Gateway(settings, admin_address), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """When the grace period ends, hypercorn cancels the open connections; Python 3.11's stream protocol
    then reports each cancelled connection task as an error (fixed in 3.12). A cancellation at shutdown
    is the plan, not an error: everything else goes to the default handler."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the supervisor dies (even by kill -9), so none is orphaned
    holding the port."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the worker stays until stopped by hand


def supervise(settings: Settings, sock: socket.socket, workers: int, admin_sock: socket.socket | None = None) -> int:
    children: set[int] = set()
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            _die_with_parent()
            code = 0
            try:
                uvloop.run(serve_worker(settings, sock, admin_sock))
            except BaseException:  # noqa: BLE001 - a worker reports and exits; the parent replaces it
                traceback.print_exc()
                code = 1
            os._exit(code)
        children.add(pid)

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        spawn()
    log.info("started %d workers: %s", workers, sorted(children))
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        if not stopping:
            log.error("worker %d exited (%s); starting a new one", pid, os.waitstatus_to_exitcode(status))
            time.sleep(RESTART_DELAY)
            if not stopping:
                spawn()
    return 0
