"""The life of a cluster from `cms emr`, in this process against moto: start from a config
file, wait, modify, protect, groups, resize, find by date, metrics.

What each command leaves is read back from moto with boto3 and from the database with
pymongo; output is parsed the way a user's script would.
"""

import datetime
import json

import pytest
import yaml

from emr_helpers import (  # noqa: F401  lean_moto: autouse
    BASE_TIME, FORMATS, add_steps, all_clusters, backend, lean_moto, one_error_line, parse,
    run_job_flow, set_cluster, set_step,
)

UTC = datetime.timezone.utc

# the configuration of the Airflow EMR operators' example (PiCalc), as a user copies it
AIRFLOW = {
    "Name": "PiCalc",
    "ReleaseLabel": "emr-7.1.0",
    "Applications": [{"Name": "Spark"}],
    "Instances": {
        "InstanceGroups": [{"Name": "Primary node", "Market": "ON_DEMAND",
                            "InstanceRole": "MASTER", "InstanceType": "m5.xlarge",
                            "InstanceCount": 1}],
        "KeepJobFlowAliveWhenNoSteps": False,
        "TerminationProtected": False,
    },
    "Steps": [{"Name": "calculate_pi", "ActionOnFailure": "CONTINUE",
               "HadoopJarStep": {"Jar": "command-runner.jar",
                                 "Args": ["spark-example", "SparkPi", "10"]}}],
    "JobFlowRole": "EMR_EC2_DefaultRole",
    "ServiceRole": "EMR_DefaultRole",
}


@pytest.fixture
def emr(aws):
    import boto3

    return boto3.client("emr", region_name="us-east-1")


def user_tags(tags):
    """A cluster's tags without the one every start adds (cloudmesh:request, its request id)."""
    return {t["Key"]: t["Value"] for t in tags if t["Key"] != "cloudmesh:request"}


def groups_of(emr, cluster_id):
    return {g["InstanceGroupType"]: g for g in
            emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]}


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return path


def refused(result, emr, cm, *words):
    """Exit 2, one ERROR line naming ``words``, nothing printed, created or recorded."""
    assert result.code == 2, (result.out, result.err)
    assert one_error_line(result.err), result.err
    for word in words:
        assert word in result.err, (word, result.err)
    assert result.out == ""
    assert "aws-emr-action" not in cm.db.list_collection_names()


# ---- start ---------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_start_from_the_airflow_config(cms, emr, cm, tmp_path, suffix):
    path = write(tmp_path, f"picalc.{suffix}", AIRFLOW)
    result = cms("start", "pi", f"--config={path}")
    assert result.code == 0, result.err
    cluster_id = result.out.strip()
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["Name"] == "pi"  # NAME goes over the file's Name
    assert cluster["ReleaseLabel"] == "emr-7.1.0"
    assert [a["Name"] for a in cluster["Applications"]] == ["Spark"]
    assert list(groups_of(emr, cluster_id)) == ["MASTER"]  # no core group added
    assert cluster["AutoTerminate"] is True  # KeepJobFlowAliveWhenNoSteps false
    steps = emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert [s["Config"]["Args"] for s in steps] == [["spark-example", "SparkPi", "10"]]
    action, = cm.docs("aws", "action")
    assert action["Target"] == cluster_id
    assert action["Request"]["RunJobFlow"]["Steps"] == AIRFLOW["Steps"]
    assert action["Request"]["Count"] == 1
    assert "WARNING" in result.err and "no core nodes" in result.err


