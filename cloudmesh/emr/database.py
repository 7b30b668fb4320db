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
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from cloudmesh.emr.config import Settings, state_dir
from cloudmesh.emr.errors import DatabaseError

KINDS = ("cluster", "instance", "step", "action")
TIMEOUT_MS = 3000
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
CONFIGURED_TIMEOUTS = re.compile(r"\s*\(configured timeouts:[^)]*\)")  # pymongo's, not the user's


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def collection_name(cloud, kind):
    return f"{cloud}-emr-{kind}"


def document_id(cloud, kind, ident):
    return f"{cloud}/{kind}/{ident}"


def _alive(pid):
    """Whether process ``pid`` still runs; a child of ours that has exited is reaped."""
    try:
        os.waitpid(pid, os.WNOHANG)  # a zombie would answer signal 0 for ever
    except (ChildProcessError, OSError):
        pass  # not our child: signal 0 alone tells
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answers(host, port, timeout=1.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedServer:
    """The SecantusDB server of MODE embedded: data, pid, port and log under one folder."""

    def __init__(self, folder=None):
        self.folder = Path(folder) if folder else state_dir("db")
        self.data = self.folder / "data"
        self.state_file = self.folder / "server.json"
        self.log = self.folder / "server.log"

    def _read_state(self):
        import json

        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def running(self):
        """The state of the running server ({pid, host, port, started}) or None."""
        state = self._read_state()
        if state and _alive(state["pid"]) and _answers(state["host"], state["port"]):
            return state
        return None

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

    @contextmanager
    def _lock(self):
        """Serialise starts, so two commands at once do not start two servers on one folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "start.lock", "w") as handle:
            try:
                import fcntl

                fcntl.flock(handle, fcntl.LOCK_EX)
            except ImportError:  # not POSIX: no lock, the state check still helps
                pass
            yield

    def start(self, wait=30.0):
        """Start the server unless it runs; return (state, started_now)."""
        try:
            return self._start(wait)
        except OSError as error:  # the folder cannot be made or written, the program not run
            where = getattr(error, "filename", None) or self.folder
            raise DatabaseError(
                f"cannot start the embedded database: {error.strerror or error} ({where}); "
                "fix that folder, or set CLOUDMESH_CONFIG_DIR elsewhere"
            ) from None

    def _start(self, wait):
        with self._lock():
            state = self.running()
            if state:
                return state, False
            self.data.mkdir(parents=True, exist_ok=True)
            command = [
                self.executable(), "--host", "127.0.0.1", "--port", "0",
                "--storage-path", str(self.data), "--standalone", "--log-level", "INFO",
            ]
            with open(self.log, "w") as log:
                process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, close_fds=True,
                )
            port = self._wait_for_port(process, wait)
            state = {
                "pid": process.pid, "host": "127.0.0.1", "port": port,
                "started": now().isoformat(), "data": str(self.data),
            }
            import json

            self.state_file.write_text(json.dumps(state))
            return state, True

    def _wait_for_port(self, process, wait):
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            found = LISTENING.search(text)
            if found and _answers("127.0.0.1", int(found.group(1))):
                return int(found.group(1))
            if process.poll() is not None:
                last = text.strip().splitlines()[-1:] or ["no output"]
                raise DatabaseError(
                    f"the embedded database did not start ({last[0]}); see {self.log}"
                )
            time.sleep(0.1)
        process.terminate()
        raise DatabaseError(f"the embedded database did not start within {wait:.0f} s; see {self.log}")

    def stop(self, wait=15.0):
        """Stop the server by its PID; return its state, or None if it was not running."""
        state = self._read_state()
        if not state or not _alive(state["pid"]):
            self.state_file.unlink(missing_ok=True)
            return None
        os.kill(state["pid"], signal.SIGTERM)
        deadline = time.monotonic() + wait
        while _alive(state["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(state["pid"]):  # it did not shut down in time: end it, and see it gone
            os.kill(state["pid"], signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _alive(state["pid"]) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.state_file.unlink(missing_ok=True)
        return state


class Database:
    """Where results are recorded. Connects lazily, on the first write or query."""

    def __init__(self, settings=None):
        self.settings = settings or Settings.load()
        self.mongo = self.settings.mongo()
        self.server = EmbeddedServer() if self.mongo["MODE"] == "embedded" else None
        self._client = None

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
            import pymongo

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

    @contextmanager
    def _guard(self):
        """pymongo's errors, and the embedded server's folder or process failing (OSError),
        become one DatabaseError, so the caller can still show what AWS answered."""
        import pymongo.errors

        try:
            yield
        except (pymongo.errors.PyMongoError, OSError) as error:
            where = getattr(self, "_where", None) or (
                f"{self.server.folder}" if self.server else "the configured server")
            reason = CONFIGURED_TIMEOUTS.sub("", str(error)).split(",")[0].split("\n")[0]
            raise DatabaseError(
                f"cannot record results in the database at {where} ({reason}); "
                "check 'cms emr db status' and cloudmesh.data.mongo in cloudmesh.yaml"
            ) from None

    def collection(self, cloud, kind):
        return self.client()[self.name][collection_name(cloud, kind)]

    def record(self, cloud, kind, records, cluster=None):
        """Upsert one document per record, keyed by its Id, in one unordered bulk write."""
        if not records:
            return 0
        from pymongo import UpdateOne

        stamp = now()
        operations = []
        for record in records:
            ident = record["Id"]
            cm = {
                "cm.cloud": cloud, "cm.kind": kind, "cm.id": ident,
                "cm.name": record.get("Name") or record.get("Action") or ident,
                "cm.cluster": cluster or record.get("ClusterId") or (ident if kind == "cluster" else None),
                "cm.modified": stamp,
            }
            body = {key: value for key, value in record.items() if key not in ("_id", "cm")}
            operations.append(UpdateOne(
                {"_id": document_id(cloud, kind, ident)},
                {"$set": {**body, **cm}, "$setOnInsert": {"cm.created": stamp}},
                upsert=True,
            ))
        with self._guard():
            self.collection(cloud, kind).bulk_write(operations, ordered=False)
        return len(operations)

    def find(self, cloud, kind, query=None):
        with self._guard():
            return list(self.collection(cloud, kind).find(query or {}))

    def status(self):
        """Where the database is and how many documents each of our collections holds."""
        info = {"Mode": self.mongo["MODE"], "Database": self.name}
        if self.server:
            state = self.server.running()
            info.update({
                "Running": bool(state), "Pid": state and state["pid"],
                "Address": state and f"{state['host']}:{state['port']}",
                "Data": str(self.server.data), "Log": str(self.server.log),
            })
            if not state:
                info["Collections"] = {}
                return info
        else:
            info["Address"] = f"{self.mongo['MONGO_HOST']}:{self.mongo['MONGO_PORT']}"
        with self._guard():
            database = self.client()[self.name]
            names = sorted(n for n in database.list_collection_names() if "-emr-" in n)
            info["Collections"] = {n: database[n].count_documents({}) for n in names}
            info["Running"] = True
        return info

    def close(self):
        if self._client is not None:
            self._client.close()
            self._client = None
