"""The local EMR emulator, tested as a user meets it: the real daemon over boto3.

One daemon (the session's ``emulator`` fixture, 0.2 s per transition) serves the
whole module. Real spark-submit runs are few and tiny (marked ``spark``); the
ActionOnFailure and auto-terminate tests use ``aws s3 cp`` steps, which finish at
once. Every wait polls with a deadline.
"""

import gzip
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from cloudmesh.emr.errors import Conflict, EmrError, UsageError
from cloudmesh.emr.local import commands, control, steps
from local_fixtures import wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LOG_BUCKET = "cloudmesh-emr-local-logs"
ACTIVE = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING", "TERMINATING"]

FAILING_JOB = """\
import sys
print("reading the input", flush=True)
raise ValueError("the input is not a number: 'x'")
"""

# writes its pid to the file named by its first argument, then sleeps; with a third
# argument "with-spark" it first starts Spark and runs a task, as a real job would
SLEEPER = """\
import os, sys, time
if sys.argv[3:] == ["with-spark"]:
    from pyspark import SparkContext
    SparkContext(appName="sleeper").parallelize([1, 2, 3], 2).map(lambda n: n * n).sum()
with open(sys.argv[1] + ".partial", "w") as out:
    out.write(str(os.getpid()))
os.replace(sys.argv[1] + ".partial", sys.argv[1])
time.sleep(float(sys.argv[2]))
"""


# stands in for spark-submit in the control test: says who it is, then waits
FAKE_SPARK_SUBMIT = """\
#!/bin/sh
echo $$ > fake-spark.pid
exec sleep 120
"""


# ---- helpers -------------------------------------------------------------------------


def cluster_spec(name, keep_alive=True, steps=(), **extra):
    return dict(
        Name=name,
        ReleaseLabel="emr-7.12.0",
        Applications=[{"Name": "Spark"}, {"Name": "Hadoop"}],
        Instances={
            "InstanceGroups": [
                {"InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1},
                {"InstanceRole": "CORE", "InstanceType": "m5.xlarge", "InstanceCount": 2},
            ],
            "KeepJobFlowAliveWhenNoSteps": keep_alive,
        },
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
        VisibleToAllUsers=True,
        Steps=list(steps),
        **extra,
    )


def step(name, args, action="CONTINUE"):
    return {"Name": name, "ActionOnFailure": action,
            "HadoopJarStep": {"Jar": "command-runner.jar", "Args": list(args)}}


def copy_step(source, dest="/home/hadoop/", action="CONTINUE", name="copy"):
    return step(name, ["aws", "s3", "cp", source, dest], action)


def spark_step(*args, action="CONTINUE", name="spark"):
    return step(name, ["spark-submit", *args], action)


def state_of(emr, cluster_id, step_id):
    return emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]["Status"]["State"]


def pid_gone(pid):
    """True when process ``pid`` no longer exists (or is a zombie nobody reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def parent_of(pid):
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rpartition(")")[2].split()[1])


def group_of(pid):
    """The process group of ``pid``."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rpartition(")")[2].split()[3])


