"""The life of a cluster on the local emulator (the session's real daemon), from `cms emr
... --cloud=local`: a config file that ends by itself, bootstrap actions, the idle
timeout, groups that grow and shrink, managed scaling, CloudWatch metrics, protection
and the keys a config carries. What each leaves is read back with boto3 against the
daemon and with pymongo; the daemon's clock runs EMULATOR_TIME_SCALE times faster for
policies (a 60 s idle timeout takes 60 / EMULATOR_TIME_SCALE seconds).
"""

import gzip
import json

import pytest
import yaml

from emr_helpers import one_error_line, parse
from local_fixtures import EMULATOR_TIME_SCALE, wait_for
from test_lifecycle import AIRFLOW, user_tags

DELAY = "--delay=0.2"


@pytest.fixture
def local(emulator, cm):
    """cloudmesh.yaml with cloud 'local' on the session's emulator."""
    cm.write(clouds=emulator.profile())
    return emulator


@pytest.fixture
def emr(local):
    return local.client("emr")


@pytest.fixture
def s3(local):
    client = local.client("s3")
    client.create_bucket(Bucket="life")
    return client


def start(cms, *args):
    result = cms("start", *args, "--cloud=local")
    assert result.code == 0, result.err
    return result.out.strip()


def groups_of(emr, cluster_id):
    return {g["InstanceGroupType"]: g for g in
            emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]}


def running(emr, cluster_id, role):
    instances = emr.list_instances(ClusterId=cluster_id, InstanceGroupTypes=[role],
                                   InstanceStates=["RUNNING"])["Instances"]
    return len(instances)


# ---- a whole job flow from a config file ------------------------------------------------------

def test_airflow_config_starts_and_ends_by_itself(cms, local, emr, cm, tmp_path):
    path = tmp_path / "picalc.yaml"
    path.write_text(yaml.safe_dump(AIRFLOW))
    cluster_id = start(cms, "PiCalc", f"--config={path}")
    ended = cms("wait", cluster_id, "--until=terminated", DELAY, "--timeout=5m",
                "--cloud=local")
    assert ended.code == 0, ended.err
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["Status"]["State"] == "TERMINATED"
    assert cluster["Status"]["StateChangeReason"]["Code"] == "ALL_STEPS_COMPLETED"
    assert cluster["AutoTerminate"] is True
    assert f"{cluster_id}: TERMINATED" in ended.err  # the progress lines
    step, = emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert step["Config"]["Args"] == ["spark-example", "SparkPi", "10"]
    if "Unsupported step" in json.dumps(step["Status"].get("FailureDetails") or {}):
        pytest.xfail("the emulator does not run spark-example steps yet")
    assert step["Status"]["State"] == "COMPLETED"
    # the suite's one real SparkPi run: its answer, read as a user reads it
    stdout = cms("logs", cluster_id, step["Id"], "--file=stdout", "--cloud=local")
    assert stdout.code == 0 and "Pi is roughly 3.1" in stdout.out, stdout.err


def test_auto_terminate_with_wait_prints_once_it_ran(cms, local, emr, s3, tmp_path):
    s3.put_object(Bucket="life", Key="data.txt", Body=b"x")
    config = {"Steps": [{"Name": "copy", "ActionOnFailure": "CONTINUE", "HadoopJarStep": {
        "Jar": "command-runner.jar", "Args": ["aws", "s3", "cp", "s3://life/data.txt", "/home/hadoop/"]}}]}
    path = tmp_path / "copy.json"
    path.write_text(json.dumps(config))
    result = cms("start", "once", f"--config={path}", "--count=1", "--auto-terminate", "--wait",
                 "--cloud=local")
    assert result.code == 0, result.err
    cluster_id = result.out.strip()
    assert cms("wait", cluster_id, "--until=terminated", DELAY, "--cloud=local").code == 0
    reason = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["StateChangeReason"]
    assert reason["Code"] == "ALL_STEPS_COMPLETED"


# ---- bootstrap actions -----------------------------------------------------------------------