def test_options_go_over_the_config(cms, emr, tmp_path):
    config = {**AIRFLOW, "Instances": {**AIRFLOW["Instances"], "InstanceGroups": [
        *AIRFLOW["Instances"]["InstanceGroups"],
        {"Name": "Core", "InstanceRole": "CORE", "InstanceType": "m5.xlarge", "InstanceCount": 2}]},
        "Tags": [{"Key": "team", "Value": "data"}, {"Key": "env", "Value": "dev"}],
        "LogUri": "s3://file-logs/"}
    path = write(tmp_path, "c.yaml", config)
    result = cms("start", "over", f"--config={path}", "--count=5", "--node=m5.2xlarge",
                 "--master=m5.2xlarge", "--release=emr-7.2.0", "--tag=env=prod",
                 "--tag=owner=ana", "--loguri=s3://cli-logs/")
    assert result.code == 0, result.err
    cluster_id = result.out.strip()
    groups = groups_of(emr, cluster_id)
    assert (groups["CORE"]["InstanceType"], groups["CORE"]["RequestedInstanceCount"]) == \
        ("m5.2xlarge", 4)
    assert groups["MASTER"]["InstanceType"] == "m5.2xlarge"
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["ReleaseLabel"] == "emr-7.2.0"
    assert cluster["LogUri"] == "s3://cli-logs/"
    assert user_tags(cluster["Tags"]) == \
        {"team": "data", "env": "prod", "owner": "ana"}


def test_start_with_every_option(cms, emr, cm, tmp_path):
    path = write(tmp_path, "steps.yaml", {"Steps": AIRFLOW["Steps"]})
    result = cms("start", "full", f"--config={path}", "--count=3", "--task=c5.xlarge",
                 "--task-count=4", "--spot", "--bid=0.12", "--auto-terminate",
                 "--idle-timeout=2h", "--scaling=2:10", "--loguri=s3://logs/emr/",
                 "--key=my-key", "--subnet=subnet-0abc", "--zone=us-east-1b",
                 "--bootstrap=s3://boot/setup.sh,--fast,1", "--bootstrap=s3://boot/two.sh",
                 "--tag=team=data", "--format=json")
    assert result.code == 0, result.err
    action = json.loads(result.out)
    cluster_id = action["Target"]
    groups = groups_of(emr, cluster_id)
    task = groups["TASK"]
    assert (task["Market"], task["InstanceType"], task["RequestedInstanceCount"]) == \
        ("SPOT", "c5.xlarge", 4)
    assert task["BidPrice"] == "0.12"
    flow = emr.describe_job_flows(JobFlowIds=[cluster_id])["JobFlows"][0]
    assert flow["Instances"]["KeepJobFlowAliveWhenNoSteps"] is False
    assert flow["Instances"]["Ec2KeyName"] == "my-key"
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["LogUri"] == "s3://logs/emr/"
    assert cluster["Ec2InstanceAttributes"]["Ec2SubnetId"] == "subnet-0abc"
    boot = emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"]
    assert [(b["ScriptPath"], b["Args"]) for b in boot] == \
        [("s3://boot/setup.sh", ["--fast", "1"]), ("s3://boot/two.sh", [])]
    request = cm.docs("aws", "action")[0]["Request"]["RunJobFlow"]
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 7200}
    assert request["ManagedScalingPolicy"] == {"ComputeLimits": {
        "UnitType": "Instances", "MinimumCapacityUnits": 2, "MaximumCapacityUnits": 10}}
    assert request["Instances"]["Placement"] == {"AvailabilityZone": "us-east-1b"}


def test_spot_without_a_bid_pays_at_most_the_on_demand_price(cms, emr, cm):
    result = cms("start", "spotty", "--task=m5.xlarge", "--spot")
    assert result.code == 0, result.err
    task = groups_of(emr, result.out.strip())["TASK"]
    assert (task["Market"], task["RequestedInstanceCount"]) == ("SPOT", 1)
    request = cm.docs("aws", "action")[0]["Request"]["RunJobFlow"]
    group, = [g for g in request["Instances"]["InstanceGroups"] if g["InstanceRole"] == "TASK"]
    assert "BidPrice" not in group  # EMR then caps at the on-demand price


def test_idle_timeout_default_from_cloudmesh_yaml(cms, emr, cm):
    cm.write(emr={"default": {"idle-timeout": "90m"}})
    assert cms("start", "idle").code == 0
    request = cm.docs("aws", "action")[0]["Request"]["RunJobFlow"]
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 5400}


