"""The results store: documents, upserts, secrets kept out, the embedded server, failures.

Documents are read back with pymongo (the ``cm`` fixture), never through the
module under test.
"""

import datetime
import json
import os
import socket

import pytest

from cloudmesh.emr import database as database_module
from cloudmesh.emr.config import Settings
from cloudmesh.emr.database import Database, EmbeddedServer
from cloudmesh.emr.errors import DatabaseError
from emr_helpers import lean_moto, one_error_line, run_job_flow  # noqa: F401  lean_moto: autouse

UTC = datetime.timezone.utc
T0 = datetime.datetime(2025, 5, 1, 8, 0, 0, tzinfo=UTC)


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def clock(monkeypatch):
    """The database's clock, moved by hand: T0, then one minute later per tick()."""
    class Clock:
        value = T0

        def tick(self, minutes=1):
            self.value = self.value + datetime.timedelta(minutes=minutes)

    clock = Clock()
    monkeypatch.setattr(database_module, "now", lambda: clock.value)
    return clock


def cluster_record(ident, name="one", state="WAITING"):
    return {"Id": ident, "Name": name,
            "Status": {"State": state, "Timeline": {"CreationDateTime": T0}},
            "NormalizedInstanceHours": 0}


# ---- documents ------------------------------------------------------------------------------

def test_a_record_becomes_a_document_with_its_cm_part(cm, clock):
    Database(Settings.load()).record("aws", "cluster", [cluster_record("j-ONE")])
    docs = cm.docs("aws", "cluster")
    assert len(docs) == 1
    doc = docs[0]
    assert doc["_id"] == "aws/cluster/j-ONE"
    assert doc["Id"] == "j-ONE" and doc["Name"] == "one"
    assert doc["Status"]["State"] == "WAITING"
    assert doc["Status"]["Timeline"]["CreationDateTime"] == T0  # a date, not a string
    digest = doc["cm"].pop("hash")  # of the content: how an unchanged record is known
    assert len(digest) == 32 and int(digest, 16) >= 0
    assert doc["cm"] == {"cloud": "aws", "kind": "cluster", "id": "j-ONE", "name": "one",
                         "cluster": "j-ONE", "created": T0, "modified": T0}


def test_collections_are_per_cloud_and_kind(cm):
    database = Database(Settings.load())
    database.record("aws", "cluster", [cluster_record("j-SAME")])
    database.record("local", "cluster", [cluster_record("j-SAME")])
    database.record("aws", "step", [{"Id": "s-1", "Name": "a step", "ClusterId": "j-SAME"}])
    database.record("aws", "instance", [{"Id": "ci-1", "Ec2InstanceId": "i-1"}], cluster="j-SAME")
    assert sorted(n for n in cm.db.list_collection_names() if n != "cm-writes") == [
        "aws-emr-cluster", "aws-emr-instance", "aws-emr-step", "local-emr-cluster"]
    assert {d["_id"]: (d["began"], d["ended"]) for d in cm.db["cm-writes"].find()} == {
        name: (1, 1) for name in ("aws-emr-cluster", "aws-emr-instance", "aws-emr-step",
                                  "local-emr-cluster")}  # each write counted, begun and ended
    assert [d["_id"] for d in cm.docs("local", "cluster")] == ["local/cluster/j-SAME"]
    step, = cm.docs("aws", "step")
    assert step["_id"] == "aws/step/s-1"
    assert step["cm"]["cluster"] == "j-SAME" and step["cm"]["name"] == "a step"
    instance, = cm.docs("aws", "instance")
    assert instance["_id"] == "aws/instance/ci-1"
    assert instance["cm"]["cluster"] == "j-SAME"
    assert instance["cm"]["name"] == "ci-1"  # no name: the id stands in


def test_an_action_is_named_by_what_was_done(cm):
    Database(Settings.load()).record("aws", "action", [{
        "Id": "f00d", "Action": "stop", "Target": "j-X", "ClusterId": "j-X", "Time": T0}])
    doc, = cm.docs("aws", "action")
    assert doc["_id"] == "aws/action/f00d"
    assert doc["cm"]["name"] == "stop" and doc["cm"]["cluster"] == "j-X"


