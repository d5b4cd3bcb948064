"""The state directory (the outbox, the mute state, the lock): where it is, whether it
can be used, and holding it for one daemon."""

from __future__ import annotations

import fcntl
import os
import typing
from pathlib import Path

from .config import ConfigError, Settings


def where(settings: Settings) -> Path:
    if settings.state.dir:
        return Path(settings.state.dir)
    systemd_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd_dir:
        return Path(systemd_dir)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "roomscribe"


# Pending transcripts and the mute state are private: outside systemd's StateDirectory
# nothing else would keep other local users out.
STATE_DIR_MODE = 0o700
STATE_FILE_MODE = 0o600


def _label(settings: Settings, path: Path) -> str:
    where = settings.where
    setting = "state.dir" if settings.state.dir else "state.dir (default)"
    return f"{where}: {setting} {str(path)!r}"


def problem(settings: Settings) -> str | None:
    """Why the state directory cannot be used or created, without touching it.

    `check` runs this (often as another user than the service: it must not create
    anything); `run` creates the directory and reports the same mistakes.
    """
    path = where(settings)
    label = _label(settings, path)
    if os.path.lexists(path):
        if not path.exists():
            return f"{label} is a broken symbolic link"
        if not path.is_dir():
            return f"{label} exists and is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{label} is not writable"
        return None
    ancestor = path.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{label} cannot be created: {ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{label} cannot be created: no permission to write in {ancestor}"
    return None


def prepare(settings: Settings) -> Path:
    """The state directory, created 0700 if missing; a ConfigError if it is unusable."""
    why = problem(settings)
    if why:
        raise ConfigError(why)
    path = where(settings)
    try:
        path.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{_label(settings, path)} cannot be created: "
                          f"{exc.strerror or exc}") from None
    return path


def lock(path: Path) -> typing.IO[bytes] | None:
    """Hold the state directory for this process: keep the returned file open.

    Why: two daemons on one state directory would share one outbox, each sending the
    other's transcripts, and one mute state. The lock goes with the process, however
    it ends. A ConfigError (one line) when another process holds it; None when the
    lock file cannot be made (a full disk is no reason to stop)."""
    try:
        fh = (path / "lock").open("ab")
    except OSError:
        return None
    try:
        os.fchmod(fh.fileno(), STATE_FILE_MODE)
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ConfigError(f"{path}: the state directory is in use by another roomscribe "
                          "run: give each daemon its own state.dir (and device.id)") from None
    except OSError:
        pass  # a file system without locks: run as before
    return fh