BAD_STARTS = [
    ({"Instances": {"InstanceGroups": [{"InstanceRole": "MASTER", "InstanceType": "m5.xlarge",
                                         "InstanceCount": "one"}]}},
     [], ["Instances.InstanceGroups[0].InstanceCount", "int"]),
    ({"Instances": {"InstanceGroups": [{"InstanceRole": "MASTER", "InstanceType": "m5.xlarge"}]}},
     [], ["InstanceCount"]),
    ({"Colour": "red"}, [], ["Colour"]),
    ({"Configurations": [{"Classification": "spark", "Properties": {"a": True}}]}, [],
     ["Configurations[0].Properties.a"]),
    ({"Instances": {"InstanceFleets": [{"InstanceFleetType": "MASTER", "TargetOnDemandCapacity": 1,
                                        "InstanceTypeConfigs": [{"InstanceType": "m5.xlarge"}]}]}},
     ["--master=m5.2xlarge"], ["--master", "InstanceFleets"]),
    (None, ["--auto-terminate"], ["--auto-terminate", "steps"]),
    (None, ["--idle-timeout=30s"], ["--idle-timeout", "30s"]),
    (None, ["--idle-timeout=8d"], ["--idle-timeout", "8d"]),
    (None, ["--idle-timeout=soon"], ["--idle-timeout", "soon"]),
    (None, ["--scaling=5:2"], ["--scaling", "5:2"]),
    (None, ["--scaling=many"], ["--scaling", "many"]),
    (None, ["--task=m5.xlarge", "--bid=0.1"], ["--bid", "--spot"]),
    (None, ["--task=m5.xlarge", "--spot", "--bid=cheap"], ["--bid", "cheap"]),
    (None, ["--spot"], ["--spot", "--task"]),
    (None, ["--task=m5.xlarge", "--task-count=0"], ["--task-count"]),
    (None, ["--tag=novalue"], ["--tag", "novalue"]),
    (None, ["--tag=aws:x=1"], ["aws:"]),
    (None, ["--bootstrap=http://x/y.sh"], ["--bootstrap", "http://x/y.sh"]),
    (None, ["--loguri=/tmp/logs"], ["--loguri"]),
    (None, ["--key="], ["--key"]),
    (None, ["--task=m1.small"], ["m1.small", "vCPU"]),
]


def test_bad_start_is_exit_2_and_creates_nothing(cms, emr, cm, tmp_path, subtests):
    for config, args, words in BAD_STARTS:
        with subtests.test(args=args, config=config):
            if config is not None:
                args = [*args, f"--config={write(tmp_path, 'bad.yaml', config)}"]
            result = cms("start", "bad", *args)
            refused(result, emr, cm, *words)
            assert all_clusters(emr) == []


def test_unreadable_config_is_exit_2(cms, emr, cm, tmp_path):
    (tmp_path / "broken.yaml").write_text("Name: [unclosed\n")
    (tmp_path / "list.json").write_text("[1, 2]")
    for path, word in ((tmp_path / "broken.yaml", "YAML"), (tmp_path / "list.json", "mapping"),
                       (tmp_path / "missing.yaml", "missing.yaml")):
        refused(cms("start", "bad", f"--config={path}"), emr, cm, "--config", word)
    assert all_clusters(emr) == []


# ---- describe --format=config ------------------------------------------------------------------