def test_a_second_write_updates_the_same_document(cm, clock):
    database = Database(Settings.load())
    database.record("aws", "cluster", [cluster_record("j-TWICE", state="STARTING")])
    clock.tick()
    database.record("aws", "cluster", [cluster_record("j-TWICE", name="renamed",
                                                      state="WAITING")])
    docs = cm.docs("aws", "cluster")
    assert len(docs) == 1
    doc = docs[0]
    assert doc["Status"]["State"] == "WAITING" and doc["Name"] == "renamed"
    assert doc["cm"]["name"] == "renamed"
    assert doc["cm"]["created"] == T0
    assert doc["cm"]["modified"] == T0 + datetime.timedelta(minutes=1)


def modified(cm, cloud="aws", kind="cluster"):
    return {doc["_id"]: doc["cm"]["modified"] for doc in cm.docs(cloud, kind)}


def test_only_what_changed_is_written_and_returned_with_its_previous_state(cm, clock):
    database = Database(Settings.load())
    records = [cluster_record(f"j-SEEN{i:03d}", name=f"c{i}") for i in range(100)]
    written = database.record("aws", "cluster", records)
    assert [(record["Id"], previous) for record, previous in written] == [
        (r["Id"], None) for r in records]  # new: no previous state
    clock.tick()
    assert database.record("aws", "cluster", [dict(r) for r in records]) == []
    assert set(modified(cm).values()) == {T0}  # no document rewritten
    clock.tick()
    changed = [dict(r) for r in records]
    changed[42] = cluster_record("j-SEEN042", name="c42", state="TERMINATED")
    (record, previous), = database.record("aws", "cluster", changed)
    assert record["Id"] == "j-SEEN042"
    assert previous["Status"]["State"] == "WAITING" and previous["cm"]["modified"] == T0
    stamps = modified(cm)
    assert stamps.pop("aws/cluster/j-SEEN042") == T0 + datetime.timedelta(minutes=2)
    assert set(stamps.values()) == {T0}
    doc = cm.db["aws-emr-cluster"].find_one({"_id": "aws/cluster/j-SEEN042"})
    assert doc["Status"]["State"] == "TERMINATED" and doc["cm"]["created"] == T0


def test_digests_kept_between_listings_never_hide_another_write(cm, clock):
    """A process keeps the digests of a listing for the next one; a write by another
    process, or a document deleted by hand, is still seen."""
    ours, other = Database(Settings.load()), Database(Settings.load())
    records = [cluster_record(f"j-KEPT{i:03d}", name=f"c{i}") for i in range(100)]
    assert len(ours.record("aws", "cluster", records)) == 100
    assert ours.record("aws", "cluster", records) == []
    clock.tick()
    other.record("aws", "cluster", [cluster_record("j-KEPT042", "c42", state="TERMINATED")])
    (record, previous), = ours.record("aws", "cluster", records)  # put back as ours saw it
    assert record["Id"] == "j-KEPT042" and previous["Status"]["State"] == "TERMINATED"
    doc = cm.db["aws-emr-cluster"].find_one({"_id": "aws/cluster/j-KEPT042"})
    assert doc["Status"]["State"] == "WAITING"
    assert ours.record("aws", "cluster", records) == []
    cm.db["aws-emr-cluster"].delete_one({"_id": "aws/cluster/j-KEPT007"})
    (record, previous), = ours.record("aws", "cluster", records)
    assert record["Id"] == "j-KEPT007" and previous is None
    assert len(cm.docs("aws", "cluster")) == 100
    assert ours.record("aws", "cluster", records) == []
    assert set(modified(cm).values()) == {T0, T0 + datetime.timedelta(minutes=1)}


def test_digests_are_not_kept_while_another_write_is_unfinished(cm, clock):
    """A write begun and not ended (still running, or its process killed) may land after
    the listing read the digests: none are kept until it ends, or is taken as dead."""
    ours = Database(Settings.load())
    records = [cluster_record(f"j-RUN{i:03d}", name=f"c{i}") for i in range(100)]
    ours.record("aws", "cluster", records)
    writes = cm.db["cm-writes"]
    writes.update_one({"_id": "aws-emr-cluster"}, {"$inc": {"began": 1}})  # another's
    assert ours.record("aws", "cluster", records) == []
    # that write lands, its state change with it
    cm.db["aws-emr-cluster"].update_one({"_id": "aws/cluster/j-RUN005"}, {"$set": {
        "Status.State": "TERMINATED", "cm.hash": "written by the other"}})
    (record, previous), = ours.record("aws", "cluster", records)
    assert record["Id"] == "j-RUN005" and previous["Status"]["State"] == "TERMINATED"
    counts = writes.find_one({"_id": "aws-emr-cluster"})
    assert counts["began"] == counts["ended"] + 1  # the other one's is still open
    clock.tick(minutes=database_module.STALE_WRITE / 60 + 1)
    assert ours.record("aws", "cluster", records) == []
    counts = writes.find_one({"_id": "aws-emr-cluster"})
    assert counts["began"] == counts["ended"]  # taken as dead


