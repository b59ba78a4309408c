"""The tracking spool: MLflow calls kept on disk until the tracking store takes them.

One JSON object a line in ``tracking-spool.jsonl`` in the job's folder. A line
is either a call (``{"id": ..., "op": ..., ...}``) or the mark that the call
with that id was delivered (``{"done": id}``, with the run id for a created
run, or ``"rejected"`` with the store's reason when it refused the call for
good). Lines are only ever appended, each with one ``write`` and an
``fsync``, under an exclusive ``flock`` of the file, so a job and a
``mosbench replay-tracking`` of the same folder never deliver the same call
at once. Once every call is marked, the file is removed (still under the
lock; a waiter that then gets the lock on the removed file notices and opens
the path again). The file is its owner's only (mode 0600): it holds the run's
data before the store has it.
"""

import contextlib
import fcntl
import json
import os
import stat
import uuid
from pathlib import Path

SPOOL = "tracking-spool.jsonl"
MODE = 0o600


class Spool:
    def __init__(self, path):
        self.path = Path(path)
        self.pending = len(self.read()[0])  # calls not yet delivered (as far as we know)

    def append(self, record):
        """Keep ``record`` (a call), durably; returns it with its new ``id``."""
        record = {"id": uuid.uuid4().hex[:16], **record}
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(create=True) as fd:
            if stat.S_IMODE(os.fstat(fd).st_mode) != MODE:
                os.fchmod(fd, MODE)  # kept by an older mosbench, readable by all
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a line torn by a crash stays apart, and unread
            os.write(fd, line)
            os.fsync(fd)
        self.pending += 1
        return record

    def read(self):
        """``(pending calls in order, {run token: run id}, every call)`` from the file."""
        with self._locked(create=False) as fd:
            return _parse(_read_all(fd)) if fd is not None else ([], {}, [])

    def deliver(self, send):
        """Call ``send(record, runs)`` for each pending call, in order, and mark it done.

        ``send`` returns what goes into the mark (``{}``, ``{"run_id": ...}`` or
        ``{"rejected": reason}``); ``runs`` maps run tokens to the run ids created
        so far. An exception from ``send`` stops delivery there (the call stays
        pending) and propagates. Returns the number of calls delivered.
        """
        with self._locked(create=False) as fd:
            if fd is None:
                self.pending = 0
                return 0
            pending, runs, _ = _parse(_read_all(fd))
            self.pending = len(pending)
            for count, record in enumerate(pending):
                mark = {"done": record["id"], **send(record, runs)}
                if "run_id" in mark:
                    runs[record["token"]] = mark["run_id"]
                os.write(fd, (json.dumps(mark, separators=(",", ":")) + "\n").encode())
                os.fsync(fd)
                self.pending = len(pending) - count - 1
            os.unlink(self.path)  # everything delivered: nothing left to keep
            return len(pending)

    @contextlib.contextmanager
    def _locked(self, create):
        """The file open for reading and appending, locked; None if absent and not ``create``."""
        while True:
            flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
            try:
                fd = os.open(self.path, flags, MODE)
            except FileNotFoundError:
                if create:
                    raise
                yield None
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # emptied and removed by another process meanwhile: open it again
        try:
            yield fd
        finally:
            os.close(fd)  # releases the lock


def _read_all(fd):
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0).decode("utf-8", errors="replace") if size else ""


def _parse(text):
    records, done, runs = [], set(), {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # torn by a crash while it was written: never acknowledged
        if "done" in entry:
            done.add(entry["done"])
            if "run_id" in entry:
                runs[_token_of(records, entry["done"])] = entry["run_id"]
        else:
            records.append(entry)
    return [r for r in records if r["id"] not in done], runs, records


def _token_of(records, record_id):
    return next((r.get("token") for r in records if r["id"] == record_id), None)
