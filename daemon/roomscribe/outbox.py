"""The durable outbox: transcripts not yet acknowledged by the broker (sqlite3).

A transcript is written here, committed with WAL and synchronous=FULL, before anything
is sent, and deleted only when the broker's PUBACK for it arrives. So a SIGKILL or a
power cut at any point loses nothing that add() returned durable; the worst case is a
crash between PUBACK and delete, after which the same payload (same id) is sent again:
at-least-once on the wire, exactly-once for a subscriber that dedupes by id.

The id, seq and JSON payload are fixed at add() time. seq comes from a counter kept in
the same database, so it keeps rising across restarts (it restarts at 1 only if the
database file is deleted; the id is the dedupe key, not seq).

Bound: max_entries rows (default 10 000). A transcript payload is ~0.5-1 KB, so the
database stays under ~10 MB on disk; when full the oldest entry is dropped and
counted in `dropped`.

A disk that refuses the write (an SD card full of logs, or remounted read-only after
errors) must not cost the sentence while the broker is there to take it: add() then
keeps the entry in memory (`durable` False, `write_error` says why) and it is sent
like any other. Bound: SPILL_MAX_ENTRIES x ~1 KB (at most ~5 KB with the longest
text) = ~0.5-2.5 MB; the oldest is dropped past that. A restart loses what is there.

Used from one thread (the asyncio loop); blocking calls are short (one fsync per
add/ack).
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
SPILL_MAX_ENTRIES = 500

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
    durable: bool = True  # False: held in memory, the disk refused it


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


def _no_room(folder: Path) -> bool:
    """The file system holding the outbox has (next to) no space left for us."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def _rollback(db: sqlite3.Connection) -> None:
    # sqlite may have ended the transaction itself (SQLITE_FULL does): the error that
    # did it is the one to report, not "cannot rollback - no transaction is active".
    with contextlib.suppress(sqlite3.Error):
        db.execute("ROLLBACK")