def test_describe_as_config_recreates_the_cluster(cms, emr, cm, tmp_path):
    config = {**AIRFLOW, "Instances": {**AIRFLOW["Instances"], "InstanceGroups": [
        *AIRFLOW["Instances"]["InstanceGroups"],
        {"Name": "Core", "InstanceRole": "CORE", "InstanceType": "m5.xlarge", "InstanceCount": 2},
        {"Name": "Cheap", "InstanceRole": "TASK", "InstanceType": "c5.xlarge", "InstanceCount": 3,
         "Market": "SPOT", "BidPrice": "0.2"}], "KeepJobFlowAliveWhenNoSteps": True},
        "Tags": [{"Key": "team", "Value": "data"}], "LogUri": "s3://logs/",
        "BootstrapActions": [{"Name": "setup", "ScriptBootstrapAction": {
            "Path": "s3://boot/setup.sh", "Args": ["x"]}}],
        "Configurations": [{"Classification": "spark-defaults", "Properties": {
            "spark.executor.memory": "4g", "fs.s3a.secret.key": "never-shown"}}]}
    del config["Steps"]
    original = cms("start", "original", f"--config={write(tmp_path, 'c.yaml', config)}")
    assert original.code == 0, original.err
    first = original.out.strip()
    shown = cms("describe", first, "--format=config")
    assert shown.code == 0, shown.err
    assert "never-shown" not in shown.out
    document = yaml.safe_load(shown.out)
    assert "Id" not in document and "Status" not in document
    assert document["Name"] == "original"
    assert document["Tags"] == [{"Key": "team", "Value": "data"}]
    again = cms("start", "copy", f"--config={write(tmp_path, 'again.yaml', document)}")
    assert again.code == 0, again.err
    second = again.out.strip()

    def shape(cluster_id):
        cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
        groups = sorted((g["InstanceGroupType"], g["InstanceType"], g["RequestedInstanceCount"],
                         g["Market"]) for g in groups_of(emr, cluster_id).values())
        boot = [(b["ScriptPath"], b["Args"]) for b in
                emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"]]
        return (cluster["ReleaseLabel"], [a["Name"] for a in cluster["Applications"]], groups,
                user_tags(cluster["Tags"]), cluster["LogUri"], boot)

    assert shape(first) == shape(second)
    assert groups_of(emr, second)["TASK"]["BidPrice"] == "0.2"


# ---- wait -------------------------------------------------------------------------------------

def test_wait_for_a_running_cluster(cms, emr, cm):
    cluster_id = run_job_flow(emr, "ready")
    result = cms("wait", cluster_id, "--delay=1", "--timeout=10")
    assert result.code == 0, result.err
    assert result.out.split() == [cluster_id, "WAITING"]
    assert f"{cluster_id}: WAITING" in result.err  # stderr is not a terminal: one line
    doc, = cm.docs("aws", "cluster")
    assert doc["Status"]["State"] == "WAITING"


def test_wait_fails_when_the_cluster_ends(cms, emr):
    cluster_id = run_job_flow(emr, "doomed")
    set_cluster(cluster_id, state="TERMINATED_WITH_ERRORS",
                reason="The master node was terminated by user.")
    result = cms("wait", cluster_id, "--delay=1")
    assert result.code == 1
    error = result.err.strip().splitlines()[-1]
    assert error.startswith("ERROR: ") and "TERMINATED_WITH_ERRORS" in error
    assert "master node was terminated" in error


def test_wait_times_out_saying_where_the_cluster_is(cms, emr):
    cluster_id = run_job_flow(emr, "busy")
    result = cms("wait", cluster_id, "--until=terminated", "--delay=0.2", "--timeout=1")
    assert result.code == 1
    assert f"still WAITING after 1s" in result.err.strip().splitlines()[-1]
    assert result.err.count(f"{cluster_id}: WAITING") == 1  # one line per change


def test_wait_for_terminated(cms, emr):
    cluster_id = run_job_flow(emr, "gone")
    emr.terminate_job_flows(JobFlowIds=[cluster_id])
    result = cms("wait", cluster_id, "--until=terminated", "--delay=0.2")
    assert result.code == 0, result.err


@pytest.mark.parametrize("states,code", [
    (["COMPLETED", "COMPLETED"], 0),
    (["COMPLETED", "FAILED"], 1),
    (["CANCELLED", "COMPLETED"], 1),
    (["INTERRUPTED", "COMPLETED"], 1),
])
def test_wait_for_steps(cms, emr, cm, states, code):
    cluster_id = run_job_flow(emr, "steps")
    step_ids = add_steps(emr, cluster_id, ["one", "two"])
    for step_id, state in zip(step_ids, states):
        set_step(cluster_id, step_id, state=state)
    result = cms("wait", cluster_id, *step_ids, "--delay=0.2", "--timeout=5")
    assert result.code == code, result.err
    assert [line.split() for line in result.out.splitlines()] == \
        [[step_id, state] for step_id, state in zip(step_ids, states)]
    for step_id, state in zip(step_ids, states):  # progress: one line per change
        assert result.err.count(f"{step_id}: {state}") == 1
    recorded = {d["Id"]: d["Status"]["State"] for d in cm.docs("aws", "step")}
    assert recorded == dict(zip(step_ids, states))


BAD_WAITS = [
    (["--until=ready"], "ready"), (["--delay=soon"], "soon"), (["--timeout=forever"], "forever"),
    (["--delay=0"], "--delay"), (["s-ABC", "--until=running"], "--until"),
    (["not-a-step"], "not-a-step"),
]


def test_bad_wait_is_exit_2(cms, emr, cm, subtests):
    cluster_id = run_job_flow(emr, "w")
    for args, word in BAD_WAITS:
        with subtests.test(args=args):
            refused(cms("wait", cluster_id, *args), emr, cm, word)


def test_wait_for_an_unknown_cluster_is_exit_1(cms, emr):
    result = cms("wait", "j-NOSUCHCLUSTER", "--delay=0.2")
    assert result.code == 1 and one_error_line(result.err), result.err


# ---- modify, protect -------------------------------------------------------------------------

def test_modify_step_concurrency(cms, emr, cm):
    cluster_id = run_job_flow(emr, "m")
    result = cms("modify", cluster_id, "--concurrency=5")
    assert result.code == 0, result.err
    assert emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["StepConcurrencyLevel"] == 5
    action, = cm.docs("aws", "action")
    assert action["Action"] == "modify" and action["Request"]["StepConcurrencyLevel"] == 5


BAD_MODIFIES = [
    ([], "--concurrency"), (["--concurrency=0"], "0"), (["--concurrency=257"], "257"),
    (["--idle-timeout=10s"], "10s"), (["--scaling=0:3"], "0:3"),
]


def test_bad_modify_is_exit_2(cms, emr, cm, subtests):
    cluster_id = run_job_flow(emr, "m")
    for args, word in BAD_MODIFIES:
        with subtests.test(args=args):
            refused(cms("modify", cluster_id, *args), emr, cm, word)
            assert emr.describe_cluster(ClusterId=cluster_id)["Cluster"][
                "StepConcurrencyLevel"] == 1


def test_protect_on_and_off(cms, emr, cm):
    cluster_id = run_job_flow(emr, "p")
    assert cms("protect", cluster_id, "on").code == 0
    assert emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["TerminationProtected"] is True
    stopped = cms("stop", cluster_id)
    assert stopped.code == 1 and "termination-protected" in stopped.err
    assert cms("protect", cluster_id, "off").code == 0
    assert emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["TerminationProtected"] is False
    actions = [d for d in cm.docs("aws", "action") if d["Action"] == "protect"]
    assert sorted(a["Request"]["TerminationProtected"] for a in actions) == [False, True]


# ---- groups --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_list_groups(cms, emr, cm, fmt):
    cluster_id = run_job_flow(emr, "g", core=2, tasks=1)
    result = cms("list", "groups", cluster_id, f"--format={fmt}")
    assert result.code == 0, result.err
    groups = emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]
    data = parse(result.out, fmt)
    if fmt in ("table", "csv"):
        headers, rows = data
        assert headers == ["Id", "Type", "Market", "Instance type", "Requested", "Running",
                           "State"]
        assert [row[1] for row in rows] == ["MASTER", "CORE", "TASK"]
        by_id = {g["Id"]: g for g in groups}
        for row in rows:
            group = by_id[row[0]]
            assert row[3] == group["InstanceType"]
            assert row[4] == str(group["RequestedInstanceCount"])
            assert row[2].split()[0] == group["Market"]
    else:
        assert sorted(g["Id"] for g in data) == sorted(g["Id"] for g in groups)
    assert sorted(d["Id"] for d in cm.docs("aws", "group")) == sorted(g["Id"] for g in groups)


