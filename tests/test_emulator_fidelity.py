"""The emulator answers as EMR answers: release labels, shapes and states, Spark versions,
and what a restart keeps. Read through boto3 (and EC2's own view), against the real
daemon: the session's ``emulator`` fixture, and one daemon of its own for the restart.
"""

import gzip
import importlib.metadata
import json
import re
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from local_fixtures import start_emulator, stop_emulator, wait_for

TABLE = json.loads((Path(__file__).resolve().parent.parent
                    / "cloudmesh" / "emr" / "data" / "releases.json").read_text())
ROLES = {"JobFlowRole": "EMR_EC2_DefaultRole", "ServiceRole": "EMR_DefaultRole"}

VERSIONS_JOB = """\
import pyspark
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("versions").getOrCreate()
print("pyspark", pyspark.__version__, "spark", spark.version, flush=True)
spark.stop()
"""


def groups_cluster(emr, name, release="emr-7.12.0", keep_alive=True, **extra):
    return emr.run_job_flow(
        Name=name, ReleaseLabel=release, **ROLES,
        Instances={"InstanceGroups": [
            {"InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1},
            {"InstanceRole": "CORE", "InstanceType": "m5.xlarge", "InstanceCount": 2}],
            "KeepJobFlowAliveWhenNoSteps": keep_alive}, **extra)["JobFlowId"]


def step(name, *args):
    return {"Name": name, "ActionOnFailure": "CONTINUE",
            "HadoopJarStep": {"Jar": "command-runner.jar", "Args": list(args)}}


def concise(version):
    return version.split("-amzn")[0]


def read_log(s3, uri):
    bucket, _, key = uri[len("s3://"):].partition("/")
    return gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).decode()


def test_release_labels_answer_from_the_release_table(emr):
    for label in ("emr-7.12.0", "emr-6.15.0", "emr-5.29.0"):
        entry = TABLE["releases"][label]
        answer = emr.describe_release_label(ReleaseLabel=label)
        assert answer["ReleaseLabel"] == label
        assert {a["Name"]: a["Version"] for a in answer["Applications"]} == {
            name.lower(): concise(version) for name, version in entry["applications"].items()}
        assert answer["AvailableOSReleases"] == [{"Label": entry["os_release_label"]}]
    assert {a["Name"]: a["Version"] for a in emr.describe_release_label(
        ReleaseLabel="emr-5.29.0")["Applications"]}["spark"] == "2.4.4"
    with pytest.raises(ClientError) as caught:
        emr.describe_release_label(ReleaseLabel="emr-9.9.9")
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as caught:
        emr.list_supported_instance_types(ReleaseLabel="emr-9.9.9")
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert emr.list_supported_instance_types(ReleaseLabel="emr-7.12.0")["SupportedInstanceTypes"]
    sixes = emr.list_release_labels(Filters={"Prefix": "emr-6"})["ReleaseLabels"]
    assert sixes == sorted((l for l in TABLE["releases"] if l.startswith("emr-6")),
                           key=lambda l: [int(p) for p in l[4:].split(".")], reverse=True)
    spark24 = emr.list_release_labels(Filters={"Application": "Spark@2.4"})["ReleaseLabels"]
    assert "emr-5.29.0" in spark24 and not any(l.startswith("emr-7") for l in spark24)


