"""Nothing lost, nothing doubled, nothing poisoned (issue 9).

- A fault-injecting HTTP proxy in front of the moto server answers 20% of the calls,
  and every fourth call that creates, with a 500, a throttle or a dropped connection
  *after* moto acted: starts and runs still make exactly one cluster or step each
  (counted with boto3 straight at moto).
- Text that is not valid Unicode is refused before AWS; such text coming from AWS is
  listed and stored (escaped, and said so in ``cm.escaped``).
- The journal: a database that is down, or killed with SIGKILL mid-write, loses
  nothing; the records are written, once, when it is back (read with pymongo).
- Credentials are all or nothing; a typo names the closest key.
"""

import http.client
import http.server
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from emr_helpers import (  # noqa: F401  lean_moto: autouse
    all_clusters, backend, lean_moto, one_error_line, run_job_flow,
)

FAULT_RATE = 0.2
FAULTS = ("500", "throttle", "drop")
CREATING = ("RunJobFlow", "AddJobFlowSteps")  # every fourth answer lost, each kind in turn
CREATED = 20  # clusters started through the proxy, then one step added to each


# ---- a proxy that loses answers ----------------------------------------------------------------

class FaultProxy:
    """Forwards each request to ``target``, then replaces some answers with a 500, a 400
    ThrottlingException or a dropped connection: moto has acted by then. A call that
    creates (CREATING) loses its 2nd, 6th, 10th... answer, the kinds in turn, so each
    kind meets each of them however many calls a command makes; others lose ``rate`` of
    theirs (seeded)."""

    def __init__(self, target, rate=FAULT_RATE, seed=9):
        self.target = target
        self.rate = rate
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.faults = {}  # (X-Amz-Target, kind) -> count
        self.calls = {}  # X-Amz-Target -> calls so far
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()  # answers go out whole, not held back by Nagle's algorithm
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                host, port = proxy.target
                upstream = http.client.HTTPConnection(host, port, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                operation = self.headers.get("X-Amz-Target", self.command).split(".")[-1]
                with proxy.lock:
                    number = proxy.calls[operation] = proxy.calls.get(operation, 0) + 1
                    if operation in CREATING:
                        fault = FAULTS[number // 4 % 3] if number % 4 == 2 else None
                    else:
                        fault = (proxy.random.choice(FAULTS)
                                 if proxy.random.random() < proxy.rate else None)
                    if fault:
                        key = (operation, fault)
                        proxy.faults[key] = proxy.faults.get(key, 0) + 1
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "500":
                    self._send(500, json.dumps({"__type": "InternalFailure",
                                                "message": "injected failure"}).encode(),
                               {"Content-Type": "application/x-amz-json-1.1"})
                elif fault == "throttle":
                    self._send(400, json.dumps({"__type": "ThrottlingException",
                                                "message": "Rate exceeded"}).encode(),
                               {"Content-Type": "application/x-amz-json-1.1"})
                else:
                    self._send(answer.status, data,
                               {k: v for k, v in answer.getheaders()
                                if k.lower() not in ("content-length", "transfer-encoding",
                                                     "connection")})

            def _send(self, status, data, headers):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def count(self, operation):
        return sum(n for (op, _), n in self.faults.items() if op == operation)


@pytest.fixture
def quick_backoff(monkeypatch):
    """Retries wait milliseconds, not seconds: botocore's standard mode and ours."""
    import botocore.retries.standard

    from cloudmesh.emr.api import provider

    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount",
                        lambda self, context: 0.005)
    monkeypatch.setattr(provider, "BACKOFF_BASE", 0.005)


@pytest.fixture
def moto_direct(moto_server):
    """boto3 straight at the (reset) moto server: what AWS holds, not what we say."""
    import boto3
    from emr_helpers import reset_moto

    reset_moto(moto_server)
    return boto3.client("emr", endpoint_url=moto_server, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_lost_answers_make_no_duplicate_clusters_or_steps(cms, cm, moto_server, moto_direct,
                                                          quick_backoff):
    host, port = moto_server.split("//")[1].split(":")
    with FaultProxy((host, int(port))) as proxy:
        cm.write(clouds={"flaky": {"credentials": {
            "EC2_ACCESS_ID": "testing", "EC2_SECRET_KEY": "testing", "region": "us-east-1",
            "endpoint": proxy.url}}},
            emr={"default": {"cloud": "flaky"}, "retry": {"attempts": 8}})
        started = []
        for number in range(CREATED):
            result = cms("start", f"flaky-{number}", "--count=1")
            assert result.code == 0, result.err
            started.append(result.out.strip())
        steps = []
        for number, cluster_id in enumerate(started):
            result = cms("run", cluster_id, "jobs", f"job{number}.py", "--", "--n", number)
            assert result.code == 0, result.err
            steps.append(result.out.strip())
    # the proxy did lose answers of the very calls that create, in each way
    assert all(proxy.faults.get((operation, kind)) for operation in CREATING
               for kind in FAULTS), proxy.faults
    clusters = all_clusters(moto_direct)
    assert len(clusters) == CREATED
    assert sorted(c["Id"] for c in clusters) == sorted(started)  # each printed id is real
    assert sorted(c["Name"] for c in clusters) == sorted(f"flaky-{n}" for n in range(CREATED))
    made = {}
    for cluster_id in started:
        for step in moto_direct.list_steps(ClusterId=cluster_id)["Steps"]:
            made[step["Id"]] = (cluster_id, step["Config"]["Args"])
    assert len(made) == CREATED and sorted(made) == sorted(steps)
    for number, cluster_id in enumerate(started):  # one step each, on its own cluster
        assert [a for c, a in made.values() if c == cluster_id] == [
            ["spark-submit", f"s3://jobs/job{number}.py", "--n", str(number)]]
    # and every start was recorded once
    actions = [d for d in cm.docs("flaky", "action") if d["Action"] == "start"]
    assert sorted(d["Target"] for d in actions) == sorted(started)


def test_a_second_start_with_the_same_key_starts_nothing(cms, cm, aws):
    import boto3

    emr = boto3.client("emr", region_name="us-east-1")
    first = cms("start", "keyed", "--idempotency-key=nightly-2025-05-04")
    assert first.code == 0 and first.err == ""
    second = cms("start", "keyed", "--idempotency-key=nightly-2025-05-04")
    assert second.code == 0
    assert second.out == first.out  # the same cluster id
    assert second.err.startswith("WARNING: ") and first.out.strip() in second.err
    assert "nightly-2025-05-04" in second.err
    clusters = all_clusters(emr)
    assert [c["Id"] for c in clusters] == [first.out.strip()]
    tags = emr.describe_cluster(ClusterId=first.out.strip())["Cluster"]["Tags"]
    assert tags == [{"Key": "cloudmesh:request", "Value": "nightly-2025-05-04"}]
    # a new key, or none, is a new cluster; an ended cluster frees its key
    assert cms("start", "keyed", "--idempotency-key=other").code == 0
    plain = cms("start", "keyed")
    assert plain.code == 0
    tag = emr.describe_cluster(ClusterId=plain.out.strip())["Cluster"]["Tags"]
    assert tag[0]["Key"] == "cloudmesh:request" and len(tag[0]["Value"]) == 32  # a UUID
    emr.terminate_job_flows(JobFlowIds=[first.out.strip()])
    again = cms("start", "keyed", "--idempotency-key=nightly-2025-05-04")
    assert again.code == 0 and again.out != first.out
    assert len(all_clusters(emr)) == 4


def test_a_bad_idempotency_key_is_exit_2(cms, aws):
    import boto3

    for key in ("", "a" * 129, "semi;colon", "caf\udce9"):
        result = cms("start", "keyed", f"--idempotency-key={key}")
        assert result.code == 2 and one_error_line(result.err), (key, result.err)
        assert "--idempotency-key" in result.err
    assert all_clusters(boto3.client("emr", region_name="us-east-1")) == []


def test_rest_idempotency_key_on_clusters_and_steps(cm, aws):
    import boto3

    from cloudmesh.emr.api.server import create_app

    emr = boto3.client("emr", region_name="us-east-1")
    base = "http://127.0.0.1:8080"
    with create_app().test_client(base_url=base) as client:
        headers = {"Idempotency-Key": "rest-key-1"}
        one = client.post("/clusters", json={"name": "rest"}, headers=headers)
        two = client.post("/clusters", json={"name": "rest"}, headers=headers)
        assert one.status_code == 201 and two.status_code == 201
        cluster_id = one.json()["ClusterId"]
        assert two.json()["ClusterId"] == cluster_id
        assert two.json()["Action"]["Response"]["Existing"] is True
        step = {"type": "spark", "bucket": "jobs", "key": "wordcount.py", "args": ["x"]}
        first = client.post(f"/clusters/{cluster_id}/steps", json=step,
                            headers={"Idempotency-Key": "step-1"})
        again = client.post(f"/clusters/{cluster_id}/steps", json=step,
                            headers={"Idempotency-Key": "step-1"})
        other = client.post(f"/clusters/{cluster_id}/steps", json=step)
        assert first.status_code == again.status_code == other.status_code == 201
        assert again.json()["StepId"] == first.json()["StepId"] != other.json()["StepId"]
        lone = client.post("/clusters", content=b'{"name": "caf\\udce9"}',
                           headers={"Content-Type": "application/json"})
        assert lone.status_code == 400 and "name" in lone.json()["detail"]
    assert [c["Id"] for c in all_clusters(emr)] == [cluster_id]
    assert len(emr.list_steps(ClusterId=cluster_id)["Steps"]) == 2


# ---- text that is not valid Unicode ------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["start", "caf\udce9"],
    ["start", "ok", "--release=emr-7.12.0\udce9"],
    ["run", "j-AAAAAAAAAAAAA", "jobs", "job.py", "caf\udce9"],
    ["run", "j-AAAAAAAAAAAAA", "jobs", "caf\udce9.py"],
    ["copy", "j-AAAAAAAAAAAAA", "jobs", "caf\udce9"],
    ["upload", "setup.py", "jobs", "caf\udce9"],
    ["list", "clusters", "--cloud=caf\udce9"],
])
def test_undecodable_words_are_exit_2_and_reach_no_aws(cms, aws, args):
    import boto3

    emr = boto3.client("emr", region_name="us-east-1")
    cluster_id = run_job_flow(emr, "existing")
    args = [cluster_id if a == "j-AAAAAAAAAAAAA" else a for a in args]
    result = cms(*args)
    assert result.code == 2 and one_error_line(result.err), result.err
    assert "not valid text" in result.err and "\\xe9" in result.err
    assert "unexpected" not in result.err
    assert len(all_clusters(emr)) == 1
    assert emr.list_steps(ClusterId=cluster_id)["Steps"] == []