def test_add_task_groups(cms, emr, cm):
    cluster_id = run_job_flow(emr, "t")
    assert cms("add", "task", cluster_id, "--node=c5.xlarge", "--count=3", "--spot").code == 0
    assert cms("add", "task", cluster_id, "--count=2").code == 0
    tasks = [g for g in emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]
             if g["InstanceGroupType"] == "TASK"]
    assert sorted((g["Market"], g["InstanceType"], g["RequestedInstanceCount"]) for g in tasks) \
        == [("ON_DEMAND", "m5.xlarge", 2), ("SPOT", "c5.xlarge", 3)]
    actions = [d for d in cm.docs("aws", "action") if d["Action"] == "add task"]
    assert len(actions) == 2 and all(a["ClusterId"] == cluster_id for a in actions)


@pytest.mark.parametrize("args,word", [
    (["--count=0"], "--count"), (["--bid=0.1"], "--spot"), (["--node=m1.small"], "m1.small"),
])
def test_bad_add_task_is_exit_2(cms, emr, cm, args, word):
    cluster_id = run_job_flow(emr, "t")
    refused(cms("add", "task", cluster_id, *args), emr, cm, word)
    assert "TASK" not in groups_of(emr, cluster_id)


def test_resize(cms, emr, cm):
    cluster_id = run_job_flow(emr, "r", core=2)
    core = groups_of(emr, cluster_id)["CORE"]["Id"]
    result = cms("resize", cluster_id, core, "4")
    assert result.code == 0, result.err
    assert groups_of(emr, cluster_id)["CORE"]["RequestedInstanceCount"] == 4
    action, = cm.docs("aws", "action")
    assert (action["Action"], action["Target"], action["Request"]["InstanceCount"]) == \
        ("resize", core, 4)


