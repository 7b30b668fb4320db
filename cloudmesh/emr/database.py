"""The results store: every record the Provider returns, written to MongoDB with pymongo.

Collections are ``<cloud>-emr-<kind>`` in database ``cloudmesh`` (or MONGO_DBNAME).
A document is the AWS record plus a ``cm`` sub-document
``{cloud, kind, id, name, cluster, created, modified}``; ``_id`` is
``<cloud>/<kind>/<id>``, so a resource seen twice is one document, updated.

MODE ``embedded`` (the default) runs a SecantusDB server (a MongoDB-compatible
server from PyPI) as a separate, detached process on 127.0.0.1, started on first
need and reused by later commands. It is never imported into this process.
MODE ``native`` uses the MongoDB that cloudmesh.yaml names.
"""

import datetime
import functools
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from cloudmesh.emr.config import Settings, state_dir
from cloudmesh.emr.errors import DatabaseError, shorten

KINDS = ("cluster", "instance", "step", "action", "group", "metric")
DUPLICATE_KEY = 11000
INT64 = (-(2 ** 63), 2 ** 63 - 1)
TIMEOUT_MS = 3000
LEAVES = (float, bool, type(None), datetime.datetime)  # kinds BSON always takes as they are
IN_QUERY_IDS = 64  # more ids than this are looked up in one pass over the collection
WRITE_BATCH = 500  # upserts per bulk write
WRITES = "cm-writes"  # per collection: how many writes began and ended (Database._stored)
STALE_WRITE = 600.0  # seconds after which a write begun and never ended is taken as dead
RETRY_AFTER = 10.0  # seconds an unreachable database is not asked again (one command's span)
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
CONFIGURED_TIMEOUTS = re.compile(r"\s*\(configured timeouts:[^)]*\)")  # pymongo's, not the user's


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def digest(body, cm):
    """A digest of a record's content and its cm fields, the same for the same content
    whatever the order of its keys: how a record is known unchanged without reading it."""
    import hashlib
    import json

    text = json.dumps([body, cm], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def by_ids(collection, ids, projection=None):
    """{_id: document} of the documents with these ids. A few ids are one $in query; for
    many, one pass over the collection reads less: an $in of thousands of ids is slow on
    some servers (SecantusDB compares each document with the whole list), and the
    collection holds one cloud's records of one kind, mostly the ones asked for."""
    if not ids:
        return {}
    wanted = set(ids)
    query = {"_id": {"$in": ids}} if len(ids) <= IN_QUERY_IDS else {}
    return {doc["_id"]: doc for doc in collection.find(query, projection)
            if doc["_id"] in wanted}


def stored_digests(collection, ids, everything=False):
    """{_id: cm.hash (None if it has none)} of the documents with these ids, read as
    by_ids reads them, keeping only the digests; of every document with ``everything``."""
    if not ids and not everything:
        return {}
    wanted = set(ids)
    query = {"_id": {"$in": ids}} if len(ids) <= IN_QUERY_IDS and not everything else {}
    found = {}
    for doc in collection.find(query, {"cm.hash": 1}):
        if everything or doc["_id"] in wanted:
            found[doc["_id"]] = (doc.get("cm") or {}).get("hash")
    return found


def import_pymongo():
    """pymongo, imported without trying its pyOpenSSL TLS backend.

    Our connections never use TLS (cloudmesh.yaml has no TLS setting; the embedded
    server listens on 127.0.0.1), and trying that backend imports the cryptography
    package even where pyOpenSSL is absent: about 40% of pymongo's import time.
    pymongo then takes the standard library's ssl; the block is lifted right after.
    """
    if "pymongo" not in sys.modules:
        blocked = "pymongo.pyopenssl_context" not in sys.modules
        if blocked:
            sys.modules["pymongo.pyopenssl_context"] = None
        try:
            import pymongo  # noqa: F401
        finally:
            if blocked and sys.modules.get("pymongo.pyopenssl_context", 0) is None:
                del sys.modules["pymongo.pyopenssl_context"]
    return sys.modules["pymongo"]


def release_closed_monitors():
    """Let the exit of the interpreter go without joining pymongo's closed monitors.

    A closed client's monitor threads (daemon threads) end at their next wake-up, up to
    half a second later; pymongo's exit handler joins each one it knows, so a command
    that has finished waits that long for threads with nothing left to do. The closed
    ones are dropped from that list; one still open is left alone. (About 0.5 s of the
    0.75 s of `cms emr list clusters` went there.)
    """
    try:
        from pymongo import periodic_executor
    except ImportError:
        return
    executors = getattr(periodic_executor, "_EXECUTORS", None)
    if not isinstance(executors, set):
        return
    for ref in list(executors):
        executor = ref()
        if executor is None or getattr(executor, "_stopped", False):
            executors.discard(ref)


def collection_name(cloud, kind):
    return f"{cloud}-emr-{kind}"


def document_id(cloud, kind, ident):
    return f"{cloud}/{kind}/{ident}"


def _runs_secantus(cmdline):
    """Whether a command line runs SecantusDB's server (its console script, under any
    interpreter)."""
    return any(Path(word).name in ("secantusd-py", "secantusd-py.exe") for word in cmdline[:2])


class Journaled(DatabaseError):
    """The records could not be written, and wait in the journal: nothing is lost."""

    def __init__(self, error, count, path):
        super().__init__(
            f"{error.message.split('; check')[0]}; {count} records are journaled in {path} "
            "and will be written when the database is back (or now: 'cms emr db sync')")
        self.count = count
        self.cause = error
        self.journal = path


def _escape_text(text):
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _storable_key(key):
    """A key BSON and MongoDB take as a field name, and whether it had to change."""
    return _storable_name(str(key))


@functools.lru_cache(maxsize=4096)
def _storable_name(key):
    """_storable_key of a string, remembered: a listing repeats the same few field names
    in every record (5,000 clusters: 60,000 names, a dozen of them different)."""
    fixed = _escape_text(key).replace("\0", "\\0")
    if fixed.startswith("$"):
        fixed = "\\u0024" + fixed[1:]
    return fixed, fixed != key


def _utf8(text):
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _clean(value):
    """Whether BSON and MongoDB take ``value`` as it is: what ``storable`` would leave
    alone. The common leaves (plain text, datetimes, numbers) are checked without a call."""
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str or _storable_name(key)[1]:
                return False
            kind = type(item)
            if kind is str:
                if not item.isascii() and not _utf8(item):
                    return False
            elif kind in (dict, list, tuple, int) or kind not in LEAVES:
                if not _clean(item):
                    return False
        return True
    if isinstance(value, (list, tuple)):
        return all(_clean(item) for item in value)
    if isinstance(value, str):
        return value.isascii() or _utf8(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return INT64[0] <= value <= INT64[1]
    return True


def storable(record):
    """``record`` with what BSON cannot hold escaped, and the paths of what was.

    AWS can hand back text that is not valid Unicode (a lone surrogate from a JSON
    escape); BSON holds only UTF-8. Such text is kept with backslash escapes
    (``caf\\udce9``); field names that MongoDB refuses (NUL, a leading $) are escaped
    the same way; integers beyond 64 bits become their decimal text.
    A record with nothing to escape (nearly all) is returned as it is, not copied.
    """
    if _clean(record):
        return record, []
    escaped = []

    def walk(value, path):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
                return value
            except UnicodeEncodeError:
                escaped.append(path)
                return _escape_text(value)
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            if INT64[0] <= value <= INT64[1]:
                return value
            escaped.append(path)
            return str(value)
        if isinstance(value, dict):
            result = {}
            for key, item in value.items():
                name, changed = _storable_key(key)
                where = f"{path}.{name}" if path else name
                if changed:
                    escaped.append(where)
                result[name] = walk(item, where)
            return result
        if isinstance(value, (list, tuple)):
            return [walk(item, f"{path}.{index}") for index, item in enumerate(value)]
        return value

    return walk(record, ""), escaped


class EmbeddedServer:
    """The SecantusDB server of MODE embedded: data, pid, port and log under one folder.

    Found again, checked and stopped through ``cloudmesh.emr.processes``: a process is
    this server only when it runs ``secantusd-py`` with ``--storage-path`` our data
    folder. Warnings (a state file rebuilt or removed) collect in ``self.warnings``.
    """

    def __init__(self, folder=None):
        from cloudmesh.emr.processes import Server

        self.folder = Path(folder).absolute() if folder else state_dir("db")
        self.data = self.folder / "data"
        self.state_file = self.folder / "server.json"
        self.log = self.folder / "server.log"
        self._server = Server(
            "the embedded database", self.data, self.state_file, self.log,
            _runs_secantus, "--storage-path", self._rebuild,
        )
        self.warnings = self._server.warnings

    def _rebuild(self, process):
        """The state of a running server, from the process table alone."""
        from cloudmesh.emr import processes

        addresses = processes.listening(process)
        host, port = addresses[0] if addresses else (processes.LOOPBACK, None)
        started = datetime.datetime.fromtimestamp(
            processes.created(process), datetime.timezone.utc)
        return {"pid": process.pid, "host": host, "port": port,
                "started": started.isoformat(), "data": str(self.data)}

    def running(self):
        """The state of the running server ({pid, host, port, started, data}) or None.

        A server of ours that runs but does not answer (still starting, or stuck) is
        not running; ``start`` says what to do about it."""
        state, process = self._found()
        if state and _answers(state["host"], state["port"]):
            return state
        return None

    def _found(self):
        """(state, process) of a server of ours, with its address checked against the
        sockets it listens on when the state file's address does not answer."""
        from cloudmesh.emr import processes

        try:
            state, process = self._server.locate()
        except OSError:
            return None, None
        if state and not _answers(state.get("host"), state.get("port")):
            rebuilt = self._rebuild(process)
            if rebuilt["port"] and _answers(rebuilt["host"], rebuilt["port"]):
                state = {**state, "host": rebuilt["host"], "port": rebuilt["port"]}
                try:
                    processes.write_json(self.state_file, state)
                except OSError:
                    pass
        return state, process

    @staticmethod
    def executable():
        beside = Path(sys.executable).parent / "secantusd-py"
        found = str(beside) if beside.exists() else shutil.which("secantusd-py")
        if not found:
            raise DatabaseError(
                "the embedded database needs SecantusDB: pip install SecantusDB, "
                "or set cloudmesh.data.mongo.MODE to native in cloudmesh.yaml"
            )
        return found

    def start(self, wait=30.0):
        """Start the server unless it runs; return (state, started_now)."""
        from cloudmesh.emr.processes import ProcessError

        try:
            return self._start(wait)
        except ProcessError as error:
            raise DatabaseError(error.message) from None
        except OSError as error:  # the folder cannot be made or written, the program not run
            where = getattr(error, "filename", None) or self.folder
            raise DatabaseError(
                f"cannot start the embedded database: {error.strerror or error} ({where}); "
                "fix that folder, or set CLOUDMESH_CONFIG_DIR elsewhere"
            ) from None

    def _start(self, wait):
        from cloudmesh.emr import processes

        processes.private_folder(self.folder)
        with self._server.start_lock(what="start the database"):
            state, process = self._found()
            if state:
                if _answers(state["host"], state["port"]):
                    return state, False
                self._wait_answer(process, wait)  # started by someone else a moment ago?
                state, process = self._found()
                if state and _answers(state["host"], state["port"]):
                    return state, False
                raise DatabaseError(
                    f"the embedded database (pid {process.pid}) runs on {self.data} but does "
                    f"not answer; see {self.log}, or stop it with 'cms emr db stop'"
                )
            self.data.mkdir(parents=True, exist_ok=True)
            command = [
                self.executable(), "--host", processes.LOOPBACK, "--port", "0",
                "--storage-path", str(self.data), "--standalone", "--log-level", "INFO",
            ]

            def ready(_process, output):
                found = LISTENING.search(output)
                if found and _answers(processes.LOOPBACK, int(found.group(1))):
                    return int(found.group(1))
                return None

            process, port = processes.spawn(
                command, self.log, ready, wait, "the embedded database", cwd=self.folder)
            state = {
                "pid": process.pid, "host": processes.LOOPBACK, "port": port,
                "started": now().isoformat(), "data": str(self.data),
            }
            try:
                processes.write_json(self.state_file, state)
            except BaseException:
                processes.terminate(processes_of(process))
                raise
            return state, True

    def _wait_answer(self, process, wait):
        from cloudmesh.emr import processes

        deadline = time.monotonic() + min(wait, 10.0)
        while time.monotonic() < deadline and process.is_running():
            for host, port in processes.listening(process):
                if _answers(host, port):
                    return
            time.sleep(0.2)

    def stop(self, wait=15.0):
        """Stop our server (found by its state file or in the process table) by its PID;
        return its state, or None if none was running. A pid that is not our server
        serving our folder is never signalled."""
        from cloudmesh.emr.processes import ProcessError

        try:
            state, pids = self._server.stop(timeout=wait)
        except ProcessError as error:
            raise DatabaseError(error.message) from None
        except OSError as error:
            raise DatabaseError(
                f"cannot stop the embedded database: {error.strerror or error}; "
                f"see {self.folder}"
            ) from None
        if not pids:
            return None
        return state or {"pid": pids[0]}


def processes_of(popen):
    """The psutil Process of a Popen we started (for terminate())."""
    import psutil

    try:
        return [psutil.Process(popen.pid)]
    except psutil.Error:
        return []


def _answers(host, port, timeout=1.0):
    from cloudmesh.emr.processes import answers

    return bool(host) and bool(port) and answers(host, port, timeout)


class Database:
    """Where results are recorded. Connects lazily, on the first write or query."""

    def __init__(self, settings=None):
        self.settings = settings or Settings.load()
        self.mongo = self.settings.mongo()
        self.server = EmbeddedServer() if self.mongo["MODE"] == "embedded" else None
        self._client = None
        self._known = {}  # collection name -> ({_id: cm.hash}, writes counted); see _stored

    @property
    def name(self):
        return str(self.mongo["MONGO_DBNAME"])

    def address(self):
        if self.server:
            state = self.server.running()
            return (state["host"], state["port"]) if state else (None, None)
        return self.mongo["MONGO_HOST"], self.mongo["MONGO_PORT"]

    def client(self):
        if self._client is None:
            if self.server:
                state, _ = self.server.start()
                host, port = state["host"], state["port"]
            else:
                host, port = self.mongo["MONGO_HOST"], self.mongo["MONGO_PORT"]
            pymongo = import_pymongo()

            options = {}
            if self.mongo.get("MONGO_USERNAME"):
                options["username"] = str(self.mongo["MONGO_USERNAME"])
                options["password"] = str(self.mongo.get("MONGO_PASSWORD") or "")
            self._client = pymongo.MongoClient(
                host, port, tz_aware=True, serverSelectionTimeoutMS=TIMEOUT_MS,
                connectTimeoutMS=TIMEOUT_MS, **options,
            )
            self._where = f"{host}:{port}"
        return self._client

    def _reason(self, error):
        where = getattr(self, "_where", None) or (
            f"{self.server.folder}" if self.server else "the configured server")
        reason = CONFIGURED_TIMEOUTS.sub("", str(error)).split(",")[0].split("\n")[0]
        return where, shorten(reason, 160)

    @contextmanager
    def _guard(self):
        """pymongo's errors (encoding ones included), and the embedded server's folder or
        process failing (OSError), become one DatabaseError, so the caller can still show
        what AWS answered."""
        import_pymongo()
        import bson.errors
        import pymongo.errors

        try:
            yield
        except (pymongo.errors.PyMongoError, bson.errors.BSONError, UnicodeEncodeError,
                OverflowError, OSError) as error:
            where, reason = self._reason(error)
            raise DatabaseError(
                f"cannot record results in the database at {where} ({reason}); "
                "check 'cms emr db status' and cloudmesh.data.mongo in cloudmesh.yaml"
            ) from None

    def collection(self, cloud, kind):
        return self.client()[self.name][collection_name(cloud, kind)]

    @property
    def journal(self):
        if getattr(self, "_journal", None) is None:
            from cloudmesh.emr.journal import Journal

            self._journal = Journal()
        return self._journal

    def record(self, cloud, kind, records, cluster=None):
        """Write what changed: one document per record, keyed by its Id.

        Waiting journaled records are written first. A record whose content digest
        (``cm.hash``) matches its document's is not written again (its ``cm.modified``
        stays); see ``_write``. Returns ``[(record, previous document or None)]`` for the
        records written, in the order given, so a caller can tell what changed from
        what without reading again. When the records cannot be written, they go to the
        journal and ``Journaled`` says how many; DatabaseError only when the journal
        cannot take them either.
        """
        if not records:
            return []
        stamp = now()
        down = getattr(self, "_down", None)
        if down is not None and time.monotonic() - down[0] < RETRY_AFTER:
            self._journal_batch(cloud, kind, records, cluster, stamp, down[1])
        try:
            self.sync()
            written = self._write(cloud, kind, records, cluster, stamp)
        except DatabaseError as error:
            if not getattr(error, "refused", False):  # unreachable: do not wait on it again soon
                self._down = (time.monotonic(), error)
            self._journal_batch(cloud, kind, records, cluster, stamp, error)
        self._down = None
        return written

    def _journal_batch(self, cloud, kind, records, cluster, stamp, error):
        from cloudmesh.emr.journal import JournalError

        try:
            count = self.journal.append(cloud, kind, records, cluster=cluster, stamp=stamp)
        except JournalError as failed:
            raise DatabaseError(f"{error.message}; and {failed}: these results are not "
                                "recorded") from None
        raise Journaled(error, count, self.journal.path)

    def sync(self):
        """Write the journaled records, if any wait; return how many were written."""
        if not self.journal.exists():
            return 0
        from cloudmesh.emr.journal import JournalError

        try:
            return self.journal.replay(self._replay_batch)
        except (JournalError, OSError) as error:
            if isinstance(error, DatabaseError):
                raise
            raise DatabaseError(f"cannot replay the journal {self.journal.path}: "
                                f"{getattr(error, 'strerror', None) or error}") from None

    def _replay_batch(self, cloud, kind, records, cluster, stamp):
        import_pymongo()
        import bson.errors
        import pymongo.errors

        from cloudmesh.emr.journal import Rejected

        try:
            self._write(cloud, kind, records, cluster, stamp, replay=True)
        except DatabaseError as error:
            refused = getattr(error, "refused", False)
            if refused:
                raise Rejected(error.message) from None
            raise
        except (bson.errors.BSONError, pymongo.errors.OperationFailure) as error:
            raise Rejected(str(error)) from None

    @staticmethod
    def stored_form(cloud, kind, given, cluster):
        """(_id, body, cm fields, escaped paths) of one record as its document holds it."""
        record, escaped = storable(given)
        ident = record["Id"]
        cm = {
            "cloud": cloud, "kind": kind, "id": ident,
            "name": record.get("Name") or record.get("Action") or ident,
            "cluster": cluster or record.get("ClusterId") or (ident if kind == "cluster" else None),
        }
        if "_id" in record or "cm" in record:
            record = {key: value for key, value in record.items() if key not in ("_id", "cm")}
        return document_id(cloud, kind, ident), record, cm, escaped

    @classmethod
    def documents(cls, cloud, kind, records, cluster):
        """{_id: (record, digest)} of ``records``; of two records with one Id the last
        wins. Only the digest is kept of each stored form: the few records that changed
        are made into documents again when they are written."""
        documents = {}
        for given in records:
            key, body, cm, escaped = cls.stored_form(cloud, kind, given, cluster)
            documents[key] = (given, digest(body, {**cm, "escaped": escaped}))
        return documents

    @staticmethod
    def operation(key, body, cm, escaped, hashed, stamp, previous=None, replay=False):
        """The upsert of one changed record. Fields its previous document has and the
        record no longer has are removed. A replayed batch (``replay``) does not overwrite
        a document that a later write already updated: its filter then matches nothing
        and the upsert's insert meets the existing _id (a duplicate, ignored)."""
        import_pymongo()
        from pymongo import UpdateOne

        fields = {f"cm.{name}": value for name, value in cm.items()}
        fields.update({"cm.hash": hashed, "cm.modified": stamp})
        update = {"$setOnInsert": {"cm.created": stamp}}
        gone = dict.fromkeys((field for field in previous or {}
                              if field not in body and field not in ("_id", "cm")), "")
        if escaped:
            fields["cm.escaped"] = escaped
        else:
            gone["cm.escaped"] = ""
        update["$set"] = {**body, **fields}
        if gone:
            update["$unset"] = gone
        where = {"_id": key}
        if replay:
            where["$or"] = [{"cm.modified": {"$lte": stamp}}, {"cm.modified": None}]
        return UpdateOne(where, update, upsert=True)

    def _writes(self):
        return self.client()[self.name][WRITES]

    def _stored(self, collection, ids):
        """(stored digests of ``ids``, the digests of the whole collection or None, the
        count of writes they hold at or None).

        Reading the digests of a few ids is one $in query. Many are one pass over the
        collection, which costs the server a decoded document each (a third of a second
        for 5,000 on SecantusDB), so the digests of the whole collection are kept from
        one listing to the next in this process, and trusted only while no write to the
        collection has begun since, by this process or any other: each write counts
        itself in ``cm-writes`` when it begins and when it ends (``_write``). They are
        kept only when every write begun had ended before the pass (a write still
        running may land after it), and only while the collection holds as many
        documents (one deleted by hand is written again). A write begun and never ended
        (its process killed) stops the keeping until it is STALE_WRITE seconds old."""
        name = collection.name
        known = self._known.pop(name, None)
        if len(ids) <= IN_QUERY_IDS:
            stored = stored_digests(collection, ids)
            return (stored, *known) if known else (stored, None, None)
        writes = self._writes()
        counts = writes.find_one({"_id": name}) or self._counted(
            name, {"$setOnInsert": {"began": 0, "ended": 0, "at": now()}})
        began, ended = counts.get("began"), counts.get("ended")
        if not (type(began) is int and type(ended) is int):  # not counted by us: no keeping
            return stored_digests(collection, ids), None, None
        if (known and began == ended == known[1] and
                collection.estimated_document_count() == len(known[0])):
            digests = known[0]
            return {key: digests[key] for key in ids if key in digests}, digests, began
        if began != ended:
            at = counts.get("at")
            if isinstance(at, datetime.datetime) and \
                    (now() - at).total_seconds() < STALE_WRITE:
                return stored_digests(collection, ids), None, None
            done = writes.update_one({"_id": name, "began": began, "ended": ended},
                                     {"$set": {"ended": began}})
            if not done.modified_count:
                return stored_digests(collection, ids), None, None
        digests = stored_digests(collection, ids, everything=True)
        return digests, digests, began

    def _counted(self, name, update):
        """``update`` the counts of collection ``name`` (made if missing); the counts after.
        Two processes making the same one at once: one of them meets the other's."""
        import pymongo.errors

        for attempt in (1, 2):
            try:
                return self._writes().find_one_and_update(
                    {"_id": name}, update, upsert=True, return_document=True) or {}
            except pymongo.errors.DuplicateKeyError:
                if attempt == 2:
                    raise
        return {}

    def _count_write(self, name, field):
        """Count a write to collection ``name`` as begun or ended: (began, ended) after."""
        if field == "ended":  # counted where it began; a counter deleted since stays so
            counts = self._writes().find_one_and_update(
                {"_id": name}, {"$inc": {"ended": 1}}, return_document=True) or {}
        else:
            counts = self._counted(name, {"$inc": {"began": 1}, "$set": {"at": now()},
                                          "$setOnInsert": {"ended": 0}})
        return counts.get("began"), counts.get("ended")

    def _write(self, cloud, kind, records, cluster, stamp, replay=False):
        """Read the stored digests of the records' ids (``_stored``); read the changed
        ones' documents whole (their previous state); upsert those in unordered bulk
        writes, counted in ``cm-writes`` as begun before and ended after. Returns
        [(record, previous document or None)] of what was written."""
        documents = self.documents(cloud, kind, records, cluster)
        with self._guard():
            collection = self.collection(cloud, kind)
            name = collection.name
            stored, digests, count = self._stored(collection, list(documents))
            changed = [key for key, (_, hashed) in documents.items()
                       if stored.get(key, False) != hashed]
            if not changed:
                if digests is not None:
                    self._known[name] = (digests, count)
                return []
            previous = by_ids(collection, [key for key in changed if key in stored])
            operations = []
            for key in changed:
                given, hashed = documents[key]
                _, body, cm, escaped = self.stored_form(cloud, kind, given, cluster)
                operations.append(self.operation(key, body, cm, escaped, hashed, stamp,
                                                 previous.get(key), replay=replay))
            began = self._count_write(name, "began")
            try:
                kept_newer = self._bulk(collection, operations, replay)
            except BaseException:
                try:
                    self._count_write(name, "ended")
                except Exception:  # noqa: BLE001  the first error is the one to tell
                    pass
                raise
            ended = self._count_write(name, "ended")
            if kept_newer:
                return []  # newer documents kept: what a replay should do
            if digests is not None and began == (count + 1, count) and \
                    ended == (count + 1, count + 1):  # no other write since the digests
                digests = {**digests, **{key: documents[key][1] for key in changed}}
                self._known[name] = (digests, count + 1)
        return [(documents[key][0], previous.get(key)) for key in changed]

    def _bulk(self, collection, operations, replay):
        """Write the upserts; True when a replay met only newer documents (kept)."""
        import pymongo.errors

        try:  # in pieces: each answers well within the timeouts, even on a busy server
            for start in range(0, len(operations), WRITE_BATCH):
                collection.bulk_write(operations[start:start + WRITE_BATCH], ordered=False)
        except pymongo.errors.BulkWriteError as error:
            errors = error.details.get("writeErrors") or []
            if replay and all(e.get("code") == DUPLICATE_KEY for e in errors):
                return True
            where, reason = self._reason(errors[0].get("errmsg") if errors else error)
            refused = DatabaseError(
                f"the database at {where} refused {len(errors)} of {len(operations)} "
                f"records ({reason})")
            refused.refused = True
            raise refused from None
        return False

    def find(self, cloud, kind, query=None):
        with self._guard():
            return list(self.collection(cloud, kind).find(query or {}))

    def status(self):
        """Where the database is and how many documents each of our collections holds."""
        info = {"Mode": self.mongo["MODE"], "Database": self.name,
                "Journaled": self.journal.pending()}
        rejected = self.journal.pending(rejected=True)
        if rejected:
            info["Rejected"] = f"{rejected} (in {self.journal.rejected})"
        if self.server:
            # the process table, not only the state file, says whether it runs
            state, process = self.server._found()
            info.update({
                "Running": bool(process), "Pid": process and process.pid,
                "Address": state and state.get("port") and f"{state['host']}:{state['port']}",
                "Data": str(self.server.data), "Log": str(self.server.log),
            })
            if state and not _answers(state.get("host"), state.get("port")):
                self.server.warnings.append(
                    f"the embedded database (pid {process.pid}) runs but does not answer; "
                    f"see {self.server.log}, or stop it with 'cms emr db stop'")
                state = None
            if not state:
                info["Collections"] = {}
                return info
        else:
            info["Address"] = f"{self.mongo['MONGO_HOST']}:{self.mongo['MONGO_PORT']}"
        try:
            self._count(info)
        except DatabaseError as error:
            info.update({"Running": False, "Collections": {}})
            error.status = info  # what status can still tell: where, and what waits
            raise
        return info

    def _count(self, info):
        with self._guard():
            database = self.client()[self.name]
            names = sorted(n for n in database.list_collection_names() if "-emr-" in n)
            info["Collections"] = {n: database[n].count_documents({}) for n in names}
            info["Running"] = True
        return info

    def take_warnings(self):
        """What the embedded server has to say (a state file rebuilt or removed), once."""
        if self.server is None:
            return []
        taken = list(self.server.warnings)
        del self.server.warnings[:]
        return taken

    def close(self):
        """Close the client, and do not make the interpreter's exit wait for its monitors."""
        if self._client is not None:
            self._client.close()
            self._client = None
            release_closed_monitors()