def test_text_from_aws_that_is_not_unicode_is_listed_and_stored(cms, cm, aws):
    import boto3

    emr = boto3.client("emr", region_name="us-east-1")
    odd = run_job_flow(emr, "placeholder")
    fine = run_job_flow(emr, "fine")
    backend().clusters[odd].name = "caf\udce9"  # moto answers it as "caf\\udce9" in JSON
    for fmt in ("table", "csv", "json", "yaml", "dict"):
        result = cms("list", "clusters", f"--format={fmt}")
        assert result.code == 0 and result.err == "", (fmt, result.err)
        assert fine in result.out and odd in result.out
    docs = {d["Id"]: d for d in cm.docs("aws", "cluster")}
    assert set(docs) == {odd, fine}
    assert docs[odd]["Name"] == "caf\\udce9" and docs[odd]["cm"]["escaped"] == ["Name"]
    assert "escaped" not in docs[fine]["cm"]
    described = cms("describe", odd, "--format=json")
    assert described.code == 0 and json.loads(described.out)["Name"] == "caf\udce9"


def test_an_object_name_with_an_undecodable_byte_is_exit_2(cms_process, cm):
    result = cms_process("emr", "upload", "setup.py", "jobs", "caf\udce9")
    assert result.code == 2 and one_error_line(result.err), result.err
    assert "BUCKETNAME" in result.err and "unexpected" not in result.err


