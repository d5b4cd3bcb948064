"""`roomscribe serve` / `python -m roomscribe.server`: listen until SIGTERM, SIGINT or
SIGHUP (its terminal closed)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import logging
import signal
import socket
import sys

from .. import config, credentials, logs
from ..config import ConfigError, ServerSettings

log = logging.getLogger("roomscribe.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    # The resolver, not ipaddress, decides where the socket binds: it reads "127.1" and
    # "0x7f.1" as 127.0.0.1. AI_NUMERICHOST keeps names out (no DNS lookup).
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return False  # a name or "": may resolve to anything, or listen everywhere
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback
                               for info in infos)


def check_exposure(server: ServerSettings, where: str) -> None:
    if not server.tokens and not server.allow_open and not is_loopback(server.host):
        raise ConfigError(
            f"{where}: server.host = {server.host!r} is not loopback and there are no "
            "server tokens; set server.tokens_file (or the server_tokens credential), or "
            "allow_open = true to serve anyone who can connect")


async def serve_until_signal(server: ServerSettings) -> None:
    from .app import running
    from .transcriber import DecodeOptions, Transcriber

    transcriber = Transcriber(server.model, server.compute_type, server.cpu_threads,
                              DecodeOptions(server.final_beam_size, server.language),
                              workers=server.workers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    async with running(server, transcriber.transcribe) as srv:
        log.info("listening on ws://%s:%d/v1/realtime (model %s)", server.host, srv.port,
                 transcriber.model_path)
        await stop.wait()
        log.info("stopping")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="roomscribe serve",
                                     description="self-hosted realtime transcription server")
    parser.add_argument("--config", "-c", metavar="PATH", help=config.CONFIG_HELP)
    parser.add_argument("--host", help="address to listen on (overrides server.host)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides server.port)")
    args = parser.parse_args(argv)
    try:
        path = config.config_path(args.config)
        settings = config.load(path)
        server = dataclasses.replace(settings.server,
                                     tokens=credentials.server_tokens(settings))
        if args.host is not None:
            server = dataclasses.replace(server, host=args.host)
        if args.port is not None:
            if not 0 <= args.port <= 65535:
                raise ConfigError(f"--port {args.port} is out of range [0, 65535]")
            server = dataclasses.replace(server, port=args.port)
        check_exposure(server, path or "<defaults>")
        logs.setup(settings.log.level)
    except ConfigError as exc:
        print(f"roomscribe serve: {exc}", file=sys.stderr)
        return 2
    from .transcriber import ModelError

    try:
        asyncio.run(serve_until_signal(server))
    except ModelError as exc:
        print(f"roomscribe serve: {args.config or '<defaults>'}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"roomscribe serve: cannot listen on {server.host}:{server.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"roomscribe serve needs the server extra: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