def test_bootstrap_actions_run_and_a_failure_ends_the_cluster(cms, local, emr, s3):
    s3.put_object(Bucket="life", Key="boot/ok.sh",
                  Body=b'echo "ready $1" > "$HOME/bootstrapped"; echo "set up $1"\n')
    s3.put_object(Bucket="life", Key="boot/fail.sh",
                  Body=b'echo "trying $1"; echo "cannot install $1" >&2; exit 1\n')
    cluster_id = start(cms, "boot", "--count=1", "--loguri=s3://life/logs/",
                       "--bootstrap=s3://life/boot/ok.sh,fast",
                       "--bootstrap=s3://life/boot/fail.sh,numpy==0.0.1")
    ended = cms("wait", cluster_id, DELAY, "--cloud=local")
    assert ended.code == 1
    assert one_error_line(ended.err.splitlines()[-1])
    cluster = local.wait_cluster(cluster_id, ["TERMINATED_WITH_ERRORS"])
    reason = cluster["Status"]["StateChangeReason"]
    assert reason["Code"] == "BOOTSTRAP_FAILURE"
    assert "bootstrap action 2 returned a non-zero return code" in reason["Message"]
    assert reason["Message"] in ended.err
    assert cluster["Status"]["Timeline"].get("ReadyDateTime") is None  # never ready
    assert (local.master(cluster_id) / "home/hadoop/bootstrapped").read_text() == "ready fast\n"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="life", Prefix=f"logs/{cluster_id}/node/")
            ["Contents"]]
    stderr_key, = [k for k in keys if k.endswith("/bootstrap-actions/2/stderr.gz")]
    instance = stderr_key.split("/")[3]
    assert instance.startswith("i-")
    body = s3.get_object(Bucket="life", Key=stderr_key)["Body"].read()
    assert gzip.decompress(body) == b"cannot install numpy==0.0.1\n"
    first = s3.get_object(Bucket="life",
                          Key=f"logs/{cluster_id}/node/{instance}/bootstrap-actions/1/stdout.gz")
    assert gzip.decompress(first["Body"].read()) == b"set up fast\n"


# ---- idle timeout ------------------------------------------------------------------------------

def test_an_idle_cluster_ends_after_its_idle_timeout(cms, local, emr):
    cluster_id = start(cms, "idle", "--count=1", "--idle-timeout=60")
    policy = emr.get_auto_termination_policy(ClusterId=cluster_id)["AutoTerminationPolicy"]
    assert policy == {"IdleTimeout": 60}
    ended = cms("wait", cluster_id, "--until=terminated", DELAY,
                f"--timeout={int(120 / EMULATOR_TIME_SCALE) + 30}", "--cloud=local")
    assert ended.code == 0, ended.err
    assert "WAITING" in ended.err  # it was idle first
    status = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]
    assert status["State"] == "TERMINATED"
    assert "auto-termination" in status["StateChangeReason"]["Message"]


# ---- groups ------------------------------------------------------------------------------------

def test_resize_core_from_two_to_four(cms, local, emr, cm):
    cluster_id = start(cms, "grow", "--count=3", "--wait")
    core = groups_of(emr, cluster_id)["CORE"]
    assert running(emr, cluster_id, "CORE") == 2
    resized = cms("resize", cluster_id, core["Id"], "4", "--cloud=local")
    assert resized.code == 0, resized.err
    assert groups_of(emr, cluster_id)["CORE"]["Status"]["State"] == "RESIZING"
    wait_for(lambda: running(emr, cluster_id, "CORE") == 4, 30, what="4 running core nodes")
    group = wait_for(lambda: (g := groups_of(emr, cluster_id)["CORE"])["Status"]["State"]
                     == "RUNNING" and g, 30, what="the group RUNNING")
    assert group["RequestedInstanceCount"] == 4
    assert cms("resize", cluster_id, core["Id"], "1", "--cloud=local").code == 0
    wait_for(lambda: running(emr, cluster_id, "CORE") == 1, 30, what="1 running core node")
    ended = emr.list_instances(ClusterId=cluster_id, InstanceGroupTypes=["CORE"],
                               InstanceStates=["TERMINATED"])["Instances"]
    assert len(ended) == 3
    action, = [d for d in cm.docs("local", "action") if d["Action"] == "resize"][:1]
    assert action["Target"] == core["Id"]


def test_add_task_group_on_a_running_cluster(cms, local, emr, cm):
    cluster_id = start(cms, "tasks", "--count=2", "--wait")
    added = cms("add", "task", cluster_id, "--count=2", "--spot", "--cloud=local")
    assert added.code == 0, added.err
    group_id = added.out.strip()
    assert group_id.startswith("ig-")
    task = groups_of(emr, cluster_id)["TASK"]
    assert (task["Id"], task["Market"], task["RequestedInstanceCount"]) == (group_id, "SPOT", 2)
    assert task["Status"]["State"] in ("PROVISIONING", "BOOTSTRAPPING")
    assert wait_for(lambda: running(emr, cluster_id, "TASK") == 2, 30, what="2 task nodes")
    task = groups_of(emr, cluster_id)["TASK"]
    timeline = task["Status"]["Timeline"]
    assert task["Status"]["State"] == "RUNNING"
    assert timeline["ReadyDateTime"] >= timeline["CreationDateTime"]
    listed = cms("list", "groups", cluster_id, "--format=csv", "--cloud=local")
    _, rows = parse(listed.out, "csv")
    assert [row[1] for row in rows] == ["MASTER", "CORE", "TASK"]
    emr.terminate_job_flows(JobFlowIds=[cluster_id])
    local.wait_cluster(cluster_id, ["TERMINATED"])
    refused = cms("add", "task", cluster_id, "--cloud=local")
    assert refused.code == 1 and one_error_line(refused.err), refused.err
    assert len([g for g in groups_of(emr, cluster_id)]) == 3