# ---- the journal -------------------------------------------------------------------------------

class Mongo:
    """A SecantusDB server of its own, on a fixed port, stopped and started at will."""

    def __init__(self, folder):
        from cloudmesh.emr.database import EmbeddedServer

        self.executable = EmbeddedServer.executable()
        self.folder = Path(folder)
        self.data = self.folder / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.process = None

    def start(self):
        log = open(self.folder / "server.log", "a")
        self.process = subprocess.Popen(
            [self.executable, "--host", "127.0.0.1", "--port", str(self.port),
             "--storage-path", str(self.data), "--standalone"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        import pymongo.errors

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # up once it answers a ping (after any recovery)
            assert self.process.poll() is None, (self.folder / "server.log").read_text()
            try:
                with self.client() as client:
                    client.admin.command("ping")
                return
            except pymongo.errors.PyMongoError:
                time.sleep(0.1)
        raise AssertionError("the test database did not start")

    def stop(self, sig=signal.SIGTERM):
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
        self.process = None

    def client(self):
        import pymongo

        return pymongo.MongoClient("127.0.0.1", self.port, tz_aware=True,
                                   serverSelectionTimeoutMS=5000)


@pytest.fixture
def own_mongo(tmp_path, cm, monkeypatch):
    from cloudmesh.emr import database

    monkeypatch.setattr(database, "TIMEOUT_MS", 500)  # a stopped server is found out quickly
    mongo = Mongo(tmp_path / "own-mongo")
    cm.write(mongo={"MONGO_PORT": mongo.port})
    yield mongo
    mongo.stop(signal.SIGKILL)


def test_twenty_commands_while_the_database_is_down_lose_nothing(cms, cm, aws, own_mongo):
    import boto3

    emr = boto3.client("emr", region_name="us-east-1")
    started, journaled = [], 0
    for number in range(20):  # the database is not running
        if number % 4 == 3:
            result = cms("list", "clusters", "--format=json")
            assert result.code == 0
            journaled += len(json.loads(result.out))
        else:
            result = cms("start", f"while-down-{number}", "--count=2")
            assert result.code == 0
            started.append(result.out.strip())
            journaled += 1
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("WARNING: "), result.err
        assert "journaled" in lines[0] and "db sync" in lines[0]
    journal = cm.folder / "emr" / "journal.jsonl"
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    status = cms("db", "status", "--format=json")
    assert status.code == 1 and one_error_line(status.err)  # unreachable: it says so
    assert json.loads(status.out)["Journaled"] == journaled  # and what waits
    own_mongo.start()
    status = cms("db", "status", "--format=json")
    assert status.code == 0 and json.loads(status.out)["Journaled"] == journaled
    last = cms("start", "after", "--count=2")  # the 21st: replays, then records its own
    assert last.code == 0 and last.err == ""
    started.append(last.out.strip())
    database = own_mongo.client()[cm.dbname]
    actions = list(database["aws-emr-action"].find())
    assert sorted(a["Target"] for a in actions) == sorted(started)  # each once
    assert len({a["Id"] for a in actions}) == len(actions) == 16
    clusters = list(database["aws-emr-cluster"].find())  # as the last listing saw them
    assert sorted(c["Id"] for c in clusters) == sorted(started[:-1])
    assert len(all_clusters(emr)) == 16
    assert not journal.exists() and not (cm.folder / "emr" / "journal.replaying.jsonl").exists()
    assert json.loads(cms("db", "status", "--format=json").out)["Journaled"] == 0


def test_db_sync_replays_now_and_says_so(cms, cm, aws, own_mongo):
    assert cms("start", "waiting", "--count=2").code == 0
    own_mongo.start()
    synced = cms("db", "sync", "--format=json")
    assert synced.code == 0, synced.err
    assert json.loads(synced.out) == {"Written": 1, "Journaled": 0}
    again = cms("db", "sync")
    assert again.code == 0 and again.out.strip() == "no journaled records wait"
    assert len(list(own_mongo.client()[cm.dbname]["aws-emr-action"].find())) == 1


@pytest.mark.conformance  # a crash and restart of 25-50 s: `make conformance` runs it
def test_a_sigkill_of_the_database_mid_write_loses_nothing(cm, own_mongo, monkeypatch):
    """2,000 clusters in one listing's write; the server is killed with SIGKILL while it
    takes them; after a restart the next write finds every one of them."""
    import datetime

    import pymongo.collection

    from cloudmesh.emr.config import Settings
    from cloudmesh.emr.database import Database, Journaled

    from cloudmesh.emr import database as database_module

    monkeypatch.setattr(database_module, "TIMEOUT_MS", 3000)  # the real one: a busy server
    own_mongo.start()
    stamp = datetime.datetime(2025, 5, 1, tzinfo=datetime.timezone.utc)
    records = [{"Id": f"j-{n:013d}", "Name": f"c{n}", "Status": {
        "State": "WAITING", "Timeline": {"CreationDateTime": stamp}}} for n in range(2000)]
    real = pymongo.collection.Collection.bulk_write
    killer = []

    def killed_midway(self, operations, **options):
        if not killer:  # kill it once it has started taking this listing's write
            def kill():
                watcher = own_mongo.client()
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    try:
                        if watcher[cm.dbname]["aws-emr-cluster"].estimated_document_count():
                            break
                    except Exception:  # noqa: BLE001
                        pass
                own_mongo.stop(signal.SIGKILL)

            killer.append(threading.Thread(target=kill, daemon=True))
            killer[0].start()
            # the write in pieces, so the kill lands between them, whatever the speed
            for start in range(0, len(operations), 100):
                real(self, operations[start:start + 100], **options)
                time.sleep(0.01)
            return None
        return real(self, operations, **options)

    monkeypatch.setattr(pymongo.collection.Collection, "bulk_write", killed_midway)
    database = Database(Settings.load())
    with pytest.raises(Journaled) as caught:
        database.record("aws", "cluster", records)
    assert caught.value.count == 2000
    killer[0].join(timeout=30)
    database.close()
    monkeypatch.setattr(pymongo.collection.Collection, "bulk_write", real)
    own_mongo.start()
    fresh = Database(Settings.load())
    fresh.record("aws", "cluster", [{**records[0], "Name": "renamed"}])
    documents = list(own_mongo.client()[cm.dbname]["aws-emr-cluster"].find())
    assert len(documents) == 2000
    assert sorted(d["Id"] for d in documents) == [r["Id"] for r in records]
    assert {d["Id"]: d["Name"] for d in documents}["j-0000000000000"] == "renamed"


def test_a_replay_does_not_overwrite_newer_documents(cm):
    """A batch journaled earlier, replayed after a newer write of the same document,
    leaves the newer one (the replay keys on cm.modified)."""
    import datetime

    from cloudmesh.emr.config import Settings
    from cloudmesh.emr.database import Database

    utc = datetime.timezone.utc
    database = Database(Settings.load())
    old = datetime.datetime(2025, 1, 1, tzinfo=utc)
    database.record("aws", "cluster", [{"Id": "j-NEWER", "Name": "newer"}])
    database.journal.append("aws", "cluster", [{"Id": "j-NEWER", "Name": "older"},
                                               {"Id": "j-ONLYOLD", "Name": "only old"}],
                            stamp=old)
    assert database.sync() == 2
    names = {d["Id"]: d["Name"] for d in cm.docs("aws", "cluster")}
    assert names == {"j-NEWER": "newer", "j-ONLYOLD": "only old"}
    assert database.journal.pending() == 0


def test_a_journal_that_cannot_be_written_is_exit_1(cms, cm, aws):
    import socket as sockets

    with sockets.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cm.write(mongo={"MONGO_PORT": port})
    (cm.folder / "emr").write_text("a file where the journal's folder should be")
    result = cms("start", "unrecorded", "--count=2")
    assert result.code == 1
    assert result.out.strip().startswith("j-")  # the AWS result first
    assert one_error_line(result.err) and "journal" in result.err, result.err


# ---- credentials -------------------------------------------------------------------------------

def test_a_misspelt_credentials_key_is_exit_2_before_any_call(cms, cm, aws):
    import boto3

    cm.write(clouds={"aws": {"credentials": {"EC2_ACCES_ID": "AKIDTYPO",
                                             "EC2_SECRET_KEY": "secret-never-shown"}}})
    result = cms("start", "typo")
    assert result.code == 2 and one_error_line(result.err), result.err
    assert "'EC2_ACCES_ID'" in result.err and "did you mean EC2_ACCESS_ID?" in result.err
    assert "secret-never-shown" not in result.err and "AKIDTYPO" not in result.err
    assert all_clusters(boto3.client("emr", region_name="us-east-1")) == []


# ---- errors stay short, --format everywhere ----------------------------------------------------

def test_an_error_echoes_at_most_about_200_characters(cms, aws):
    for args in (["list", "x" * 400_000], ["describe", "j-" + "!" * 5000],
                 ["start", "ok", "--release=" + "y" * 10_000]):
        result = cms(*args)
        assert result.code == 2 and one_error_line(result.err)
        assert len(result.err) < 400, len(result.err)


def test_server_start_with_a_64_character_label_is_exit_2(cms):
    result = cms("server", "start", "--host=" + "a" * 64)
    assert result.code == 2 and one_error_line(result.err), result.err
    assert "--host" in result.err and "unexpected" not in result.err


def test_db_start_and_stop_honour_format(cms, cm, tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDMESH_CONFIG_DIR", str(tmp_path / "embedded"))
    try:
        started = cms("db", "start", "--format=json")
        assert started.code == 0, started.err
        info = json.loads(started.out)
        assert info["Database"] == "started" and info["Pid"] > 0
        assert json.loads(cms("db", "start", "--format=json").out)["Database"] == "already running"
    finally:
        stopped = cms("db", "stop", "--format=yaml")
    import yaml

    assert stopped.code == 0 and yaml.safe_load(stopped.out)["Database"] == "stopped"