def test_resize_refuses_the_master_and_bad_counts(cms, emr, cm):
    cluster_id = run_job_flow(emr, "r", core=2)
    groups = groups_of(emr, cluster_id)
    refused(cms("resize", cluster_id, groups["MASTER"]["Id"], "2"), emr, cm, "MASTER")
    refused(cms("resize", cluster_id, groups["CORE"]["Id"], "many"), emr, cm, "many")
    refused(cms("resize", cluster_id, groups["CORE"]["Id"], "--", "-1"), emr, cm)
    refused(cms("resize", cluster_id, "ig_1", "2"), emr, cm, "ig_1")
    assert groups_of(emr, cluster_id)["CORE"]["RequestedInstanceCount"] == 2
    missing = cms("resize", cluster_id, "ig-NOSUCHGROUP", "3")
    assert missing.code == 1 and "ig-NOSUCHGROUP" in missing.err


# ---- list clusters by date ---------------------------------------------------------------------

def test_list_clusters_created_after_and_before(cms, emr, cm):
    ids = {}
    for minute in (0, 10, 20):
        cluster_id = run_job_flow(emr, f"at {minute}")
        set_cluster(cluster_id, minute=minute)
        ids[minute] = cluster_id

    def listed(*args):
        result = cms("list", "clusters", "--format=json", *args)
        assert result.code == 0, result.err
        return {c["Id"] for c in json.loads(result.out)}

    assert listed("--created-after=2025-03-01T12:05Z") == {ids[10], ids[20]}
    assert listed("--created-before=2025-03-01T12:15:00+00:00") == {ids[0], ids[10]}
    assert listed("--created-after=2025-03-01T12:05Z",
                  "--created-before=2025-03-01 12:15") == {ids[10]}
    assert listed("--created-after=2025-03-01") == set(ids.values())
    assert listed("--created-after=1h") == set()  # an age: created in the last hour


@pytest.mark.parametrize("args,word", [
    (["--created-after=yesterday"], "yesterday"),
    (["--created-before=2025-13-01"], "2025-13-01"),
    (["--created-after=2025-03-02", "--created-before=2025-03-01"], "--created-after"),
])
def test_bad_dates_are_exit_2(cms, emr, cm, args, word):
    result = cms("list", "clusters", *args)
    assert result.code == 2 and one_error_line(result.err) and word in result.err


# ---- metrics -----------------------------------------------------------------------------------

