"""Command line: `roomscribe run | check | devices | level | listen | forget | serve`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import wave
from typing import Any

from . import __version__, config, credentials, logs, statedir
from .capture import CaptureError
from .config import ConfigError, Settings
from .outbox import OutboxError
from .publish import PublishError

# Mistakes a user can fix (config, files, devices): one line, exit status 2.
USER_ERRORS = (ConfigError, OutboxError, PublishError, CaptureError)


def _settings(path: str | None) -> Settings:
    return config.load(config.config_path(path))


def preflight(settings: Settings) -> None:
    """Every mistake `run` would stop on before it starts, as one line each.

    `check` runs exactly this, so it passes only what `run` accepts. Nothing is
    created: `check` may run as another user than the service.
    """
    from .publish import check_tls

    credentials.api_key(settings)
    credentials.mqtt_password(settings)
    problem = statedir.problem(settings)
    if problem:
        raise ConfigError(problem)
    check_tls(settings)
    cap = settings.capture
    if cap.source == "file":
        where = f"{settings.where}: capture.file {cap.file!r}"
        try:
            with wave.open(cap.file, "rb") as wav:
                nch, width = wav.getnchannels(), wav.getsampwidth()
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such file") from None
        except (OSError, EOFError, wave.Error) as exc:
            raise ConfigError(f"{where}: not a readable PCM WAV file ({exc})") from None
        if width not in (1, 2, 3, 4):
            raise ConfigError(f"{where}: {8 * width}-bit samples are not supported")
        if cap.channel >= nch:
            raise ConfigError(f"{where}: has {nch} channel(s), capture.channel = {cap.channel}")


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    from .app import serve_forever

    preflight(settings)  # fail early, in one line, before anything is started
    try:
        return asyncio.run(serve_forever(settings))
    except Exception as exc:  # a fault no stage recovered from: one line, exit 1
        if isinstance(exc, USER_ERRORS) or (isinstance(exc, ExceptionGroup)
                                            and _user_error(exc) is not None):
            raise  # main() prints it as the user's to fix, exit 2
        cause = _first_cause(exc)
        logging.getLogger("roomscribe").debug("internal error", exc_info=exc)
        text = str(cause).splitlines()[0][:200] if str(cause) else ""
        print(f"roomscribe: stopped by an internal error: {type(cause).__name__}"
              f"{': ' + text if text else ''}", file=sys.stderr)
        return 1


def _first_cause(exc: BaseException) -> BaseException:
    """The failure itself, however deep in task groups it was raised."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _masked(settings: Settings) -> dict[str, Any]:
    data = config.as_dict(settings)
    data["uplink"]["api_key"] = credentials.mask(credentials.api_key(settings))
    data["mqtt"]["password"] = credentials.mask(credentials.mqtt_password(settings))
    data["server"]["tokens"] = [credentials.mask(t) for t in credentials.server_tokens(settings)]
    data["state"]["effective_dir"] = str(statedir.where(settings))
    return data


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from .gate import make_detector

    preflight(settings)
    # A gate detector whose package is missing is not a stop: `run` logs it and gates
    # by energy. Built here too, so `check` says so before its OK.
    make_detector(settings.gate)
    masked = _masked(settings)
    print(f"{settings.source_path or '(built-in defaults)'}: OK")
    print(json.dumps(masked, indent=2))
    if args.connect:
        from .doctor import check_connect

        return check_connect(settings)
    return 0


def cmd_devices(_settings: Settings, _args: argparse.Namespace) -> int:
    from .capture import list_devices

    devices = list_devices()
    if not devices:
        print("no ALSA capture devices found")
        return 1
    for dev in devices:
        if dev.error:
            print(f"{dev.name}: unavailable ({dev.error})")
        else:
            rates = ", ".join(str(r) for r in dev.rates_hz) or "none of the common rates"
            chans = ", ".join(str(c) for c in dev.channels) or "?"
            print(f"{dev.name}: rates_hz {rates}; channels {chans}")
    return 0


