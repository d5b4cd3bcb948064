"""A publisher in its own process, for tests that SIGKILL it.

usage: publish_child.py CONFIG.toml COUNT PREFIX
Submits COUNT transcripts ("PREFIX 0", ...), prints "submitted", then "connected" and
"drained" as they happen, and runs until killed (or 120 s, so it cannot be orphaned).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mqttkit import transcript
from roomscribe import config, credentials, statedir
from roomscribe.outbox import Outbox
from roomscribe.publish import Publisher
from timing import scaled


def say(word: str) -> None:
    print(word, flush=True)


async def main(path: str, count: int, prefix: str) -> None:
    settings = config.load(path)
    outbox = Outbox(statedir.where(settings) / "outbox.sqlite3")
    pub = Publisher(settings, outbox, credentials.mqtt_password(settings))
    for i in range(count):
        pub.submit(transcript(f"{prefix} {i}"))
    say("submitted")
    task = asyncio.create_task(pub.run(), name="publish")
    async with asyncio.timeout(scaled(120)):
        while not pub.connected:
            await asyncio.sleep(0.02)
        say("connected")
        while len(outbox):
            await asyncio.sleep(0.02)
        say("drained")
        await task


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