class Outbox:
    def __init__(self, path: str | Path, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.path = Path(path)
        self.max_entries = max_entries
        # Entries the disk refused, by id in seq order; see the module docstring.
        self._spill: dict[str, OutboxEntry] = {}
        self._spill_dropped = 0
        self._spill_published = 0
        # Acknowledged entries still on disk (it refused the delete): id -> delivered.
        # Bound: they are rows of the outbox, at most max_entries.
        self._acked: dict[str, bool] = {}
        self._last_seq = 0
        self.write_error = ""  # why the last add() could not write, "" when it could
        self._volatile = False  # the whole outbox is in memory: the disk was full
        self._file_seq = 0  # ... and the file it started from held seq up to this
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _make_private(self.path)
            # isolation_level=None: we issue BEGIN IMMEDIATE/COMMIT ourselves.
            self._db = sqlite3.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            if not _no_room(self.path.parent):
                raise OutboxError(f"{self.path}: cannot open outbox: {exc}") from None
            self._open_in_memory(exc)
            return
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._last_seq = self._meta("next_seq") - 1
        except sqlite3.Error as exc:
            self._db.close()
            if not _no_room(self.path.parent):
                raise OutboxError(f"{self.path}: cannot use outbox database "
                                  f"(corrupt or not writable? move it aside): {exc}") from None
            self._open_in_memory(exc)

    def _open_in_memory(self, exc: BaseException) -> None:
        """A full disk at start: run from memory, with what the file holds (read-only,
        left as it is: what is sent now is sent again after a restart with room)."""
        self._volatile = True
        self.write_error = (f"{self.path}: cannot open outbox: {exc} (the disk is full); "
                            "transcripts are held in memory until a restart with room on "
                            "the disk")
        self._db = sqlite3.connect(":memory:", isolation_level=None, uri=True)
        self._db.executescript(_SCHEMA)
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ATTACH DATABASE ? AS disk",
                             (f"{self.path.resolve().as_uri()}?mode=ro&immutable=1",))
            self._db.execute("INSERT INTO entries SELECT * FROM disk.entries")
            self._db.execute("INSERT OR REPLACE INTO meta SELECT * FROM disk.meta")
        self.max_entries = min(self.max_entries, SPILL_MAX_ENTRIES)
        self._last_seq = self._file_seq = self._meta("next_seq") - 1

    def _fail(self, what: str, exc: sqlite3.Error) -> OutboxError:
        return OutboxError(f"{self.path}: cannot {what} outbox: {exc}")

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    @property
    def next_seq(self) -> int:
        # Past the spilled ones too: seq keeps rising when the disk takes writes again.
        return max(self._meta("next_seq"), self._last_seq + 1)

    @property
    def dropped(self) -> int:
        """Entries dropped, over the database's lifetime, because the outbox was full."""
        return self._meta("dropped") + self._spill_dropped

    @property
    def published(self) -> int:
        """Entries the broker acknowledged, over the database's lifetime."""
        return self._meta("published") + self._spill_published

    @property
    def unsaved(self) -> int:
        """Entries held only in memory because the disk refused them: a stop loses them."""
        held = len(self._spill)
        if self._volatile:
            held += int(self._db.execute("SELECT count(*) FROM entries WHERE seq > ?",
                                         (self._file_seq,)).fetchone()[0])
        return held

    def _rows(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM entries").fetchone()[0])

    def __len__(self) -> int:
        return self._rows() - len(self._acked) + len(self._spill)

    def add(self, t: Transcript, *, device: str, room: str = "") -> OutboxEntry:
        """Store the transcript's final payload durably; returns once it is on disk, or
        in memory (`durable` False) when the disk refuses it."""
        entry_id = str(uuid.uuid4())
        seq = self._last_seq + 1
        payload = b""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self.next_seq
                payload = transcript_payload(t, entry_id=entry_id, seq=seq, device=device,
                                             room=room, published=time.time())
                over = self._rows() - self.max_entries + 1
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
                _rollback(self._db)
                raise
        except sqlite3.Error as exc:
            return self._keep_in_memory(t, entry_id, seq, payload, device, room, exc)
        self._last_seq = seq
        if not self._volatile:
            self.write_error = ""
        self._delete_acked()
        return OutboxEntry(entry_id, seq, t.captured_end, payload, durable=not self._volatile)

    def _keep_in_memory(self, t: Transcript, entry_id: str, seq: int, payload: bytes,
                        device: str, room: str, exc: sqlite3.Error) -> OutboxEntry:
        if not payload:
            payload = transcript_payload(t, entry_id=entry_id, seq=seq, device=device,
                                         room=room, published=time.time())
        if len(self._spill) >= SPILL_MAX_ENTRIES:
            del self._spill[next(iter(self._spill))]
            self._spill_dropped += 1
        entry = OutboxEntry(entry_id, seq, t.captured_end, payload, durable=False)
        self._spill[entry_id] = entry
        self._last_seq = seq
        self.write_error = (f"{self.path}: cannot write to outbox: {exc}; transcripts are "
                            "held in memory until it can (a restart before they are sent "
                            "loses them)")
        return entry

    def pending(self, *, after_seq: int = 0, limit: int = -1) -> list[OutboxEntry]:
        """Entries with seq > after_seq, in seq order; limit < 0 means all."""
        try:
            rows = self._db.execute(
                "SELECT id, seq, captured_end, payload FROM entries WHERE seq > ? "
                "ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
        except sqlite3.Error as exc:
            raise self._fail("read", exc) from None
        entries = [OutboxEntry(r[0], r[1], r[2], bytes(r[3])) for r in rows
                   if r[0] not in self._acked]
        if self._spill:
            entries = sorted(entries + [e for e in self._spill.values() if e.seq > after_seq],
                             key=lambda e: e.seq)
            if limit >= 0:
                entries = entries[:limit]
        return entries

    def ack(self, entry_id: str, *, delivered: bool = False) -> None:
        """Delete an entry the broker has acknowledged (delivered) or that expired.

        The count of delivered entries changes in the same transaction as the delete,
        so a crash can neither count a transcript twice nor lose one from the total.
        """
        if self._spill.pop(entry_id, None) is not None:
            self._spill_published += delivered
            return
        self._acked[entry_id] = self._acked.get(entry_id, False) or delivered
        self._delete_acked()

    def _delete_acked(self) -> None:
        """Delete the acknowledged entries. Those a full disk will not let go (a delete
        writes too) are left out of pending() and len(), and tried again with the next
        add() or ack(): once the disk has room they go, and a restart does not send
        them again."""
        if not self._acked:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                published = 0
                for entry_id, delivered in self._acked.items():
                    deleted = self._db.execute("DELETE FROM entries WHERE id = ?",
                                               (entry_id,)).rowcount
                    published += deleted if delivered else 0
                if published:
                    self._db.execute("UPDATE meta SET value = value + ? "
                                     "WHERE key = 'published'", (published,))
                self._db.execute("COMMIT")
            except BaseException:
                _rollback(self._db)
                raise
        except sqlite3.Error as exc:
            self.write_error = self.write_error or (
                f"{self.path}: cannot delete from outbox: {exc}; sent transcripts stay in "
                "it until it can (a restart before then sends them again)")
            return
        self._acked.clear()

    def close(self) -> None:
        self._db.close()
