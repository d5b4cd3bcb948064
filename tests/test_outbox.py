"""The durable outbox: order, persistence across restarts and SIGKILL, bound, bad files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import SmallDisk
from mqttkit import DEVICE, ROOM, transcript, validate
from roomscribe.outbox import Outbox, OutboxError
from timing import scaled


def test_add_pending_ack(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite3")
    entries = [box.add(transcript(f"words {i}"), device=DEVICE, room=ROOM) for i in range(5)]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert len({e.id for e in entries}) == 5
    pending = box.pending()
    assert pending == entries
    for e in pending:
        obj = validate("transcript", e.payload)
        assert (obj["id"], obj["seq"], obj["device"], obj["room"]) == (e.id, e.seq, DEVICE, ROOM)
    assert [e.seq for e in box.pending(after_seq=2, limit=2)] == [3, 4]
    box.ack(entries[1].id)
    box.ack(entries[1].id)  # a second ack (a re-sent message) is harmless
    assert [e.seq for e in box.pending()] == [1, 3, 4, 5]
    assert len(box) == 4
    box.close()


def test_entries_and_seq_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    for i in range(3):
        box.add(transcript(f"t{i}"), device=DEVICE)
    box.ack(box.pending()[0].id)
    box.close()
    box = Outbox(path)
    assert [json.loads(e.payload)["text"] for e in box.pending()] == ["t1", "t2"]
    assert box.next_seq == 4
    assert box.add(transcript("t3"), device=DEVICE).seq == 4
    box.close()


def test_sigkill_right_after_add_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    child = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from mqttkit import transcript
        from roomscribe.outbox import Outbox
        box = Outbox({str(path)!r})
        for i in range(20):
            box.add(transcript(f"kill {{i}}"), device="dev1")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", child], timeout=scaled(60), capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    box = Outbox(path)
    assert [json.loads(e.payload)["text"] for e in box.pending()] == [
        f"kill {i}" for i in range(20)]
    assert box.next_seq == 21
    box.close()


def test_full_outbox_drops_oldest_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_entries=10)
    for i in range(15):
        box.add(transcript(f"n{i}"), device=DEVICE)
    assert len(box) == 10
    assert box.dropped == 5
    assert [e.seq for e in box.pending()] == list(range(6, 16))
    box.close()


def test_corrupt_file_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not a database, just some bytes " * 100)
    with pytest.raises(OutboxError) as info:
        Outbox(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "corrupt" in msg


def test_unopenable_path_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "is-a-directory"
    path.mkdir()
    with pytest.raises(OutboxError) as info:
        Outbox(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_published_total_survives_a_restart_and_counts_each_entry_once(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    box = Outbox(path)
    first, second, expired = (box.add(transcript(t), device="d") for t in ("a", "b", "c"))
    box.ack(first.id, delivered=True)
    box.ack(first.id, delivered=True)  # a duplicate PUBACK: counted once
    box.ack(expired.id)  # dropped as too old: not published
    box.close()
    box = Outbox(path)
    assert box.published == 1
    box.ack(second.id, delivered=True)
    assert box.published == 2 and len(box) == 0
    box.close()


def test_a_full_disk_keeps_transcripts_in_memory_then_writes_again(
        small_disk: SmallDisk) -> None:
    """An SD card full of logs must not cost a sentence while the broker can take it."""
    box = Outbox(small_disk.path / "outbox.sqlite3")
    acked_late = box.add(transcript("sent before, acknowledged after"), device=DEVICE)
    first = box.add(transcript("before"), device=DEVICE)
    small_disk.fill()
    # Its PUBACK comes once the disk is full: the delete is refused, and kept for later.
    box.ack(acked_late.id, delivered=True)
    assert "cannot delete from outbox: database or disk is full" in box.write_error
    assert acked_late not in box.pending() and len(box) == 1
    held = [box.add(transcript(f"while full {i}"), device=DEVICE) for i in range(3)]
    assert [e.durable for e in [first, *held]] == [True, False, False, False]
    assert "cannot write to outbox: database or disk is full" in box.write_error
    assert str(small_disk.path / "outbox.sqlite3") in box.write_error
    assert [e.seq for e in box.pending()] == [2, 3, 4, 5]
    assert [e.seq for e in box.pending(after_seq=2, limit=2)] == [3, 4]
    assert (len(box), box.unsaved) == (4, 3)
    box.ack(held[0].id, delivered=True)
    assert [e.seq for e in box.pending()] == [2, 4, 5]
    assert box.unsaved == 2
    small_disk.free()
    after = box.add(transcript("after"), device=DEVICE)
    assert (after.durable, after.seq, box.write_error) == (True, 6, "")
    assert [validate("transcript", e.payload)["text"] for e in box.pending()] == [
        "before", "while full 1", "while full 2", "after"]
    assert box.published == 2
    box.close()
    # The late acknowledgement went with the first write that had room: a restart
    # does not send it again.
    box = Outbox(small_disk.path / "outbox.sqlite3")
    assert [validate("transcript", e.payload)["text"] for e in box.pending()] == [
        "before", "after"]
    box.close()


def test_a_disk_full_at_start_runs_from_memory_with_what_the_file_holds(
        small_disk: SmallDisk) -> None:
    path = small_disk.path / "outbox.sqlite3"
    box = Outbox(path)
    kept = [box.add(transcript(f"pending {i}"), device=DEVICE) for i in range(2)]
    box.close()
    small_disk.fill()
    box = Outbox(path)  # used to be an error: the daemon exited, and again, forever
    assert "the disk is full" in box.write_error and str(path) in box.write_error
    assert box.pending() == kept
    assert box.unsaved == 0  # what the file holds stays there
    new = box.add(transcript("said now"), device=DEVICE)
    assert (new.durable, new.seq, box.unsaved) == (False, 3, 1)
    for e in box.pending():
        box.ack(e.id, delivered=True)
    assert len(box) == 0
    box.close()
    small_disk.free()
    # The file was left as it was: what it held is sent again (same ids: deduped).
    box = Outbox(path)
    assert box.pending() == kept and box.write_error == ""
    box.close()