def test_a_field_a_record_no_longer_has_leaves_its_document(cm, clock):
    database = Database(Settings.load())
    database.record("aws", "cluster", [{**cluster_record("j-GONE"), "AutoTerminate": True}])
    database.record("aws", "cluster", [cluster_record("j-GONE")])
    doc, = cm.docs("aws", "cluster")
    assert "AutoTerminate" not in doc and doc["Name"] == "one"


def test_a_repeat_listing_of_unchanged_clusters_rewrites_no_document(cm, aws, clock):
    import boto3

    from cloudmesh.emr.api.provider import Provider

    emr = boto3.client("emr", region_name="us-east-1")
    made = [run_job_flow(emr, f"same {i}", core=0) for i in range(60)]  # two pages at AWS
    assert len(Provider().list_clusters()) == 60
    first = modified(cm)
    assert len(first) == 60
    clock.tick()
    assert len(Provider().list_clusters()) == 60
    assert modified(cm) == first
    clock.tick()
    emr.terminate_job_flows(JobFlowIds=[made[7]])
    listed = Provider().list_clusters()
    assert {c["Id"]: c["Status"]["State"] for c in listed}[made[7]] in (
        "TERMINATING", "TERMINATED")
    after = modified(cm)
    assert {key for key in after if after[key] != first[key]} == {f"aws/cluster/{made[7]}"}