def group_members(group):
    """The live processes of process group ``group``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if group_of(entry.name) == group and not pid_gone(entry.name):
                    members.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return members


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def listening_addresses(pids):
    """The local addresses on which processes ``pids`` accept TCP connections (Linux)."""
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    addresses = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            # the kernel prints each 32-bit word in host (little-endian) order
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            addresses.add(socket.inet_ntop(family, packed))
    return addresses


def read_log(s3, uri):
    bucket, key = commands.split_s3(uri)
    return gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).decode()


@pytest.fixture(scope="module")
def bucket(s3):
    """A bucket holding the example job, a failing job and a sleeper."""
    name = f"emr-local-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    s3.upload_file(str(EXAMPLES / "wordcount.py"), name, "jobs/wordcount.py")
    s3.upload_file(str(EXAMPLES / "data" / "sample.txt"), name, "data/sample.txt")
    s3.put_object(Bucket=name, Key="jobs/fail.py", Body=FAILING_JOB.encode())
    s3.put_object(Bucket=name, Key="jobs/sleeper.py", Body=SLEEPER.encode())
    s3.put_object(Bucket=name, Key="notes/a.txt", Body=b"alpha\n")
    s3.put_object(Bucket=name, Key="notes/sub/b.txt", Body=b"beta\n")
    return name


def start_cluster(emr, name, **kwargs):
    return emr.run_job_flow(**cluster_spec(name, **kwargs))["JobFlowId"]


def wait_ready(emulator, cluster_id):
    return emulator.wait_cluster(cluster_id, ["WAITING"], timeout=30)


def wait_pid(emulator, cluster_id, name, timeout=60):
    path = emulator.master(cluster_id) / "home" / "hadoop" / name
    return int(wait_for(lambda: path.is_file() and path.read_text(), timeout,
                        what=f"{name} to be written by the sleeper"))


# ---- clusters ----------------------------------------------------------------------


def test_cluster_starts_bootstraps_runs_and_waits_with_timeline(emulator, emr):
    cluster_id = start_cluster(emr, "lifecycle")
    seen = []

    def waiting():
        status = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]
        if not seen or seen[-1] != status["State"]:
            seen.append(status["State"])
        return status["State"] == "WAITING"

    wait_for(waiting, 30, interval=0.02, what="WAITING")
    order = ["STARTING", "BOOTSTRAPPING", "WAITING"]
    # a poll may miss a short state on a busy machine; the ones seen come in order
    assert seen[0] == "STARTING" and seen == sorted(seen, key=order.index)
    # as on EMR, a cluster without steps goes from BOOTSTRAPPING straight to WAITING
    assert emulator.transitions(cluster_id) == [
        ("STARTING", "BOOTSTRAPPING", "Running bootstrap actions"),
        ("BOOTSTRAPPING", "WAITING", "Cluster ready to run steps."),
    ]

    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    status = cluster["Status"]
    assert status["StateChangeReason"]["Message"] == "Cluster ready to run steps."
    timeline = status["Timeline"]
    assert timeline["CreationDateTime"].tzinfo is not None
    assert timeline["CreationDateTime"] <= timeline["ReadyDateTime"]
    assert "EndDateTime" not in timeline
    assert cluster["LogUri"] == f"s3://{LOG_BUCKET}/"
    assert {a["Name"]: a.get("Version") for a in cluster["Applications"]}["Spark"]
    assert cluster["NormalizedInstanceHours"] == 24  # 3 x m5.xlarge (8) x 1 hour
    # the boto3 waiter sees it ready too
    emr.get_waiter("cluster_running").wait(ClusterId=cluster_id,
                                           WaiterConfig={"Delay": 1, "MaxAttempts": 5})
    instances = emr.list_instances(ClusterId=cluster_id)["Instances"]
    assert len(instances) == 3
    assert {i["Status"]["State"] for i in instances} == {"RUNNING"}
    ended = emr.list_instances(ClusterId=cluster_id, InstanceStates=["TERMINATED"])["Instances"]
    assert ended == []

    emr.terminate_job_flows(JobFlowIds=[cluster_id])
    assert emulator.cluster_state(cluster_id) in ("TERMINATING", "TERMINATED")
    emr.get_waiter("cluster_terminated").wait(ClusterId=cluster_id,
                                              WaiterConfig={"Delay": 1, "MaxAttempts": 20})
    assert emulator.transitions(cluster_id)[-2:] == [
        ("WAITING", "TERMINATING", "USER_REQUEST Terminated by user request"),
        ("TERMINATING", "TERMINATED", "USER_REQUEST Terminated by user request"),
    ]
    status = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]
    assert status["State"] == "TERMINATED"
    assert status["StateChangeReason"] == {"Code": "USER_REQUEST",
                                           "Message": "Terminated by user request"}
    assert status["Timeline"]["ReadyDateTime"] <= status["Timeline"]["EndDateTime"]
    assert emr.list_instances(ClusterId=cluster_id, InstanceStates=["RUNNING"])["Instances"] == []
    ended = emr.list_instances(ClusterId=cluster_id, InstanceStates=["TERMINATED"])["Instances"]
    assert len(ended) == 3
    assert all(i["Status"]["Timeline"]["EndDateTime"] for i in ended)
    groups = emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]
    assert {g["Status"]["State"] for g in groups} == {"ENDED"}
    # the EC2 side agrees: the cluster's instances are terminated there too
    reservations = emulator.client("ec2").describe_instances(
        InstanceIds=[i["Ec2InstanceId"] for i in ended])["Reservations"]
    assert {i["State"]["Name"] for r in reservations for i in r["Instances"]} == {"terminated"}
    listed = emr.list_clusters(ClusterStates=["TERMINATED"])["Clusters"]
    assert cluster_id in [c["Id"] for c in listed]
    with pytest.raises(ClientError, match="may not be modified"):
        emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[copy_step("s3://x/y")])


def test_unknown_ids_answer_invalid_request_like_aws(emulator, emr):
    for call in (
        lambda: emr.list_steps(ClusterId="j-NOSUCHCLUSTER"),
        lambda: emr.list_instances(ClusterId="j-NOSUCHCLUSTER"),
        lambda: emr.describe_step(ClusterId="j-NOSUCHCLUSTER", StepId="s-NOSUCHSTEP"),
        lambda: emr.describe_cluster(ClusterId="j-NOSUCHCLUSTER"),
    ):
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.response["Error"]["Code"] == "InvalidRequestException"
        assert "j-NOSUCHCLUSTER" in caught.value.response["Error"]["Message"]
    cluster_id = start_cluster(emr, "unknown-step")
    with pytest.raises(ClientError) as caught:
        emr.describe_step(ClusterId=cluster_id, StepId="s-NOSUCHSTEP")
    assert caught.value.response["Error"]["Code"] == "InvalidRequestException"
    emr.terminate_job_flows(JobFlowIds=[cluster_id])


def test_auto_terminate_after_the_last_step(emulator, emr, bucket):
    cluster_id = start_cluster(
        emr, "auto", keep_alive=False, steps=[copy_step(f"s3://{bucket}/notes/a.txt")])
    description = emulator.wait_cluster(cluster_id, ["TERMINATED", "TERMINATED_WITH_ERRORS"])
    assert description["AutoTerminate"] is True
    assert description["Status"]["State"] == "TERMINATED"
    assert description["Status"]["StateChangeReason"] == {"Code": "ALL_STEPS_COMPLETED",
                                                         "Message": "Steps completed"}
    [only] = emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert only["Status"]["State"] == "COMPLETED"

    idle = start_cluster(emr, "auto-no-steps", keep_alive=False)
    description = emulator.wait_cluster(idle, ["TERMINATED", "TERMINATED_WITH_ERRORS"])
    assert description["Status"]["StateChangeReason"]["Code"] == "ALL_STEPS_COMPLETED"


# ---- steps without Spark: aws s3 cp, ActionOnFailure, unsupported commands ----------


def test_aws_s3_cp_copies_into_the_master_home(emulator, emr, s3, bucket):
    cluster_id = start_cluster(emr, "copy", LogUri=f"s3://{bucket}/logs")
    ids = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[
        copy_step(f"s3://{bucket}/notes/a.txt"),
        copy_step("/home/hadoop/a.txt", f"s3://{bucket}/back/", name="upload"),
        step("recursive", ["aws", "s3", "cp", "--recursive", f"s3://{bucket}/notes/",
                           "/home/hadoop/all/"]),
    ])["StepIds"]
    for step_id in ids:
        emulator.wait_step(cluster_id, step_id, ["COMPLETED", "FAILED"])
    assert [state_of(emr, cluster_id, i) for i in ids] == ["COMPLETED"] * 3
    home = emulator.master(cluster_id) / "home" / "hadoop"
    assert (home / "a.txt").read_text() == "alpha\n"
    assert (home / "all" / "sub" / "b.txt").read_text() == "beta\n"
    assert s3.get_object(Bucket=bucket, Key="back/a.txt")["Body"].read() == b"alpha\n"
    # the logs go to the cluster's own LogUri, in EMR's layout
    stdout = read_log(s3, f"s3://{bucket}/logs/{cluster_id}/steps/{ids[0]}/stdout.gz")
    assert f"download: s3://{bucket}/notes/a.txt to /home/hadoop/a.txt" in stdout
    emr.terminate_job_flows(JobFlowIds=[cluster_id])


@pytest.mark.parametrize(
    "action, states, cluster_state, reason",
    [
        ("CONTINUE", ["FAILED", "COMPLETED", "COMPLETED"], "WAITING", None),
        ("CANCEL_AND_WAIT", ["FAILED", "CANCELLED", "CANCELLED"], "WAITING", None),
        ("TERMINATE_CLUSTER", ["FAILED", "CANCELLED", "CANCELLED"], "TERMINATED_WITH_ERRORS",
         {"Code": "STEP_FAILURE", "Message": "Shut down as step failed"}),
    ],
)
def test_action_on_failure(emulator, emr, bucket, action, states, cluster_state, reason):
    cluster_id = start_cluster(emr, f"on-failure-{action.lower()}", steps=[
        copy_step(f"s3://{bucket}/notes/missing.txt", action=action, name="fails"),
        copy_step(f"s3://{bucket}/notes/a.txt", name="next"),
        copy_step(f"s3://{bucket}/notes/a.txt", name="last"),
    ])
    ids = [s["Id"] for s in reversed(emr.list_steps(ClusterId=cluster_id)["Steps"])]
    for step_id in ids:
        emulator.wait_step(cluster_id, step_id, ["COMPLETED", "FAILED", "CANCELLED"])
    assert [state_of(emr, cluster_id, i) for i in ids] == states
    failed = emr.describe_step(ClusterId=cluster_id, StepId=ids[0])["Step"]
    details = failed["Status"]["FailureDetails"]
    assert details["Message"] == f"fatal error: s3://{bucket}/notes/missing.txt does not exist"
    assert details["LogFile"] == f"s3://{LOG_BUCKET}/{cluster_id}/steps/{ids[0]}/stderr.gz"
    description = emulator.wait_cluster(cluster_id, [cluster_state])
    if reason:
        assert description["Status"]["StateChangeReason"] == reason
    else:
        emr.terminate_job_flows(JobFlowIds=[cluster_id])


def test_unsupported_steps_fail_with_a_clear_reason(emulator, emr):
    cluster_id = start_cluster(emr, "unsupported", steps=[
        step("hive", ["hive-script", "--run-hive-script", "s3://x/y.q"]),
        {"Name": "custom jar", "ActionOnFailure": "CONTINUE",
         "HadoopJarStep": {"Jar": "s3://x/wordcount.jar", "Args": ["a"]}},
        step("bad option", ["aws", "s3", "cp", "--sse", "s3://x/y", "/home/hadoop/"]),
    ])
    ids = [s["Id"] for s in reversed(emr.list_steps(ClusterId=cluster_id)["Steps"])]
    messages = []
    for step_id in ids:
        done = emulator.wait_step(cluster_id, step_id, ["FAILED", "COMPLETED"])
        assert done["Status"]["State"] == "FAILED"
        messages.append(done["Status"]["FailureDetails"]["Message"])
    assert "spark-submit" in messages[0] and "'hive-script' is not one of them" in messages[0]
    assert "s3://x/wordcount.jar does not exist" in messages[1]  # a custom jar: spark-submit
    assert "--sse" in messages[2]
    emr.terminate_job_flows(JobFlowIds=[cluster_id])


def test_a_missing_application_fails_before_spark_starts(emulator, emr, s3, bucket):
    cluster_id = start_cluster(emr, "missing-app", steps=[
        spark_step(f"s3://{bucket}/jobs/nothing.py", name="no such object"),
        spark_step("/home/hadoop/nothing.py", name="no such file"),
        spark_step("--py-files", f"s3://{bucket}/jobs/wordcount.py,s3://{bucket}/jobs/gone.zip",
                   f"s3://{bucket}/jobs/fail.py", name="no such dependency"),
    ])
    ids = [s["Id"] for s in reversed(emr.list_steps(ClusterId=cluster_id)["Steps"])]
    details = []
    for step_id in ids:
        done = emulator.wait_step(cluster_id, step_id, ["FAILED", "COMPLETED"])
        assert done["Status"]["State"] == "FAILED"
        details.append(done["Status"]["FailureDetails"])
    assert {d["Reason"] for d in details} == {"File not found"}
    assert [d["Message"] for d in details] == [
        f"spark-submit cannot start: s3://{bucket}/jobs/nothing.py does not exist in S3",
        "spark-submit cannot start: /home/hadoop/nothing.py does not exist on the master node",
        f"spark-submit cannot start: s3://{bucket}/jobs/gone.zip does not exist in S3",
    ]
    for detail in details:
        assert detail["Message"] in read_log(s3, detail["LogFile"])
        controller = read_log(s3, detail["LogFile"].replace("stderr.gz", "controller.gz"))
        assert "spark-submit exited" not in controller  # Spark never started
    emr.terminate_job_flows(JobFlowIds=[cluster_id])


# ---- real Spark --------------------------------------------------------------------


@pytest.mark.spark
def test_spark_word_count_reads_and_writes_s3(emulator, emr, s3, bucket):
    cluster_id = start_cluster(emr, "wordcount")
    [step_id] = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[spark_step(
        "--deploy-mode", "cluster", "--master", "yarn", f"s3://{bucket}/jobs/wordcount.py",
        f"s3://{bucket}/data/sample.txt", f"s3://{bucket}/wordcount/output/",
        name="word count")])["StepIds"]
    assert state_of(emr, cluster_id, step_id) in ("PENDING", "RUNNING")
    emr.get_waiter("step_complete").wait(ClusterId=cluster_id, StepId=step_id,
                                         WaiterConfig={"Delay": 1, "MaxAttempts": 240})
    assert emulator.cluster_state(cluster_id) in ("RUNNING", "WAITING")

    listed = s3.list_objects_v2(Bucket=bucket, Prefix="wordcount/output/")["Contents"]
    assert sorted(o["Key"] for o in listed) == ["wordcount/output/_SUCCESS",
                                                "wordcount/output/part-00000"]
    body = s3.get_object(Bucket=bucket, Key="wordcount/output/part-00000")["Body"].read()
    rows = [line.split("\t") for line in body.decode().splitlines()]
    counts = [(word, int(count)) for word, count in rows]
    spec = importlib.util.spec_from_file_location("wordcount", EXAMPLES / "wordcount.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = Counter(w for line in (EXAMPLES / "data" / "sample.txt").read_text().splitlines()
                       for w in module.words(line))
    assert dict(counts) == dict(expected)
    assert counts == sorted(counts, key=lambda pair: (-pair[1], pair[0]))
    assert counts[0] == ("the", expected["the"])

    # cluster deploy mode, as on EMR: the driver's output is in its YARN container's log,
    # and the step's stderr names the application
    stderr = read_log(s3, f"s3://{LOG_BUCKET}/{cluster_id}/steps/{step_id}/stderr.gz")
    application = re.search(r"application_\d+_\d+", stderr).group(0)
    container = application.replace("application_", "container_") + "_01_000001"
    stdout = read_log(s3, f"s3://{LOG_BUCKET}/{cluster_id}/containers/{application}/"
                          f"{container}/stdout.gz")
    assert "wrote the word counts" in stdout
    step_record = emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]
    timeline = step_record["Status"]["Timeline"]
    assert timeline["CreationDateTime"] <= timeline["StartDateTime"] <= timeline["EndDateTime"]
    assert timeline["EndDateTime"].tzinfo is not None
    emulator.wait_cluster(cluster_id, ["WAITING"])
    emr.terminate_job_flows(JobFlowIds=[cluster_id])


@pytest.mark.spark
def test_failing_job_has_failure_details_and_stderr_in_s3(emulator, emr, s3, bucket):
    cluster_id = start_cluster(emr, "failing", steps=[
        copy_step(f"s3://{bucket}/jobs/fail.py"),
        spark_step("/home/hadoop/fail.py", name="fails"),
    ])
    copy_id, spark_id = [s["Id"] for s in reversed(emr.list_steps(ClusterId=cluster_id)["Steps"])]
    failed = emulator.wait_step(cluster_id, spark_id, ["FAILED", "COMPLETED"], timeout=120)
    assert state_of(emr, cluster_id, copy_id) == "COMPLETED"
    status = failed["Status"]
    assert status["State"] == "FAILED"
    details = status["FailureDetails"]
    assert details["Message"] == "ValueError: the input is not a number: 'x'"
    assert "status 1" in details["Reason"]
    assert details["LogFile"] == f"s3://{LOG_BUCKET}/{cluster_id}/steps/{spark_id}/stderr.gz"
    stderr = read_log(s3, details["LogFile"])
    assert "Traceback (most recent call last)" in stderr
    assert "ValueError: the input is not a number: 'x'" in stderr
    stdout = read_log(s3, details["LogFile"].replace("stderr.gz", "stdout.gz"))
    assert "reading the input" in stdout
    emulator.wait_cluster(cluster_id, ["WAITING"])  # ActionOnFailure CONTINUE
    emr.terminate_job_flows(JobFlowIds=[cluster_id])


@pytest.mark.spark
def test_cancel_a_pending_step_then_terminate_during_a_running_one(emulator, emr, bucket):
    cluster_id = start_cluster(emr, "cancel")
    sleeper, pending = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[
        spark_step(f"s3://{bucket}/jobs/sleeper.py", "/home/hadoop/sleeper.pid", "120",
                   "with-spark", name="sleeper"),
        copy_step(f"s3://{bucket}/notes/a.txt", name="pending"),
    ])["StepIds"]
    driver = wait_pid(emulator, cluster_id, "sleeper.pid", timeout=120)
    jvm = parent_of(driver)
    spark = group_members(group_of(jvm))  # spark-submit's JVM, the driver, Python workers
    assert {jvm, driver} <= set(spark)
    # Spark listens (driver RPC, block manager, py4j), but on 127.0.0.1 only
    listening = listening_addresses(spark)
    assert listening and listening <= LOOPBACK
    assert state_of(emr, cluster_id, sleeper) == "RUNNING"
    assert state_of(emr, cluster_id, pending) == "PENDING"
    assert emulator.cluster_state(cluster_id) == "RUNNING"

    answer = emr.cancel_steps(ClusterId=cluster_id, StepIds=[pending, "s-NOSUCHSTEP"])
    infos = {i["StepId"]: i for i in answer["CancelStepsInfoList"]}
    assert infos[pending]["Status"] == "SUBMITTED"
    assert infos["s-NOSUCHSTEP"]["Status"] == "FAILED"
    assert state_of(emr, cluster_id, pending) == "CANCELLED"
    assert state_of(emr, cluster_id, sleeper) == "RUNNING"
    assert not pid_gone(driver)

    emr.terminate_job_flows(JobFlowIds=[cluster_id])
    description = emulator.wait_cluster(cluster_id, ["TERMINATED", "TERMINATED_WITH_ERRORS"])
    assert description["Status"]["State"] == "TERMINATED"
    assert state_of(emr, cluster_id, sleeper) == "CANCELLED"
    wait_for(lambda: all(pid_gone(pid) for pid in spark), 15,
             what="the sleeper's JVM, Python driver and workers to stop")
    assert emr.list_steps(ClusterId=cluster_id, StepStates=["RUNNING", "PENDING"])["Steps"] == []


@pytest.mark.spark
def test_step_concurrency_level_two_runs_two_steps_at_once(emulator, emr, bucket):
    cluster_id = start_cluster(emr, "concurrent")
    wait_ready(emulator, cluster_id)
    assert emr.modify_cluster(ClusterId=cluster_id, StepConcurrencyLevel=2)[
        "StepConcurrencyLevel"] == 2
    assert emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["StepConcurrencyLevel"] == 2
    ids = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[
        spark_step(f"s3://{bucket}/jobs/sleeper.py", f"/home/hadoop/{n}.pid", "120", name=n)
        for n in ("one", "two")])["StepIds"]
    drivers = [wait_pid(emulator, cluster_id, f"{n}.pid") for n in ("one", "two")]
    running = emr.list_steps(ClusterId=cluster_id, StepStates=["RUNNING"])["Steps"]
    assert sorted(s["Id"] for s in running) == sorted(ids)
    with pytest.raises(ClientError, match="ActionOnFailure"):
        emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[
            copy_step("s3://x/y", action="TERMINATE_CLUSTER")])

    answer = emr.cancel_steps(ClusterId=cluster_id, StepIds=ids,
                              StepCancellationOption="TERMINATE_PROCESS")
    assert {i["Status"] for i in answer["CancelStepsInfoList"]} == {"SUBMITTED"}
    for step_id in ids:
        emulator.wait_step(cluster_id, step_id, ["CANCELLED"], timeout=20)
    wait_for(lambda: all(pid_gone(pid) for pid in drivers), 15, what="both sleepers to stop")
    emulator.wait_cluster(cluster_id, ["WAITING"])
    emr.terminate_job_flows(JobFlowIds=[cluster_id])


# ---- control: cms emr local start | status | stop ------------------------------------


def test_control_start_status_stop_and_a_missing_pyspark(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDMESH_CONFIG_DIR", str(tmp_path / "config"))
    fake = tmp_path / "no-pyspark" / "spark-submit"
    monkeypatch.setenv("CLOUDMESH_EMR_LOCAL_SPARK_SUBMIT", str(fake))
    assert control.endpoint() is None
    with pytest.raises(EmrError, match="cms emr local start"):
        control.require_endpoint()
    assert control.status()["Running"] is False
    assert control.stop()["Stopped"] is False

    started = control.start(delay=0.2)
    try:
        assert started["AlreadyRunning"] is False
        assert started["Endpoint"] == f"http://127.0.0.1:{started['Port']}"
        assert started["Started"].tzinfo is not None
        assert Path(started["StateDir"]) == tmp_path / "config" / "emr" / "local"
        assert control.endpoint() == started["Endpoint"] == control.require_endpoint()
        again = control.start()
        assert again["AlreadyRunning"] is True and again["Pid"] == started["Pid"]

        import boto3

        keys = control.env()  # the daemon's own credentials: it refuses any other
        keys = {"aws_access_key_id": keys["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": keys["AWS_SECRET_ACCESS_KEY"]}
        emr = boto3.client("emr", endpoint_url=started["Endpoint"], region_name="us-east-1",
                           **keys)
        cluster_id = emr.run_job_flow(**cluster_spec("control"))["JobFlowId"]
        [step_id] = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[
            spark_step("s3://nowhere/job.py")])["StepIds"]
        failed = wait_for(lambda: (lambda s: s if s["Status"]["State"] == "FAILED" else None)(
            emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]), 30,
            what="the spark step to fail")
        details = failed["Status"]["FailureDetails"]
        assert "pip install 'cloudmesh-emr[local]'" in details["Message"]
        assert details["Reason"] == "pyspark is not installed"

        wait_for(lambda: control.status()["Clusters"] == {"WAITING": 1}, 30, what="WAITING")
        state = control.status()
        assert state["Running"] is True and state["Pid"] == started["Pid"]
        assert state["StepsRunning"] == 0

        # a stand-in spark-submit appears where the variable points: the next step runs it
        fake.parent.mkdir()
        fake.write_text(FAKE_SPARK_SUBMIT)
        fake.chmod(0o755)
        s3 = boto3.client("s3", endpoint_url=started["Endpoint"], region_name="us-east-1",
                          **keys)
        s3.create_bucket(Bucket="jobs")
        s3.put_object(Bucket="jobs", Key="job.py", Body=b"print('never runs')\n")
        [running_id] = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[
            spark_step("s3://jobs/job.py")])["StepIds"]
        master = Path(started["StateDir"]) / "clusters" / cluster_id
        pid_file = master / "mnt/var/lib/hadoop/steps" / running_id / "fake-spark.pid"
        step_pid = int(wait_for(lambda: pid_file.is_file() and pid_file.read_text().strip(), 30,
                                what="the stand-in spark-submit to run"))
        assert control.status()["StepsRunning"] == 1

        with pytest.raises(Conflict) as refused:
            control.stop()
        assert cluster_id in refused.value.message and "--force" in refused.value.message
        assert "come back TERMINATED" in refused.value.message
        assert control.endpoint() == started["Endpoint"]

        stopped = control.stop(force=True)
        assert stopped["Stopped"] is True and stopped["Pid"] == started["Pid"]
        assert stopped["Kept"].startswith("kept 1 cluster(s), 2 step(s)")
        assert "1 active cluster(s) come back TERMINATED" in stopped["Kept"]
        assert pid_gone(started["Pid"])
        assert pid_gone(step_pid)  # the daemon stopped the step it ran
        assert not (tmp_path / "config" / "emr" / "local" / "daemon.json").exists()
        assert control.endpoint() is None
        assert control.status()["Running"] is False
        assert control.stop()["Stopped"] is False
    finally:
        if not pid_gone(started["Pid"]):
            os.kill(started["Pid"], 15)


def test_control_start_refuses_a_taken_or_bad_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EmrError, match=f"port {port}"):
            control.start(port=port, state=tmp_path)
        done = subprocess.run(  # the daemon itself, asked for that port, says so and exits
            [sys.executable, "-m", "cloudmesh.emr.local.daemon", "--port", str(port),
             "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and f"127.0.0.1:{port}" in done.stderr
    for bad in ("http", 70000, -1):
        with pytest.raises(UsageError, match="--port"):
            control.start(port=bad, state=tmp_path)
    assert not (tmp_path / "daemon.json").exists()


def test_daemon_refuses_a_host_other_than_loopback(tmp_path):
    for host in ("0.0.0.0", "localhost", "192.168.1.10"):
        done = subprocess.run(
            [sys.executable, "-m", "cloudmesh.emr.local.daemon", "--host", host, "--port", "0",
             "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert "127.0.0.1 only" in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "daemon.json").exists()


# ---- the step runner's rules, without a daemon ----------------------------------


def test_spark_submit_arguments_are_rewritten_for_a_local_run(tmp_path):
    plan = commands.spark_plan(
        ["--deploy-mode", "cluster", "--master", "yarn", "--conf", "spark.x=1",
         "s3://bkt/job.py", "s3://bkt/in/*.txt", "s3://bkt/out/", "/home/hadoop/x"],
        tmp_path / "s3", tmp_path / "master")
    args = plan.args
    assert "--deploy-mode" not in args and "yarn" not in args
    assert args[args.index("--master") + 1] == "local[*]"
    for setting in ("spark.ui.enabled=false", "spark.driver.host=127.0.0.1",
                    "spark.driver.bindAddress=127.0.0.1"):
        assert setting in args
    assert args[-4:] == [str(tmp_path / "s3/bkt/job.py"), str(tmp_path / "s3/bkt/in/*.txt"),
                         str(tmp_path / "s3/bkt/out") + "/",
                         str(tmp_path / "master/home/hadoop/x")]
    assert [(r.bucket, r.key, r.prefix) for r in plan.refs] == [
        ("bkt", "job.py", "job.py"), ("bkt", "in/*.txt", "in/"), ("bkt", "out/", "out/")]
    # keys cannot leave the mirror, paths cannot leave the master folder
    assert commands.mirror_path(tmp_path, "bkt", "../../etc/passwd") == tmp_path / "bkt/etc/passwd"
    assert commands.master_path(tmp_path, "/home/hadoop/../../../etc") == tmp_path / "etc"


def test_spark_file_options_are_mapped_one_by_one_and_must_exist(tmp_path):
    plan = commands.spark_plan(
        ["--py-files", "s3://bkt/deps/a.zip,/home/hadoop/b.py", "--files=s3://bkt/conf.json",
         "--conf", "spark.x=s3://bkt/in/", "/home/hadoop/job.py", "s3://bkt/data/*.txt"],
        tmp_path / "s3", tmp_path / "master")
    args = plan.args
    assert args[:2] == ["--py-files", f"{tmp_path}/s3/bkt/deps/a.zip,"
                                      f"{tmp_path}/master/home/hadoop/b.py"]
    assert args[2] == f"--files={tmp_path}/s3/bkt/conf.json"
    assert args[-2:] == [f"{tmp_path}/master/home/hadoop/job.py", f"{tmp_path}/s3/bkt/data/*.txt"]
    # what must exist before Spark starts: the files and the application, not the data
    assert [name for name, _ in plan.needed] == [
        "s3://bkt/deps/a.zip", "/home/hadoop/b.py", "s3://bkt/conf.json", "/home/hadoop/job.py"]


def test_failure_messages_name_s3_and_the_master_as_the_step_did(tmp_path):
    mirror, master = tmp_path / "master/mnt/steps/s-1/s3", tmp_path / "master"
    text = (f"Input path does not exist: file:{mirror}/bkt/in; "
            f"can't open file '{master}/home/hadoop/job.py'")
    assert steps.as_on_emr(text, mirror, master) == (
        "Input path does not exist: s3://bkt/in; can't open file '/home/hadoop/job.py'")


def test_the_failure_message_is_the_last_error_line():
    stderr = (
        "Traceback (most recent call last):\n  File \"job.py\", line 3, in <module>\n"
        "ValueError: bad input\n"
        "26/01/02 10:00:00 INFO ShutdownHookManager: Shutdown hook called\n"
    )
    assert commands.last_error_line(stderr) == "ValueError: bad input"
    assert commands.last_error_line("Exception in thread \"main\" java.io.IOException: x\n"
                                    "26/01/02 10:00:00 INFO X: y\n").startswith("Exception in")
    assert commands.last_error_line("") is None
    # py4j's own line says only that a Java call failed: the Java exception says why
    py4j = (
        "  File \"protocol.py\", line 327, in get_return_value\n"
        "py4j.protocol.Py4JJavaError: An error occurred while calling o29.partitions.\n"
        ": org.apache.hadoop.mapred.InvalidInputException: Input path does not exist: s3://b/in\n"
        "\tat org.apache.hadoop.mapred.FileInputFormat.listStatus(FileInputFormat.java:245)\n"
        "py4j.protocol.Py4JJavaError: An error occurred while calling o29.partitions.\n"
    )
    assert commands.last_error_line(py4j) == (
        "org.apache.hadoop.mapred.InvalidInputException: Input path does not exist: s3://b/in")


def test_missing_pyspark_or_java_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(steps.SPARK_SUBMIT_ENV, str(tmp_path / "nothing"))
    with pytest.raises(commands.StepFailure, match=r"pip install 'cloudmesh-emr\[local\]'"):
        steps.spark_submit()
    monkeypatch.delenv(steps.SPARK_SUBMIT_ENV)
    program, home = steps.spark_submit()
    assert Path(program).name == "spark-submit" and Path(home).name == "pyspark"
    with pytest.raises(commands.StepFailure, match="Java 17"):
        steps.java({"PATH": str(tmp_path)})
    assert steps.java_version(steps.java(dict(os.environ))) >= 17  # the machine's own Java
    # a Java too old for the installed pyspark is as good as none
    for version, major in (('"11.0.2" 2019-01-15', 11), ('"1.8.0_392"', 8)):
        old_java = tmp_path / f"java{major}" / "bin" / "java"
        old_java.parent.mkdir(parents=True)
        old_java.write_text(f"#!/bin/sh\necho 'openjdk version {version}' >&2\n")
        old_java.chmod(0o755)
        assert steps.java_version(str(old_java)) == major
        with pytest.raises(commands.StepFailure, match=f"needs Java 17 or later.*Java {major}"):
            steps.java({"JAVA_HOME": str(old_java.parent.parent), "PATH": ""}, needed=17)
        assert steps.java({"JAVA_HOME": str(old_java.parent.parent)}, needed=8) == str(old_java)


def test_daemon_json_says_where_the_emulator_listens(emulator):
    data = json.loads((emulator.state_dir / "daemon.json").read_text())
    assert data["host"] == "127.0.0.1" and data["pid"] == emulator.pid
    assert data["endpoint"] == emulator.endpoint == f"http://127.0.0.1:{data['port']}"
    assert datetime.fromisoformat(data["started"]).utcoffset() == timedelta(0)
    assert control.endpoint(emulator.state_dir) == emulator.endpoint
    # the daemon's sockets: its port, on 127.0.0.1 and nowhere else
    assert listening_addresses([emulator.pid]) == {"127.0.0.1"}


# ---- through the real `cms` process ---------------------------------------------------


def test_cms_process_uses_the_emulator_as_cloud_local(emulator, emr, cm, cms_process):
    missing = cms_process("emr", "list", "clusters", "--cloud=local")
    assert missing.code == 1
    assert "cms emr local start" in missing.err and "Traceback" not in missing.err

    cm.write(clouds=emulator.profile())
    started = cms_process("emr", "start", "through-cms", "--cloud=local", "--count=2")
    assert started.code == 0, started.err
    cluster_id = re.search(r"\bj-[A-Z0-9]+\b", started.out).group(0)
    assert emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Name"] == "through-cms"
    wait_ready(emulator, cluster_id)
    described = cms_process("emr", "describe", cluster_id, "--cloud=local", "--format=json")
    assert described.code == 0, described.err
    assert '"WAITING"' in described.out and f"s3://{LOG_BUCKET}/" in described.out
    stopped = cms_process("emr", "stop", cluster_id, "--cloud=local")
    assert stopped.code == 0, stopped.err
    assert emulator.cluster_state(cluster_id) in ("TERMINATING", "TERMINATED")


def test_cms_local_start_status_stop_and_cloud_local_without_a_profile(
        cm, cms_process, monkeypatch):
    """The user's path: `cms emr local start`, then --cloud=local with no profile for it."""
    monkeypatch.setenv("CLOUDMESH_EMR_LOCAL_DELAY", "0.2")
    cm.write()  # the results database only: no cloud named local
    state = cm.folder / "emr" / "local"
    assert json.loads(cms_process("emr", "local", "status", "--format=json").out)[
        "Running"] is False
    started = cms_process("emr", "local", "start")
    assert started.code == 0, started.err
    endpoint = re.search(r"http://127\.0\.0\.1:\d+", started.out).group(0)
    pid = json.loads((state / "daemon.json").read_text())["pid"]
    try:
        assert f"(pid {pid})" in started.out
        again = cms_process("emr", "local", "start")
        assert again.code == 0 and "already running" in again.out and endpoint in again.out

        # a new account: the roles a start checks for are made first, as a user would
        fixed = cms_process("emr", "doctor", "--fix", "--cloud=local")
        assert fixed.code == 0, fixed.out + fixed.err
        made = cms_process("emr", "start", "no-profile", "--cloud=local", "--count=1")
        assert made.code == 0, made.err
        cluster_id = re.search(r"\bj-[A-Z0-9]+\b", made.out).group(0)
        import boto3

        from cloudmesh.emr.local import credentials

        emr = boto3.client("emr", endpoint_url=endpoint, region_name="us-east-1",
                           **credentials.read(state).boto())
        wait_for(lambda: emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"][
            "State"] == "WAITING", 30, what="WAITING")
        status = json.loads(cms_process("emr", "local", "status", "--format=json").out)
        assert status["Running"] is True and status["Pid"] == pid
        assert status["Endpoint"] == endpoint
        assert status["Clusters"] == {"WAITING": 1} and status["StepsRunning"] == 0

        refused = cms_process("emr", "local", "stop")
        assert refused.code == 1 and refused.out == ""
        assert refused.err.startswith("ERROR: ") and refused.err.count("\n") == 1
        assert cluster_id in refused.err and "--force" in refused.err
        assert "come back TERMINATED" in refused.err
        assert not pid_gone(pid)

        stopped = cms_process("emr", "local", "stop", "--force")
        assert stopped.code == 0, stopped.err
        assert f"pid {pid}" in stopped.out and "kept 1 cluster(s)" in stopped.out
        assert pid_gone(pid) and not (state / "daemon.json").exists()
        gone = cms_process("emr", "list", "clusters", "--cloud=local")
        assert gone.code == 1 and "cms emr local start" in gone.err
    finally:
        if not pid_gone(pid):
            os.kill(pid, 15)


def test_cms_reports_unknown_release_and_cluster_as_aws_would(emulator, cm, cms_process):
    cm.write(clouds=emulator.profile())
    release = cms_process("emr", "start", "x", "--cloud=local", "--release=emr-9.9.9")
    assert release.code == 2
    assert release.err.startswith("ERROR: --release: 'emr-9.9.9'")
    assert "Traceback" not in release.err and release.out == ""
    steps = cms_process("emr", "list", "steps", "j-NOSUCHCLUSTER1", "--cloud=local")
    assert steps.code == 1
    assert steps.err.count("\n") == 1 and "j-NOSUCHCLUSTER1" in steps.err
    assert "Traceback" not in steps.err