def cmd_level(settings: Settings, args: argparse.Namespace) -> int:
    from .level import run_level

    asyncio.run(run_level(settings.capture, duration_s=args.seconds))
    return 0


def cmd_listen(settings: Settings, args: argparse.Namespace) -> int:
    from .listen import listen

    return listen(settings, credentials.mqtt_password(settings), count=args.count,
                  timeout_s=args.seconds)


def cmd_forget(settings: Settings, _args: argparse.Namespace) -> int:
    from .forget import forget

    return forget(settings, credentials.mqtt_password(settings), sys.stdout)


def cmd_serve(_settings: Settings, args: argparse.Namespace) -> int:
    try:
        from .server.__main__ import main as serve_main
    except ImportError as exc:
        print(f"roomscribe serve needs the server extra (pip install 'roomscribe[server]'): "
              f"{exc}", file=sys.stderr)
        return 2
    argv = ["--config", args.config] if args.config else []
    if args.host is not None:
        argv += ["--host", args.host]
    if args.port is not None:
        argv += ["--port", str(args.port)]
    return serve_main(argv)


def _seconds(text: str) -> float:
    """An argparse type: a finite time over zero (`--seconds -1` or `nan` would stop at
    once or never)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds over 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number over 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomscribe", description="Room microphone → realtime transcription → MQTT")
    parser.add_argument("--version", action="version", version=f"roomscribe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", "-c", metavar="PATH", help=config.CONFIG_HELP)
        return p

    add("run", "capture, transcribe and publish until stopped").set_defaults(func=cmd_run)
    check = add("check", "validate the config and print the effective settings")
    check.add_argument("--connect", action="store_true",
                       help="also try the microphone, the transcription server and the broker")
    check.set_defaults(func=cmd_check)
    add("devices", "list ALSA capture devices and what they accept").set_defaults(
        func=cmd_devices)
    level = add("level", "live input meter for setting the microphone gain")
    level.add_argument("--seconds", type=_seconds, default=None, help="stop after this long")
    level.set_defaults(func=cmd_level)
    listen = add("listen", "print transcripts from the broker as they arrive")
    listen.add_argument("--count", type=_count, default=None, help="stop after N transcripts")
    listen.add_argument("--seconds", type=_seconds, default=None, help="stop after this long")
    listen.set_defaults(func=cmd_listen)
    add("forget", "remove the device from Home Assistant and clear its retained "
        "MQTT messages (stop the daemon first)").set_defaults(func=cmd_forget)
    serve = add("serve", "run the self-hosted realtime transcription server")
    # Declared here, not passed through: argparse's REMAINDER in a subcommand refuses
    # options that come first ("unrecognized arguments").
    serve.add_argument("--host", help="address to listen on (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides server.port)")
    serve.set_defaults(func=cmd_serve)
    return parser


def _user_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The first error of a TaskGroup's failure when every one in it is a user mistake
    (e.g. a capture file that went away between `check` and `run`); else None."""
    rest = group.subgroup(lambda e: not isinstance(e, (BaseExceptionGroup, *USER_ERRORS)))
    if rest is not None:
        return None
    for exc in group.exceptions:
        found = _user_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if found is not None:
            return found
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # `devices` reads no setting: a mistake in the service's config (read by
        # default) must not stop the command that finds the capture.device to put there.
        settings = Settings() if args.func is cmd_devices else _settings(args.config)
        logs.setup(settings.log.level)
        result: int = args.func(settings, args)
        return result
    except USER_ERRORS as exc:
        print(f"roomscribe: {exc}", file=sys.stderr)
        return 2
    except ExceptionGroup as group:
        user = _user_error(group)
        if user is None:
            raise
        print(f"roomscribe: {user}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # `roomscribe check | head`: the reader left; not an error worth a traceback.
        sys.stderr.close()
        return 0