def test_a_listing_holds_the_instants_aws_gave_in_utc(cm, aws):
    """botocore parses our answers' timestamps straight into UTC: the same instants as
    boto3's own parser reads, epoch numbers and ISO-8601 text alike."""
    import boto3

    from cloudmesh.emr.api.provider import Provider, utc_timestamp

    emr = boto3.client("emr", region_name="us-east-1")
    made = run_job_flow(emr, "when", core=0)
    theirs = emr.describe_cluster(ClusterId=made)["Cluster"]["Status"]["Timeline"]
    listed, = Provider().list_clusters()
    when = listed["Status"]["Timeline"]["CreationDateTime"]
    assert when == theirs["CreationDateTime"] and when.tzinfo is UTC
    doc, = cm.docs("aws", "cluster")
    assert doc["Status"]["Timeline"]["CreationDateTime"] == when.replace(
        microsecond=when.microsecond // 1000 * 1000)  # BSON keeps milliseconds
    for text in (1746086400, 1746086400.0, "1746086400", "2025-05-01T10:00:00+02:00",
                 "2025-05-01T08:00:00Z", "Thu, 01 May 2025 08:00:00 GMT"):
        parsed = utc_timestamp(text)
        assert parsed == T0 and parsed.tzinfo is UTC, text


def test_many_records_in_one_write_and_a_second_database_instance_sees_them(cm):
    records = [cluster_record(f"j-MANY{i:03d}", name=f"c{i}") for i in range(120)]
    assert len(Database(Settings.load()).record("aws", "cluster", records)) == 120
    assert Database(Settings.load()).record("aws", "cluster", records[:10]) == []  # unchanged
    assert len(cm.docs("aws", "cluster")) == 120
    found = Database(Settings.load()).find("aws", "cluster", {"Name": "c7"})
    assert [d["_id"] for d in found] == ["aws/cluster/j-MANY007"]


def test_nothing_to_record_writes_nothing(cm):
    assert Database(Settings.load()).record("aws", "cluster", []) == []
    assert "aws-emr-cluster" not in cm.db.list_collection_names()


def test_writes_are_unordered_one_bad_record_does_not_stop_the_rest(cm):
    good = [cluster_record("j-GOOD1"), cluster_record("j-GOOD2")]
    bad = {**cluster_record("j-BAD"), "": "an empty field name no server accepts"}
    with pytest.raises(DatabaseError) as caught:
        Database(Settings.load()).record("aws", "cluster", [good[0], bad, good[1]])
    assert "\n" not in caught.value.message
    # an ordered write would have stopped at the bad record, losing j-GOOD2
    assert sorted(d["_id"] for d in cm.docs("aws", "cluster")) == [
        "aws/cluster/j-GOOD1", "aws/cluster/j-GOOD2"]


def test_a_record_cannot_smuggle_its_own_id_or_cm(cm, clock):
    record = {**cluster_record("j-OWN"), "_id": "elsewhere", "cm": {"cloud": "forged"}}
    Database(Settings.load()).record("aws", "cluster", [record])
    doc, = cm.docs("aws", "cluster")
    assert doc["_id"] == "aws/cluster/j-OWN"
    assert doc["cm"]["cloud"] == "aws"


# ---- credentials never enter a document ------------------------------------------------------

ACCESS_ID = "AKIDDATABASETEST01"
SECRET = "db-secret-VeRy/sEcReT+42"
TOKEN = "rest-token-never-stored-77"


def test_no_credential_in_any_document(cm, cms, tmp_path, monkeypatch):
    """Every command with credentials from cloudmesh.yaml; then search every document."""
    import boto3
    from emr_helpers import make_default_roles
    from moto import mock_aws

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    cm.write(clouds={"aws": {"credentials": {"EC2_ACCESS_ID": ACCESS_ID, "EC2_SECRET_KEY": SECRET,
                                             "region": "us-east-1"}}},
             emr={"server": {"token": TOKEN}})
    program = tmp_path / "job.py"
    program.write_text("print('hello')\n")
    with mock_aws():
        session = boto3.session.Session(aws_access_key_id=ACCESS_ID,
                                        aws_secret_access_key=SECRET, region_name="us-east-1")
        session.client("s3").create_bucket(Bucket="jobs")
        make_default_roles(session.client("iam"), policies=False)
        cluster = cms("start", "secretive", "--count=2")
        assert cluster.code == 0, cluster.err
        cid = cluster.out.strip()
        other = run_job_flow(session.client("emr"), "other")
        for args in (["list", "clusters"], ["list", "instances", cid], ["describe", cid],
                     ["upload", program, "jobs", "job.py"], ["copy", cid, "jobs", "job.py"],
                     ["run", cid, "jobs", "job.py", "--", "--key", SECRET[:6]],
                     ["list", "steps", cid], ["stop", other, "--format=json"]):
            result = cms(*args)
            assert result.code == 0, (args, result.err)
            assert SECRET not in result.out + result.err and ACCESS_ID not in result.out
    kinds = {"cluster", "instance", "step", "action"}
    names = cm.db.list_collection_names()
    assert {f"aws-emr-{kind}" for kind in kinds} <= set(names)
    count = 0
    for name in names:
        for doc in cm.db[name].find():
            text = json.dumps(doc, default=str)
            count += 1
            for secret in (SECRET, ACCESS_ID, TOKEN):
                assert secret not in text, f"{name}/{doc['_id']} holds {secret}"
    assert count >= 8


# ---- an unreachable database -------------------------------------------------------------------

def test_an_unreachable_database_is_a_database_error(cm):
    port = closed_port()
    cm.write(mongo={"MONGO_PORT": port})
    database = Database(Settings.load())
    with pytest.raises(DatabaseError) as caught:
        database.record("aws", "cluster", [cluster_record("j-LOST")])
    error = caught.value
    assert error.exit_code == 1
    assert "\n" not in error.message
    assert f"127.0.0.1:{port}" in error.message
    assert "(configured timeouts" not in error.message  # pymongo's settings, not the user's


@pytest.fixture
def blocked(tmp_path):
    """A config folder whose state folder (emr/) cannot be made: a file is in the way."""
    folder = tmp_path / "blocked"
    folder.mkdir()
    (folder / "emr").write_text("not a folder")
    return folder


def test_an_embedded_server_that_cannot_start_is_a_database_error(blocked):
    server = EmbeddedServer(blocked / "emr" / "db")
    with pytest.raises(DatabaseError) as caught:
        server.start()
    message = caught.value.message
    assert "\n" not in message and "embedded database" in message
    assert str(blocked / "emr") in message


def test_db_start_in_a_folder_that_cannot_hold_it_is_one_error_line(blocked, cms, monkeypatch):
    monkeypatch.setenv("CLOUDMESH_CONFIG_DIR", str(blocked))
    result = cms("db", "start")
    assert result.code == 1
    assert one_error_line(result.err), result.err
    assert "unexpected" not in result.err and str(blocked / "emr") in result.err
    assert result.out == ""


# ---- status in native mode ----------------------------------------------------------------------

def test_status_counts_the_documents_of_each_collection(cm, cms):
    database = Database(Settings.load())
    database.record("aws", "cluster", [cluster_record("j-A"), cluster_record("j-B")])
    database.record("aws", "step", [{"Id": "s-1"}])
    cm.db["unrelated"].insert_one({"x": 1})
    result = cms("db", "status", "--format=json")
    assert result.code == 0, result.err
    info = json.loads(result.out)
    assert info["Mode"] == "native"
    assert info["Collections"] == {"aws-emr-cluster": 2, "aws-emr-step": 1}
    assert info["Address"] == f"{cm.mongo['host']}:{cm.mongo['port']}"


@pytest.mark.parametrize("verb", ["start", "stop"])
def test_db_start_and_stop_refuse_a_native_database(cm, cms, verb):
    result = cms("db", verb)
    assert result.code == 2
    assert one_error_line(result.err), result.err
    assert "native" in result.err


# ---- the embedded server -------------------------------------------------------------------------

def alive(pid):
    """True while the process runs (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_embedded_server_on_first_need_reused_then_status_and_stop(cm, moto_cloud, cms_process):
    """MODE embedded through the real `cms`: the first command that records starts the
    server, detached under the config folder; later commands reuse it; db status/stop."""
    import boto3
    import pymongo

    cm.write(clouds={"moto": {"credentials": {
        "EC2_ACCESS_ID": "testing", "EC2_SECRET_KEY": "testing", "region": "us-east-1",
        "endpoint": moto_cloud}}}, emr={"default": {"cloud": "moto"}},
        mongo={"MODE": "embedded"})
    folder = cm.folder / "emr" / "db"
    before = cms_process("emr", "db", "status", "--format=json")
    assert before.code == 0, before.err
    assert json.loads(before.out)["Running"] is False
    assert not (folder / "server.json").exists()

    emr = boto3.client("emr", endpoint_url=moto_cloud, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    cid = run_job_flow(emr, "embedded")
    listed = cms_process("emr", "list", "clusters", "--format=json")
    assert listed.code == 0, listed.err
    assert [c["Id"] for c in json.loads(listed.out)] == [cid]
    state = json.loads((folder / "server.json").read_text())
    pid, port = state["pid"], state["port"]
    try:
        assert alive(pid) and answers(port)
        assert (folder / "data").is_dir() and any((folder / "data").iterdir())

        again = cms_process("emr", "db", "start")
        assert again.code == 0, again.err
        assert "already running" in again.out and str(pid) in again.out and str(port) in again.out
        described = cms_process("emr", "describe", cid, "--format=json")
        assert described.code == 0, described.err
        assert json.loads((folder / "server.json").read_text())["pid"] == pid

        status = cms_process("emr", "db", "status", "--format=json")
        assert status.code == 0, status.err
        info = json.loads(status.out)
        assert info["Running"] is True and info["Mode"] == "embedded"
        assert info["Pid"] == pid and info["Address"] == f"127.0.0.1:{port}"
        # the cluster, and its first state as an event (cms emr history)
        assert info["Collections"] == {"moto-emr-cluster": 1, "moto-emr-event": 1}
        table = cms_process("emr", "db", "status")
        assert "moto-emr-cluster" in table.out and str(port) in table.out

        client = pymongo.MongoClient("127.0.0.1", port, serverSelectionTimeoutMS=5000)
        doc = client[cm.dbname]["moto-emr-cluster"].find_one()
        client.close()
        assert doc["_id"] == f"moto/cluster/{cid}" and "InstanceGroups" in doc

        stopped = cms_process("emr", "db", "stop")
        assert stopped.code == 0, stopped.err
        assert str(pid) in stopped.out
        assert not alive(pid) and not answers(port)
        assert not (folder / "server.json").exists()
        after = cms_process("emr", "db", "status", "--format=json")
        assert json.loads(after.out)["Running"] is False
        once_more = cms_process("emr", "db", "stop")
        assert once_more.code == 0 and "not running" in once_more.out
    finally:
        if alive(pid):
            os.kill(pid, 9)


def test_a_server_this_process_started_stops_and_is_reaped(tmp_path):
    """start() then stop() in one process (the REST service, these tests): stop must see
    that its own child has exited and reap it, not wait out its timeout for a zombie
    (which answers signal 0 as if it still ran)."""
    server = EmbeddedServer(tmp_path / "db")
    state, fresh = server.start()
    try:
        assert fresh is True
        assert server.running() == state
        assert server.start() == (state, False)  # reused, not started twice
        stopped = server.stop()
        assert stopped["pid"] == state["pid"]
        assert not answers(state["port"])
        assert server.running() is None
        with pytest.raises(ChildProcessError):  # stop() collected its exit status itself
            os.waitpid(state["pid"], os.WNOHANG)
    finally:
        if alive(state["pid"]):
            os.kill(state["pid"], 9)