def test_metrics(cms, emr, cm):
    import boto3

    cluster_id = run_job_flow(emr, "watched")
    cloudwatch = boto3.client("cloudwatch", region_name="us-east-1")
    now = datetime.datetime.now(UTC).replace(second=0, microsecond=0)
    values = [0, 2, 5, 1]
    cloudwatch.put_metric_data(Namespace="AWS/ElasticMapReduce", MetricData=[
        {"MetricName": "AppsRunning", "Dimensions": [{"Name": "JobFlowId", "Value": cluster_id}],
         "Value": value, "Timestamp": now - datetime.timedelta(minutes=5 * (len(values) - i))}
        for i, value in enumerate(values)])
    table = cms("metrics", cluster_id)
    assert table.code == 0, table.err
    headers, rows = parse(table.out, "table")
    assert headers == ["Metric", "Latest", "Min", "Max", "Trend"]
    row = {r[0]: r for r in rows}
    assert {"IsIdle", "AppsRunning", "AppsPending", "ContainerPending",
            "YARNMemoryAvailablePercentage", "CoreNodesRunning", "TaskNodesRunning",
            "HDFSUtilization"} <= set(row)
    assert row["AppsRunning"][1:4] == ["1", "0", "5"]
    assert len(row["AppsRunning"][4]) == 4  # one character per period
    headers, points = parse(cms("metrics", cluster_id, "--format=csv").out, "csv")
    assert headers == ["Metric", "Timestamp", "Value"]
    assert [float(p[2]) for p in points if p[0] == "AppsRunning"] == values
    data = json.loads(cms("metrics", cluster_id, "--format=json", "--since=12m").out)
    running, = [d for d in data if d["Metric"] == "AppsRunning"]
    assert [p["Value"] for p in running["Datapoints"]] == values[-2:]
    docs = {d["Metric"]: d for d in cm.docs("aws", "metric")}
    assert docs["AppsRunning"]["cm"]["cluster"] == cluster_id


def test_bad_metrics_is_exit_2(cms, emr, cm):
    cluster_id = run_job_flow(emr, "m")
    refused(cms("metrics", cluster_id, "--since=a while"), emr, cm, "a while")
    assert "aws-emr-metric" not in cm.db.list_collection_names()


# ---- the same over REST ------------------------------------------------------------------------

@pytest.fixture
def client(emr):
    from cloudmesh.emr.api.server import create_app

    with create_app().test_client(base_url="http://127.0.0.1:8080") as test_client:
        yield test_client


def problem(response, status, *words):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, (word, detail)
    return detail


def test_rest_start_with_a_config_and_options(client, emr, cm):
    answer = client.post("/clusters", json={"config": AIRFLOW, "task": "c5.xlarge",
                                            "spot": True, "idle_timeout": "1h",
                                            "tags": {"team": "data"}})
    assert answer.status_code == 201, answer.text
    cluster_id = answer.json()["ClusterId"]
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["Name"] == "PiCalc"  # no name: the config's
    assert user_tags(cluster["Tags"]) == {"team": "data"}
    assert groups_of(emr, cluster_id)["TASK"]["Market"] == "SPOT"
    action, = cm.docs("aws", "action")
    assert action["Request"]["RunJobFlow"]["AutoTerminationPolicy"] == {"IdleTimeout": 3600}


@pytest.mark.parametrize("body,words", [
    ({"config": {"Name": "x", "Instances": {"InstanceGroups": [
        {"InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": "1"}]}}},
     ["Instances.InstanceGroups[0].InstanceCount"]),
    ({"name": "x", "auto_terminate": True}, ["auto-terminate"]),
    ({"name": "x", "idle_timeout": "10s"}, ["idle-timeout", "10s"]),
    ({"count": 3}, ["name"]),
])
def test_rest_bad_start_is_400(client, emr, cm, body, words):
    problem(client.post("/clusters", json=body), 400, *words)
    assert all_clusters(emr) == []


