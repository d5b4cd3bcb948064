"""A renamed device is removed from Home Assistant, not left "unavailable" for ever.

device.id defaults to the hostname, so renaming a Pi (or editing device.id, the topic
prefix or the discovery prefix) makes the daemon announce a new device, while the old
one's retained configs, availability and state stay on the broker: Home Assistant keeps
a dead copy of every entity. The identity last announced is kept in the state dir
(`announced.json`). A daemon that finds another one there clears it as `roomscribe
forget` does, then records its own. Not while another client still reports the old
id online (a second microphone given that name): that device is left alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import broker_login, forget
from .config import Settings
from .publish import PublishError

log = logging.getLogger("roomscribe.identity")

FILE_NAME = "announced.json"
# Retries of a removal the broker did not take (it is down at boot, say).
RETRY_MIN_S, RETRY_MAX_S = 10.0, 300.0
# A daemon that lost power leaves "online" retained until the broker gives up on its
# connection (1.5 keepalives) and sends its last will: look again after that.
ONLINE_GRACE_KEEPALIVES = 2.0


@dataclass(frozen=True)
class Identity:
    broker: str  # host:port: an old device can only be removed from the broker it is on
    device_id: str
    topic_prefix: str
    discovery_prefix: str


def current(settings: Settings) -> Identity:
    m = settings.mqtt
    return Identity(broker_login.where(settings), settings.device.id, m.topic_prefix,
                    m.ha_discovery_prefix)


def load(state_dir: Path) -> Identity | None:
    """The identity recorded last; None when there is none or it cannot be read (then
    nothing is removed: removing the wrong device would be worse than a stale one)."""
    path = state_dir / FILE_NAME
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
        return Identity(**{f.name: str(fields[f.name]) for f in dataclasses.fields(Identity)})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("%s cannot be read (%s): no earlier device to remove", path, exc)
        return None


def save(state_dir: Path, identity: Identity) -> None:
    path = state_dir / FILE_NAME
    tmp = path.with_name(f".{FILE_NAME}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as fh:
        json.dump(dataclasses.asdict(identity), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # a crash leaves the old record or the new, never half


def superseded(settings: Settings, old: Identity | None) -> Settings | None:
    """The settings the old device was announced with, when it is to be removed: there
    is a record, it differs from now, and it is on the broker used now."""
    now = current(settings)
    if old is None or old == now or old.broker != now.broker:
        return None
    return dataclasses.replace(
        settings, device=dataclasses.replace(settings.device, id=old.device_id),
        mqtt=dataclasses.replace(settings.mqtt, topic_prefix=old.topic_prefix,
                                 ha_discovery_prefix=old.discovery_prefix))


def remove(old: Settings, password: str, timeout_s: float = 10.0) -> bool | None:
    """Clear the old device on the broker (blocking): True when removed, False when
    nothing of it was there, None when another client reports it online (left alone).
    PublishError (one line) when the broker cannot be reached or does not take it."""
    deadline = time.monotonic() + timeout_s
    tool = f"removing the old device {old.device.id!r}"
    client = broker_login.login(old, password, tool,
                                f"roomscribe-retire-{uuid.uuid4().hex[:8]}", timeout_s)
    try:
        found = forget.retained_devices(client, old, deadline)
        if found is not None and old.device.id not in found:
            return False
        if found is not None and found[old.device.id] == b"online":
            return None
        forget.clear(client, old, deadline, timeout_s, tool)
        return True
    finally:
        client.disconnect()
        client.loop_stop()


async def retire_previous(settings: Settings, state_dir: Path, password: str) -> None:
    """Remove the device announced before under another identity, retrying while the
    broker is away; then record this one. Returns when done (a helper task)."""
    now = current(settings)
    old = load(state_dir)
    old_settings = superseded(settings, old)
    if old is not None and old_settings is not None:
        log.info("this microphone was announced as %r before (topic prefix %r, discovery "
                 "prefix %r), now as %r: removing the old device from Home Assistant and "
                 "its retained topics on %s", old.device_id, old.topic_prefix,
                 old.discovery_prefix, now.device_id, now.broker)
        await _remove_until_done(old_settings, password,
                                 ONLINE_GRACE_KEEPALIVES * settings.mqtt.keepalive_s)
    elif old is not None and old.broker != now.broker:
        log.info("the device announced before (%r) is on another broker, %s: not removed "
                 "from there (`roomscribe forget` with that config does it)", old.device_id,
                 old.broker)
    if old != now:
        try:
            save(state_dir, now)
        except OSError as exc:
            log.warning("cannot record the announced device in %s: %s", state_dir,
                        exc.strerror or exc)


async def _remove_until_done(old: Settings, password: str, grace_s: float) -> None:
    delay, said, online_since = RETRY_MIN_S, "", None
    while True:
        try:
            outcome = await asyncio.to_thread(remove, old, password)
        except PublishError as exc:
            if str(exc) != said:  # a broker that stays down: one line, not one a retry
                log.warning("%s (trying again)", exc)
                said = str(exc)
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX_S, delay * 2)
            continue
        if outcome is True:
            log.info("removed the old device %r from Home Assistant and cleared its "
                     "retained topics", old.device.id)
        elif outcome is False:
            log.info("nothing of the old device %r is retained: nothing to remove",
                     old.device.id)
        else:
            online_since = online_since or time.monotonic()
            if time.monotonic() - online_since < grace_s:
                await asyncio.sleep(grace_s)
                continue
            log.warning("the old device %r is still reported online by another client "
                        "(another microphone with that device.id?): left as it is",
                        old.device.id)
        return