def test_a_cluster_of_instance_groups_is_shaped_and_moves_as_on_emr(emulator, emr):
    cluster_id = groups_cluster(emr, "shapes")  # no Applications: EMR's defaults
    emulator.wait_cluster(cluster_id, ["WAITING"])
    # BOOTSTRAPPING straight to WAITING: there is no step to run
    assert [(a, b) for a, b, _ in emulator.transitions(cluster_id)] == [
        ("STARTING", "BOOTSTRAPPING"), ("BOOTSTRAPPING", "WAITING")]
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    entry = TABLE["releases"]["emr-7.12.0"]
    hadoop = concise(entry["applications"]["Hadoop"])
    assert [(a["Name"], a["Version"]) for a in cluster["Applications"]] == [("Hadoop", hadoop)]
    assert cluster["OSReleaseLabel"] == entry["os_release_label"]
    assert cluster["InstanceCollectionType"] == "INSTANCE_GROUP"
    attributes = cluster["Ec2InstanceAttributes"]
    subnet = emulator.client("ec2").describe_subnets(
        SubnetIds=[attributes["Ec2SubnetId"]])["Subnets"][0]
    assert subnet["AvailabilityZone"] == attributes["Ec2AvailabilityZone"]
    flow = emr.describe_job_flows(JobFlowIds=[cluster_id])["JobFlows"][0]
    assert flow["Instances"]["HadoopVersion"] == hadoop
    groups = emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]
    assert all(g["Id"].startswith("ig-") for g in groups) and len(groups) == 2
    instances = emr.list_instances(ClusterId=cluster_id)["Instances"]
    assert all(i["Id"].startswith("ci-") and i["Ec2InstanceId"].startswith("i-")
               for i in instances)
    assert {i["InstanceGroupId"] for i in instances} == {g["Id"] for g in groups}

    # a new step waits PENDING for the engine's next pass (read from the daemon's log, not
    # from a describe that a busy machine could make late)
    step_id = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[
        step("copy", "aws", "s3", "cp", "s3://no-such-bucket-here/x", "/home/hadoop/")])["StepIds"][0]
    emulator.wait_step(cluster_id, step_id, ["FAILED"])
    moves = re.findall(rf"step {step_id} of {cluster_id}: (\w+) -> (\w+)", emulator.log.read_text())
    assert moves == [("PENDING", "RUNNING"), ("RUNNING", "FAILED")]

    emr.put_auto_termination_policy(ClusterId=cluster_id,
                                    AutoTerminationPolicy={"IdleTimeout": 3600})
    assert emr.get_auto_termination_policy(ClusterId=cluster_id)["AutoTerminationPolicy"] == {
        "IdleTimeout": 3600}

    master_dns = cluster["MasterPublicDnsName"]
    assert master_dns.startswith("ec2-")
    emr.terminate_job_flows(JobFlowIds=[cluster_id])
    ended = emulator.wait_cluster(cluster_id, ["TERMINATED"])
    # once ended, the master's name and the instances stay, the instances TERMINATED
    assert ended["MasterPublicDnsName"] == master_dns
    flow = emr.describe_job_flows(JobFlowIds=[cluster_id])["JobFlows"][0]
    assert flow["Instances"]["MasterPublicDnsName"] == master_dns
    assert flow["Instances"]["InstanceCount"] == 3
    after = emr.list_instances(ClusterId=cluster_id)["Instances"]
    assert {i["Id"] for i in after} == {i["Id"] for i in instances}
    assert {i["Status"]["State"] for i in after} == {"TERMINATED"}
    assert all(i["PublicDnsName"] for i in after)


def test_a_cluster_of_instance_fleets_gets_instances_and_resizes(emulator, emr):
    fleets = [
        {"InstanceFleetType": "MASTER", "TargetOnDemandCapacity": 1,
         "InstanceTypeConfigs": [{"InstanceType": "m5.xlarge"}]},
        {"InstanceFleetType": "CORE", "TargetOnDemandCapacity": 2,
         "InstanceTypeConfigs": [{"InstanceType": "m5.xlarge", "WeightedCapacity": 1}]},
    ]
    cluster_id = emr.run_job_flow(
        Name="fleets", ReleaseLabel="emr-7.12.0", **ROLES,
        Instances={"InstanceFleets": fleets, "KeepJobFlowAliveWhenNoSteps": True})["JobFlowId"]
    cluster = emulator.wait_cluster(cluster_id, ["WAITING"])
    assert cluster["InstanceCollectionType"] == "INSTANCE_FLEET"
    assert cluster["MasterPublicDnsName"].startswith("ec2-")
    listed = {f["InstanceFleetType"]: f for f in
              emr.list_instance_fleets(ClusterId=cluster_id)["InstanceFleets"]}
    assert set(listed) == {"MASTER", "CORE"}
    assert all(f["Id"].startswith("if-") and f["Status"]["State"] == "RUNNING"
               for f in listed.values())
    assert listed["CORE"]["ProvisionedOnDemandCapacity"] == 2
    core = emr.list_instances(ClusterId=cluster_id, InstanceFleetType="CORE")["Instances"]
    assert len(core) == 2 and {i["InstanceFleetId"] for i in core} == {listed["CORE"]["Id"]}

    emr.modify_instance_fleet(ClusterId=cluster_id, InstanceFleet={
        "InstanceFleetId": listed["CORE"]["Id"], "TargetOnDemandCapacity": 4})
    seen = []

    def resized():
        fleet = [f for f in emr.list_instance_fleets(ClusterId=cluster_id)["InstanceFleets"]
                 if f["Id"] == listed["CORE"]["Id"]][0]
        seen.append(fleet["Status"]["State"])
        running = emr.list_instances(ClusterId=cluster_id, InstanceFleetType="CORE",
                                     InstanceStates=["RUNNING"])["Instances"]
        return fleet["Status"]["State"] == "RUNNING" and len(running) == 4 and fleet

    fleet = wait_for(resized, 30, interval=0.02, what="the core fleet at 4 instances")
    assert seen[0] == "RESIZING" and fleet["ProvisionedOnDemandCapacity"] == 4
    with pytest.raises(ClientError) as caught:
        emr.modify_instance_fleet(ClusterId=cluster_id, InstanceFleet={
            "InstanceFleetId": listed["MASTER"]["Id"], "TargetOnDemandCapacity": 3})
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    emr.terminate_job_flows(JobFlowIds=[cluster_id])
    emulator.wait_cluster(cluster_id, ["TERMINATED"])
    states = {f["Status"]["State"] for f in
              emr.list_instance_fleets(ClusterId=cluster_id)["InstanceFleets"]}
    assert states == {"TERMINATED"}