def test_rest_groups_resize_modify_metrics(client, emr, cm):
    cluster_id = run_job_flow(emr, "rest", core=2)
    listed = client.get(f"/clusters/{cluster_id}/groups")
    assert listed.status_code == 200, listed.text
    assert [g["InstanceGroupType"] for g in listed.json()] == ["MASTER", "CORE"]
    added = client.post(f"/clusters/{cluster_id}/groups", json={"node": "c5.xlarge", "count": 2,
                                                                 "spot": True})
    assert added.status_code == 201, added.text
    task = groups_of(emr, cluster_id)["TASK"]
    assert (task["Market"], task["RequestedInstanceCount"]) == ("SPOT", 2)
    core = groups_of(emr, cluster_id)["CORE"]["Id"]
    resized = client.patch(f"/clusters/{cluster_id}/groups/{core}", json={"count": 3})
    assert resized.status_code == 200, resized.text
    assert groups_of(emr, cluster_id)["CORE"]["RequestedInstanceCount"] == 3
    master = groups_of(emr, cluster_id)["MASTER"]["Id"]
    problem(client.patch(f"/clusters/{cluster_id}/groups/{master}", json={"count": 2}), 400,
            "MASTER")
    problem(client.patch(f"/clusters/{cluster_id}/groups/{core}", json={"count": -1}), 400)
    changed = client.patch(f"/clusters/{cluster_id}", json={"concurrency": 3, "protected": True})
    assert changed.status_code == 200, changed.text
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert (cluster["StepConcurrencyLevel"], cluster["TerminationProtected"]) == (3, True)
    assert [a["Action"] for a in changed.json()["Actions"]] == ["modify", "protect"]
    problem(client.patch(f"/clusters/{cluster_id}", json={"concurrency": 300}), 400)
    metrics = client.get(f"/clusters/{cluster_id}/metrics", params={"since": "1h"})
    assert metrics.status_code == 200, metrics.text
    assert "IsIdle" in {m["Metric"] for m in metrics.json()}
    problem(client.get(f"/clusters/{cluster_id}/metrics", params={"since": "ages"}), 400,
            "ages")


def test_rest_clusters_by_creation_time(client, emr, cm):
    early, late = run_job_flow(emr, "early"), run_job_flow(emr, "late")
    set_cluster(early, minute=0)
    set_cluster(late, minute=30)
    answer = client.get("/clusters", params={"created_after": "2025-03-01T12:10Z"})
    assert answer.status_code == 200, answer.text
    assert [c["Id"] for c in answer.json()] == [late]
    answer = client.get("/clusters", params={"created_before": "2025-03-01T12:10Z"})
    assert [c["Id"] for c in answer.json()] == [early]
    problem(client.get("/clusters", params={"created_after": "someday"}), 400, "someday")


def test_rest_config_of_a_cluster(client, emr, cm):
    cluster_id = run_job_flow(emr, "described", core=2)
    answer = client.get(f"/clusters/{cluster_id}/config")
    assert answer.status_code == 200, answer.text
    document = answer.json()
    again = client.post("/clusters", json={"name": "again", "config": document})
    assert again.status_code == 201, again.text
    new = again.json()["ClusterId"]
    assert groups_of(emr, new)["CORE"]["RequestedInstanceCount"] == 2


# ---- how wait shows progress ---------------------------------------------------------------------

class Terminal:
    """A stream that says it is a terminal, and keeps what was written."""

    def __init__(self, tty):
        self.tty = tty
        self.text = ""

    def isatty(self):
        return self.tty

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_progress_is_one_line_per_change_or_one_live_line():
    from cloudmesh.emr.command.emr import StateLine

    answers = [("j-1", "STARTING", None), ("j-1", "STARTING", None),
               ("j-1", "BOOTSTRAPPING", "Running bootstrap actions"), ("j-1", "WAITING", None)]
    piped = Terminal(False)
    line = StateLine(piped)
    for answer in answers:
        line(*answer)
    line.close()
    assert piped.text.splitlines() == ["j-1: STARTING",
                                       "j-1: BOOTSTRAPPING (Running bootstrap actions)",
                                       "j-1: WAITING"]
    terminal = Terminal(True)
    line = StateLine(terminal)
    for answer in answers:
        line(*answer)
    line.close()
    assert terminal.text.count("\n") == 1 and terminal.text.endswith("\n")  # one live line
    shown = terminal.text.rstrip("\n").split("\r")[-1]
    assert shown.startswith("j-1: WAITING [") and shown.rstrip().endswith("]")
    assert len(shown) == len(terminal.text.rstrip("\n").split("\r")[-2])  # the longer line wiped