# ---- managed scaling and metrics --------------------------------------------------------------

def test_managed_scaling_grows_while_steps_wait_and_shrinks_when_idle(cms, local, emr):
    cluster_id = start(cms, "scaled", "--count=2", "--scaling=1:3", "--wait")
    policy = emr.get_managed_scaling_policy(ClusterId=cluster_id)["ManagedScalingPolicy"]
    assert policy["ComputeLimits"]["MaximumCapacityUnits"] == 3
    core = groups_of(emr, cluster_id)["CORE"]["Id"]
    emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[{
        "Name": "missing", "ActionOnFailure": "CONTINUE", "HadoopJarStep": {
            "Jar": "command-runner.jar",
            "Args": ["aws", "s3", "cp", "s3://nowhere/x", "/home/hadoop/"]}}])
    log = local.log
    wait_for(lambda: f"managed scaling resizes {core} to 3 instance(s)" in log.read_text(), 30,
             what="the scale-up")
    wait_for(lambda: f"managed scaling resizes {core} to 1 instance(s)" in log.read_text(), 30,
             what="the scale-down when idle")
    wait_for(lambda: groups_of(emr, cluster_id)["CORE"]["RequestedInstanceCount"] == 1, 30,
             what="one core node again")


def test_metrics_of_an_emulated_cluster(cms, local, cm):
    cluster_id = start(cms, "watched", "--count=3", "--wait")

    def idle_seen():
        result = cms("metrics", cluster_id, "--format=json", "--cloud=local")
        assert result.code == 0, result.err
        data = {m["Metric"]: m for m in json.loads(result.out)}
        return data if data["IsIdle"]["Latest"] == 1 else None

    data = wait_for(idle_seen, 30, interval=0.5, what="IsIdle published")
    assert data["CoreNodesRunning"]["Latest"] == 2
    assert data["AppsRunning"]["Latest"] == 0
    table = cms("metrics", cluster_id, "--cloud=local")
    headers, rows = parse(table.out, "table")
    assert headers == ["Metric", "Latest", "Min", "Max", "Trend"]
    assert {row[0] for row in rows} >= {"IsIdle", "CoreNodesRunning", "HDFSUtilization"}
    assert {d["Metric"] for d in cm.docs("local", "metric")} >= {"IsIdle", "AppsPending"}


# ---- protection, concurrency, policies and the keys a config carries ----------------------------

