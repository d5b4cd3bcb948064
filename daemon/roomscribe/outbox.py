"""The durable outbox: transcripts not yet acknowledged by the broker (sqlite3).

A transcript is written here, committed with WAL and synchronous=FULL, before anything
is sent, and deleted only when the broker's PUBACK for it arrives. So a SIGKILL or a
power cut at any point loses nothing that add() returned; the worst case is a crash
between PUBACK and delete, after which the same payload (same id) is sent again:
at-least-once on the wire, exactly-once for a subscriber that dedupes by id.

The id, seq and JSON payload are fixed at add() time. seq comes from a counter kept in
the same database, so it keeps rising across restarts (it restarts at 1 only if the
database file is deleted; the id is the dedupe key, not seq).

Bound: max_entries rows (default 10 000). A transcript payload is ~0.5-1 KB, so the
database stays under ~10 MB on disk; when full the oldest entry is dropped and
counted in `dropped`. Used from one thread (the asyncio loop); blocking calls are
short (one fsync per add/ack).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .payload import transcript_payload
from .transcript import Transcript

DEFAULT_MAX_ENTRIES = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    captured_end REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('next_seq', 1), ('dropped', 0), ('published', 0);
"""


class OutboxError(Exception):
    """The outbox database cannot be opened or written: one line, names the file."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: str
    seq: int
    # Wall-clock capture time of the transcript's last audio, for max_age_s.
    captured_end: float
    payload: bytes


def _make_private(path: Path) -> None:
    """Create the database file 0600 (or narrow an older 0644 one) before sqlite opens it.

    sqlite gives its -wal and -shm files the main file's mode, so they follow; ones left
    by an older version are narrowed too. Pending transcripts are what was said in the
    room: no other local user may read them.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if p.stat().st_mode & 0o077:
                p.chmod(0o600)


class Outbox:
    def __init__(self, path: str | Path, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.path = Path(path)
        self.max_entries = max_entries
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _make_private(self.path)
            # isolation_level=None: we issue BEGIN IMMEDIATE/COMMIT ourselves.
            self._db = sqlite3.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"{self.path}: cannot open outbox: {exc}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise OutboxError(f"{self.path}: cannot use outbox database "
                              f"(corrupt or not writable? move it aside): {exc}") from None

    def _fail(self, what: str, exc: sqlite3.Error) -> OutboxError:
        return OutboxError(f"{self.path}: cannot {what} outbox: {exc}")

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    @property
    def next_seq(self) -> int:
        return self._meta("next_seq")

    @property
    def dropped(self) -> int:
        """Entries dropped, over the database's lifetime, because the outbox was full."""
        return self._meta("dropped")

    @property
    def published(self) -> int:
        """Entries the broker acknowledged, over the database's lifetime."""
        return self._meta("published")

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM entries").fetchone()[0])

    def add(self, t: Transcript, *, device: str, room: str = "") -> OutboxEntry:
        """Store the transcript's final payload durably; returns once it is on disk."""
        entry_id = str(uuid.uuid4())
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._meta("next_seq")
                payload = transcript_payload(t, entry_id=entry_id, seq=seq, device=device,
                                             room=room, published=time.time())
                over = len(self) - self.max_entries + 1
                if over > 0:
                    self._db.execute("DELETE FROM entries WHERE seq IN "
                                     "(SELECT seq FROM entries ORDER BY seq LIMIT ?)", (over,))
                    self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'",
                                     (over,))
                self._db.execute("INSERT INTO entries VALUES (?, ?, ?, ?)",
                                 (seq, entry_id, t.captured_end, payload))
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._fail("write to", exc) from None
        return OutboxEntry(entry_id, seq, t.captured_end, payload)

    def pending(self, *, after_seq: int = 0, limit: int = -1) -> list[OutboxEntry]:
        """Entries with seq > after_seq, in seq order; limit < 0 means all."""
        try:
            rows = self._db.execute(
                "SELECT id, seq, captured_end, payload FROM entries WHERE seq > ? "
                "ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
        except sqlite3.Error as exc:
            raise self._fail("read", exc) from None
        return [OutboxEntry(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    def ack(self, entry_id: str, *, delivered: bool = False) -> None:
        """Delete an entry the broker has acknowledged (delivered) or that expired.

        The count of delivered entries changes in the same transaction as the delete,
        so a crash can neither count a transcript twice nor lose one from the total.
        """
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                deleted = self._db.execute("DELETE FROM entries WHERE id = ?",
                                           (entry_id,)).rowcount
                if delivered and deleted:
                    self._db.execute("UPDATE meta SET value = value + ? "
                                     "WHERE key = 'published'", (deleted,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._fail("delete from", exc) from None

    def close(self) -> None:
        self._db.close()
