"""TokenToll: the composition root and command line.
Reads config.toml, then serves the gateway (core/server.py) or runs an operator command (core/cli.py)."""

from __future__ import annotations

import argparse
import logging
import sys

from core import cli, server
from core.config import CONFIG_ENV, ConfigError, config_path, load


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    prog = "tokentoll" if getattr(sys, "frozen", False) else "gateway.py"  # the binary of `make binary`, or the script
    p = argparse.ArgumentParser(prog=prog, description="TokenToll LLM API gateway")
    p.add_argument("--config", help=f"path to config.toml (default: ${CONFIG_ENV}, else ./config.toml)")
    p.add_argument("--host", help="listen address (overrides server.host)")
    p.add_argument("--port", type=int, help="listen port, 0 for any free port (overrides server.port)")
    p.add_argument("--check", action="store_true", help="validate the config and exit")
    cli.add_commands(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = config_path(args.config)
    try:
        settings = load(path, provider_keys=not args.command)  # operator commands call no upstream
    except ConfigError as exc:
        print(f"tokentoll: config error: {exc}", file=sys.stderr)
        return 2
    if args.command:
        return cli.run(settings, args)
    if args.check:
        print(f"tokentoll: {path} is valid ({len(settings.providers)} providers, {len(settings.models)} models)")
        return 0
    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        print(f"tokentoll: --port {port}: a port is between 0 and 65535", file=sys.stderr)
        return 2
    try:
        sock = server.listen_socket(host, port, 4096)
    except OSError as exc:
        print(f"tokentoll: cannot listen on {host}:{port}: {exc.strerror} (choose another port with --port N, "
              f"or `make run ARGS=\"--port N\"`)", file=sys.stderr)
        return 1
    admin_sock = None
    if settings.server.admin_listen:
        admin_host, _, admin_port = settings.server.admin_listen.rpartition(":")
        try:
            admin_sock = server.listen_socket(admin_host, int(admin_port), 128)
        except OSError as exc:
            print(f"tokentoll: cannot listen on server.admin_listen {settings.server.admin_listen}: {exc.strerror}",
                  file=sys.stderr)
            return 1
    bound = sock.getsockname()
    print(f"tokentoll: serving http://{host}:{bound[1]} ({len(settings.models)} models from {path}, "
          f"{settings.server.workers} worker{'s' if settings.server.workers > 1 else ''})",
          file=sys.stderr, flush=True)
    if admin_sock is not None:
        admin_bound = admin_sock.getsockname()
        print(f"tokentoll: serving /admin on http://{settings.server.admin_listen.rpartition(':')[0]}:"
              f"{admin_bound[1]} only (server.admin_listen)", file=sys.stderr, flush=True)
    return server.run(settings, sock, admin_sock)


if __name__ == "__main__":
    sys.exit(main())