def test_config_keys_policies_and_protection_are_kept_and_echoed(cms, local, emr, tmp_path):
    config = {
        "Instances": {"InstanceGroups": [
            {"Name": "Primary", "InstanceRole": "MASTER", "InstanceType": "m5.xlarge",
             "InstanceCount": 1, "Market": "ON_DEMAND"},
            {"Name": "Core", "InstanceRole": "CORE", "InstanceType": "m5.xlarge",
             "InstanceCount": 1, "Market": "ON_DEMAND"},
            {"Name": "Spot", "InstanceRole": "TASK", "InstanceType": "c5.xlarge",
             "InstanceCount": 1, "Market": "SPOT", "BidPrice": "0.3"}]},
        "Configurations": [{"Classification": "spark-defaults",
                            "Properties": {"spark.executor.memory": "2g"}}],
        "Tags": [{"Key": "team", "Value": "data"}],
        "LogUri": "s3://life/logs/",
    }
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(config))
    cluster_id = start(cms, "kept", f"--config={path}")
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["LogUri"] == "s3://life/logs/"
    assert user_tags(cluster["Tags"]) == {"team": "data"}
    assert cluster["Configurations"][0]["Properties"] == {"spark.executor.memory": "2g"}
    task = groups_of(emr, cluster_id)["TASK"]
    assert (task["Market"], task["BidPrice"]) == ("SPOT", "0.3")

    assert cms("modify", cluster_id, "--concurrency=4", "--idle-timeout=2h", "--scaling=2:5",
               "--cloud=local").code == 0
    assert emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["StepConcurrencyLevel"] == 4
    assert emr.get_auto_termination_policy(ClusterId=cluster_id)["AutoTerminationPolicy"] == \
        {"IdleTimeout": 7200}
    limits = emr.get_managed_scaling_policy(ClusterId=cluster_id)["ManagedScalingPolicy"]
    assert limits["ComputeLimits"]["MinimumCapacityUnits"] == 2
    shown = yaml.safe_load(cms("describe", cluster_id, "--format=config", "--cloud=local").out)
    assert shown["AutoTerminationPolicy"] == {"IdleTimeout": 7200}
    assert shown["StepConcurrencyLevel"] == 4
    assert cms("modify", cluster_id, "--idle-timeout=off", "--scaling=off",
               "--cloud=local").code == 0
    assert "AutoTerminationPolicy" not in emr.get_auto_termination_policy(ClusterId=cluster_id)

    assert cms("protect", cluster_id, "on", "--cloud=local").code == 0
    assert emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["TerminationProtected"] is True
    assert cms("stop", cluster_id, "--cloud=local").code == 1
    assert cms("protect", cluster_id, "off", "--cloud=local").code == 0
    listed = json.loads(cms("list", "clusters", "--created-after=1h", "--format=json",
                            "--cloud=local").out)
    assert cluster_id in {c["Id"] for c in listed}
    listed = json.loads(cms("list", "clusters", "--created-before=1h", "--format=json",
                            "--cloud=local").out)
    assert cluster_id not in {c["Id"] for c in listed}
    assert cms("stop", cluster_id, "--cloud=local").code == 0


# ---- the REST operations on the emulator ----------------------------------------------------

def test_rest_operations_on_the_emulator(local, emr, cm):
    from cloudmesh.emr.api.server import create_app

    with create_app(cloud="local").test_client(base_url="http://127.0.0.1:8080") as client:
        config = {**AIRFLOW, "Steps": [], "Instances": {
            **AIRFLOW["Instances"], "KeepJobFlowAliveWhenNoSteps": True}}
        started = client.post("/clusters", json={"config": config,
                                                 "name": "rest", "count": 3,
                                                 "tags": {"team": "data"}})
        assert started.status_code == 201, started.text
        cluster_id = started.json()["ClusterId"]
        local.wait_cluster(cluster_id, ["WAITING"])
        groups = client.get(f"/clusters/{cluster_id}/groups").json()
        assert [g["InstanceGroupType"] for g in groups] == ["MASTER", "CORE"]
        added = client.post(f"/clusters/{cluster_id}/groups", json={"count": 1, "spot": True})
        assert added.status_code == 201, added.text
        assert added.json()["GroupId"] in {g["Id"] for g in emr.list_instance_groups(
            ClusterId=cluster_id)["InstanceGroups"]}
        core = groups[1]["Id"]
        resized = client.patch(f"/clusters/{cluster_id}/groups/{core}", json={"count": 3})
        assert resized.status_code == 200, resized.text
        wait_for(lambda: running(emr, cluster_id, "CORE") == 3, 30, what="3 core nodes")
        changed = client.patch(f"/clusters/{cluster_id}", json={
            "concurrency": 2, "idle_timeout": "1h", "scaling": "2:6", "protected": True})
        assert changed.status_code == 200, changed.text
        assert emr.get_auto_termination_policy(ClusterId=cluster_id)["AutoTerminationPolicy"] \
            == {"IdleTimeout": 3600}
        assert emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["TerminationProtected"]
        config = client.get(f"/clusters/{cluster_id}/config").json()
        assert config["ManagedScalingPolicy"]["ComputeLimits"]["MaximumCapacityUnits"] == 6
        assert config["Tags"] == [{"Key": "team", "Value": "data"}]
        metrics = client.get(f"/clusters/{cluster_id}/metrics", params={"since": "1h"})
        assert metrics.status_code == 200, metrics.text
        listed = client.get("/clusters", params={"created_after": "10m"}).json()
        assert cluster_id in {c["Id"] for c in listed}
        refused = client.delete(f"/clusters/{cluster_id}")
        assert refused.status_code == 409
        client.patch(f"/clusters/{cluster_id}", json={"protected": False})
        assert client.delete(f"/clusters/{cluster_id}").status_code == 202
    actions = {d["Action"] for d in cm.docs("local", "action")}
    assert {"start", "add task", "resize", "modify", "protect"} <= actions