@pytest.mark.spark
def test_a_step_on_emr_7_runs_on_the_pinned_pyspark(emulator, emr, s3):
    installed = importlib.metadata.version("pyspark")
    line = ".".join(concise(TABLE["releases"]["emr-7.12.0"]["applications"]["Spark"])
                    .split(".")[:2])
    assert installed.startswith(line + "."), "the local extra pins the emr-7.x Spark line"
    bucket = f"fidelity-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="versions.py", Body=VERSIONS_JOB.encode())
    cluster_id = groups_cluster(emr, "spark-line", Steps=[
        step("versions", "spark-submit", f"s3://{bucket}/versions.py")], keep_alive=False)
    step_id = emr.list_steps(ClusterId=cluster_id)["Steps"][0]["Id"]
    emulator.wait_step(cluster_id, step_id, ["COMPLETED", "FAILED"], timeout=180)
    logs = f"s3://cloudmesh-emr-local-logs/{cluster_id}/steps/{step_id}/"
    stdout = read_log(s3, logs + "stdout.gz")
    assert f"pyspark {installed} spark {installed}" in stdout
    assert not read_log(s3, logs + "stderr.gz").startswith("WARNING")


def test_a_step_of_a_release_whose_spark_cannot_run_here_warns(emulator, emr):
    cluster_id = groups_cluster(emr, "spark-2.4", release="emr-5.29.0", Steps=[
        step("missing", "spark-submit", "s3://no-such-bucket-here/job.py")])
    step_id = emr.list_steps(ClusterId=cluster_id)["Steps"][0]["Id"]
    failed = emulator.wait_step(cluster_id, step_id, ["FAILED"])
    assert failed["Status"]["FailureDetails"]["Reason"] == "File not found"
    stderr = read_log(emulator.client("s3"), failed["Status"]["FailureDetails"]["LogFile"])
    first = stderr.splitlines()[0]
    assert first.startswith("WARNING: emr-5.29.0 ships Spark 2.4")
    assert importlib.metadata.version("pyspark") in first
    emr.terminate_job_flows(JobFlowIds=[cluster_id])


def test_a_restart_keeps_s3_objects_the_history_of_clusters_and_the_credentials(tmp_path):
    # a slow daemon (30 s per transition): the cluster is still STARTING, its step PENDING
    emulator = start_emulator(tmp_path / "restart", delay=30)
    try:
        emr, s3 = emulator.client("emr"), emulator.client("s3")
        s3.create_bucket(Bucket="kept")
        s3.put_object(Bucket="kept", Key="data/a.txt", Body=b"alpha\n", ContentType="text/plain")
        cluster_id = groups_cluster(emr, "active", Steps=[
            step("copy", "aws", "s3", "cp", "s3://kept/data/a.txt", "/home/hadoop/")])
        before = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
        step_id = emr.list_steps(ClusterId=cluster_id)["Steps"][0]["Id"]
        pair = emulator.credentials
    finally:
        stop_emulator(emulator)
    emulator = start_emulator(tmp_path / "restart")
    try:
        # the daemon's valid credentials are kept: `eval "$(cms emr local env)"` still holds
        assert emulator.credentials == pair
        assert pair.secret_access_key not in emulator.log.read_text()
        emr, s3 = emulator.client("emr"), emulator.client("s3")
        kept = s3.get_object(Bucket="kept", Key="data/a.txt")
        assert kept["Body"].read() == b"alpha\n" and kept["ContentType"] == "text/plain"
        assert [c["Id"] for c in emr.list_clusters()["Clusters"]] == [cluster_id]
        after = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
        assert after["Status"]["State"] == "TERMINATED"
        assert "emulator was stopped" in after["Status"]["StateChangeReason"]["Message"]
        assert after["Status"]["Timeline"]["EndDateTime"]
        assert after["MasterPublicDnsName"] == before["MasterPublicDnsName"]
        assert after["Applications"] == before["Applications"]
        kept_step = emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]
        assert kept_step["Status"]["State"] == "CANCELLED"
        assert kept_step["Config"]["Args"] == ["aws", "s3", "cp", "s3://kept/data/a.txt",
                                               "/home/hadoop/"]
        instances = emr.list_instances(ClusterId=cluster_id)["Instances"]
        assert len(instances) == 3 and {i["Status"]["State"] for i in instances} == {"TERMINATED"}
    finally:
        stop_emulator(emulator)
