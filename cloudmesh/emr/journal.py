"""Records waiting for the database: an append-only journal beside it.

When a batch of records cannot be written (the database is unreachable, was killed
mid-write, or refused it), ``Database.record`` appends the batch here instead: one JSON
line per batch holding everything needed to redo the upserts (cloud, kind, cluster, the
time of the recording, and the records with their datetimes kept as datetimes). Each
append is flushed and fsynced; the file is readable by its owner only (mode 0600).

The next command that reaches the database replays the journal before its own write.
Replaying renames the journal to ``journal.replaying.jsonl`` first, writes each batch
(upserts keyed by ``_id``, so a batch written twice is one set of documents), and
deletes the file only once everything in it is written; a replay that fails halfway
leaves the batches not yet written in that file for the next one. One lock (filelock)
serialises appends and replays across processes, so two commands never replay together.

The journal knows nothing about MongoDB: the replay calls back into the database with
``(cloud, kind, records, cluster, stamp)``, the same arguments ``Database.record`` got.
"""

import datetime
import json
import os
from pathlib import Path

from cloudmesh.emr.config import state_dir

DATE = "$datetime"  # how a datetime travels in a journal line: {"$datetime": ISO-8601}
LOCK_TIMEOUT = 60.0


def _encode(value):
    if isinstance(value, datetime.datetime):
        return {DATE: value.isoformat()}
    if isinstance(value, dict):
        return {str(key): _encode(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # nothing else comes back from boto3; keep it readable rather than fail


def _decode(value):
    if isinstance(value, dict):
        if len(value) == 1 and DATE in value:
            return datetime.datetime.fromisoformat(value[DATE])
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def encode_line(entry):
    """One journal line (ASCII: lone surrogates and other odd text travel as \\u escapes)."""
    return json.dumps(_encode(entry), ensure_ascii=True, allow_nan=True) + "\n"


def decode_line(line):
    return _decode(json.loads(line))


class JournalError(OSError):
    """The journal itself cannot be written or read."""


class Rejected(Exception):
    """Raised by a replay's write for a batch the database refuses for good (not because
    it is unreachable): the batch is set aside in journal.rejected.jsonl, the replay goes on."""


class Journal:
    """The journal file of one configuration folder."""

    def __init__(self, folder=None):
        self.folder = Path(folder) if folder else state_dir()
        self.path = self.folder / "journal.jsonl"
        self.replaying = self.folder / "journal.replaying.jsonl"
        self.rejected = self.folder / "journal.rejected.jsonl"
        self.lockfile = self.folder / "journal.lock"

    def _lock(self):
        from filelock import FileLock

        self.folder.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.lockfile), timeout=LOCK_TIMEOUT, mode=0o600)

    def exists(self):
        """Cheap: whether anything may be waiting (two stats, no lock, no reading)."""
        return self.path.exists() or self.replaying.exists()

    # ---- writing -----------------------------------------------------------------

    def append(self, cloud, kind, records, cluster=None, stamp=None):
        """Add one batch; flushed and fsynced before returning. JournalError if it cannot."""
        entry = {"cloud": cloud, "kind": kind, "cluster": cluster,
                 "stamp": stamp or datetime.datetime.now(datetime.timezone.utc),
                 "records": list(records)}
        line = encode_line(entry).encode("ascii")
        try:
            with self._lock():
                self._write(self.path, [line], append=True)
        except OSError as error:
            raise JournalError(
                f"cannot write the journal {self.path}: {error.strerror or error}"
            ) from None
        return len(entry["records"])

    @staticmethod
    def _write(path, lines, append):
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        descriptor = os.open(path, flags, 0o600)
        try:
            os.fchmod(descriptor, 0o600)  # whatever the umask, or an older file, said
            for line in lines:
                view = memoryview(line)
                while view:
                    written = os.write(descriptor, view)
                    view = view[written:]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    # ---- reading -----------------------------------------------------------------

    @staticmethod
    def _lines(path):
        try:
            with open(path, "rb") as handle:
                return [line for line in handle if line.strip()]
        except FileNotFoundError:
            return []

    @staticmethod
    def _entries(lines):
        """(entry, line) for each line that reads; a line cut short by a crash is skipped."""
        for line in lines:
            try:
                yield decode_line(line), line
            except (ValueError, TypeError):
                continue

    def pending(self, rejected=False):
        """How many records wait, in both files (or were set aside, with rejected=True)."""
        count = 0
        for path in ((self.rejected,) if rejected else (self.replaying, self.path)):
            for entry, _ in self._entries(self._lines(path)):
                count += len(entry.get("records") or [])
        return count

    # ---- replaying ---------------------------------------------------------------

    def replay(self, write):
        """Write every waiting batch with ``write(cloud, kind, records, cluster, stamp)``.

        Returns the number of records written. If ``write`` raises, the batches not yet
        written stay (in journal.replaying.jsonl) and the exception goes on up.
        """
        if not self.exists():
            return 0
        written = 0
        with self._lock():
            while True:  # what an earlier replay left, then the journal as it stands
                if not self.replaying.exists():
                    if not self.path.exists():
                        return written
                    os.replace(self.path, self.replaying)  # appends start a fresh journal
                written += self._replay_file(write)

    def _replay_file(self, write):
        written = 0
        lines = self._lines(self.replaying)
        done = 0
        try:
            for entry, line in self._entries(lines):
                try:
                    write(entry["cloud"], entry["kind"], entry.get("records") or [],
                          entry.get("cluster"), entry.get("stamp"))
                    written += len(entry.get("records") or [])
                except Rejected:  # the database will never take it: keep it aside
                    self._write(self.rejected, [line], append=True)
                done += 1
        except BaseException:
            self._keep(lines, done)
            raise
        self.replaying.unlink()
        return written

    def _keep(self, lines, done):
        """Leave only the batches not yet written, replacing the file atomically."""
        readable = [line for _, line in self._entries(lines)]
        rest = readable[done:]
        if len(rest) == len(readable):
            return  # nothing written: the file is already right
        temporary = self.replaying.with_suffix(".tmp")
        self._write(temporary, rest, append=False)
        os.replace(temporary, self.replaying)
