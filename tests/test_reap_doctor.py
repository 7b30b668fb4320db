"""`cms emr reap` (and the limits `start` puts on a cluster), in this process against moto.

What reap did is read back with boto3 (cluster states) and pymongo (its actions).
"""

import datetime
import json

import pytest

from emr_helpers import lean_moto  # noqa: F401  (autouse)
from emr_helpers import make_default_roles, remove_default_roles, one_error_line

UTC = datetime.timezone.utc


@pytest.fixture
def emr(aws):
    import boto3

    return boto3.client("emr", region_name="us-east-1")


def cluster(emr, name, tags=(), protected=False):
    cluster_id = emr.run_job_flow(
        Name=name, ReleaseLabel="emr-7.1.0",
        Instances={"InstanceGroups": [{"InstanceRole": "MASTER", "InstanceType": "m5.xlarge",
                                       "InstanceCount": 1}],
                   "KeepJobFlowAliveWhenNoSteps": True, "TerminationProtected": protected},
        Tags=[{"Key": k, "Value": v} for k, v in tags],
        JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole")["JobFlowId"]
    return cluster_id


def is_idle(cluster_id, value, hours=2):
    """IsIdle data points every 5 minutes over the last ``hours``, as EMR publishes them."""
    import boto3

    cloudwatch = boto3.client("cloudwatch", region_name="us-east-1")
    now = datetime.datetime.now(UTC)
    points = [{"MetricName": "IsIdle", "Value": value, "Timestamp": now - datetime.timedelta(
        minutes=5 * i), "Dimensions": [{"Name": "JobFlowId", "Value": cluster_id}]}
        for i in range(hours * 12)]
    for start in range(0, len(points), 20):
        cloudwatch.put_metric_data(Namespace="AWS/ElasticMapReduce",
                                   MetricData=points[start:start + 20])


@pytest.fixture
def five(emr):
    past = (datetime.datetime.now(UTC) - datetime.timedelta(minutes=5)).isoformat()
    later = (datetime.datetime.now(UTC) + datetime.timedelta(days=1)).isoformat()
    clusters = {
        "expired": cluster(emr, "expired", [("cloudmesh:expires", past)]),
        "costly": cluster(emr, "costly", [("cloudmesh:max-cost", "0.001")]),
        "idle": cluster(emr, "idle"),
        "protected": cluster(emr, "protected", [("cloudmesh:expires", past)], protected=True),
        "healthy": cluster(emr, "healthy", [("cloudmesh:expires", later),
                                            ("cloudmesh:max-cost", "1000")]),
    }
    is_idle(clusters["idle"], 1.0)
    for name in ("expired", "costly", "protected", "healthy"):
        is_idle(clusters[name], 0.0)
    return clusters


def state(emr, cluster_id):
    return emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]


def test_reap_dry_run_names_the_three_and_stops_nothing(cms, emr, cm, five):
    result = cms("reap", "--dry-run", "--idle=1h", "--format=json")
    assert result.code == 0, result.err
    records = {r["Name"]: r for r in json.loads(result.out)}
    would = {name for name, r in records.items() if r["Decision"] == "would-reap"}
    assert would == {"expired", "costly", "idle"}
    assert "expired at" in records["expired"]["Reasons"][0]
    assert "max-cost" in records["costly"]["Reasons"][0]
    assert "idle since" in records["idle"]["Reasons"][0]
    assert records["protected"]["Decision"] == "protected"
    assert records["healthy"] == {**records["healthy"], "Decision": "keep", "Reasons": []}
    assert all(state(emr, cid) == "WAITING" for cid in five.values())
    assert not [d for d in cm.docs("aws", "action") if d["Action"] == "reap"]
    table = cms("reap", "--dry-run", "--idle=1h")
    assert table.code == 0
    assert len([line for line in table.out.splitlines() if line.startswith("j-")]) == 5


def test_reap_ends_the_three_and_records_why(cms, emr, cm, five):
    result = cms("reap", "--idle=1h")
    assert result.code == 0, result.err
    for name in ("expired", "costly", "idle"):
        assert state(emr, five[name]) in ("TERMINATING", "TERMINATED"), name
    for name in ("protected", "healthy"):
        assert state(emr, five[name]) == "WAITING", name
    reaped = {d["Target"]: d for d in cm.docs("aws", "action") if d["Action"] == "reap"}
    assert set(reaped) == {five["expired"], five["costly"], five["idle"]}
    assert reaped[five["costly"]]["Request"]["Reasons"][0].startswith("cost $")


def test_without_idle_an_idle_cluster_stays(cms, emr, five):
    result = cms("reap", "--dry-run", "--format=json")
    assert result.code == 0, result.err
    would = {r["Name"] for r in json.loads(result.out) if r["Decision"] == "would-reap"}
    assert would == {"expired", "costly"}


def test_idle_without_isidle_data_is_no_step_running_or_pending_since(cms, emr, cm,
                                                                     monkeypatch):
    """CloudWatch has no IsIdle data points of these clusters (EMR publishes none, say, for a
    cluster that is new to CloudWatch): reap falls back on the steps. Two clusters made two
    hours ago by moto's clock, one quiet and one with a running step, and one made now."""
    from moto.emr import models

    earlier = datetime.datetime.now(UTC) - datetime.timedelta(hours=2)
    with monkeypatch.context() as clock:
        clock.setattr(models, "utcnow", lambda: earlier)
        quiet, busy = cluster(emr, "quiet"), cluster(emr, "busy")
        emr.add_job_flow_steps(JobFlowId=busy, Steps=[{
            "Name": "long", "ActionOnFailure": "CONTINUE",
            "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["sleep", "9999"]}}])
    fresh = cluster(emr, "fresh")
    import boto3

    cloudwatch = boto3.client("cloudwatch", region_name="us-east-1")
    assert cloudwatch.list_metrics(Namespace="AWS/ElasticMapReduce")["Metrics"] == []
    [step] = emr.list_steps(ClusterId=busy)["Steps"]
    assert step["Status"]["State"] in ("PENDING", "RUNNING")
    ready = emr.describe_cluster(ClusterId=quiet)["Cluster"]["Status"]["Timeline"][
        "ReadyDateTime"]

    result = cms("reap", "--idle=1h", "--format=json")
    assert result.code == 0, result.err
    records = {r["Name"]: r for r in json.loads(result.out)}
    assert records["quiet"]["Decision"] == "reap"
    [reason] = records["quiet"]["Reasons"]
    assert reason.startswith("idle since ")
    since = datetime.datetime.fromisoformat(reason.split()[-1].replace("Z", "+00:00"))
    assert abs((since - ready).total_seconds()) < 1
    assert (records["busy"]["Decision"], records["fresh"]["Decision"]) == ("keep", "keep")
    assert state(emr, quiet) in ("TERMINATING", "TERMINATED")
    assert state(emr, busy) == "RUNNING" and state(emr, fresh) == "WAITING"
    [reaped] = [d for d in cm.docs("aws", "action") if d["Action"] == "reap"]
    assert reaped["Target"] == quiet and reaped["Request"]["Reasons"] == [reason]


def test_start_tags_the_limits_and_an_hour_idle_timeout(cms, emr, cm):
    result = cms("start", "limited", "--ttl=2h", "--max-cost=7.50")
    assert result.code == 0, result.err
    cluster_id = result.out.strip().split()[0]
    described = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    tags = {t["Key"]: t["Value"] for t in described["Tags"]}
    expires = datetime.datetime.fromisoformat(tags["cloudmesh:expires"].replace("Z", "+00:00"))
    left = expires - datetime.datetime.now(UTC)
    assert datetime.timedelta(minutes=118) < left <= datetime.timedelta(hours=2)
    assert tags["cloudmesh:max-cost"] == "7.50"
    [action] = [d for d in cm.docs("aws", "action") if d["Action"] == "start"]
    assert action["Request"]["RunJobFlow"]["AutoTerminationPolicy"] == {"IdleTimeout": 3600}


def test_idle_timeout_off_and_old_releases(cms, emr, cm):
    assert cms("start", "forever", "--idle-timeout=off").code == 0
    old = cms("start", "old", "--release=emr-5.29.0")
    assert old.code == 0, old.err
    assert "WARNING" in old.err and "auto-termination" in old.err
    requests = {d["Target"]: d["Request"]["RunJobFlow"] for d in cm.docs("aws", "action")
                if d["Action"] == "start"}
    assert all("AutoTerminationPolicy" not in r for r in requests.values())


@pytest.mark.parametrize("args, words", [
    (["--ttl=soon"], ["--ttl", "soon"]),
    (["--max-cost=lots"], ["--max-cost", "lots"]),
    (["--max-cost=0"], ["--max-cost"]),
])
def test_bad_limits_are_refused(cms, emr, args, words):
    result = cms("start", "bad", *args)
    assert result.code == 2
    assert result.err.startswith("ERROR: ") and len(result.err.splitlines()) == 1
    for word in words:
        assert word in result.err
    assert emr.list_clusters()["Clusters"] == []


@pytest.fixture
def client(emr):
    from cloudmesh.emr.api.server import create_app

    with create_app().test_client(base_url="http://127.0.0.1:8080") as test_client:
        yield test_client


def test_rest_reap_and_cost(client, emr, cm, five):
    dry = client.post("/reap", params={"dry_run": "true", "idle": "1h"})
    assert dry.status_code == 200, dry.text
    assert {r["Name"] for r in dry.json() if r["Decision"] == "would-reap"} == {
        "expired", "costly", "idle"}
    assert state(emr, five["expired"]) == "WAITING"
    one = client.get(f"/clusters/{five['healthy']}/cost")
    assert one.status_code == 200, one.text
    body = one.json()
    assert [c["Id"] for c in body["Clusters"]] == [five["healthy"]]
    assert body["DollarsPerHour"] == pytest.approx(0.192 + 0.048)
    assert any("Price List API" in w for w in body["Warnings"])  # moto has none: the table
    every = client.get("/cost")
    assert every.status_code == 200
    assert {c["Id"] for c in every.json()["Clusters"]} == set(five.values())
    done = client.post("/reap", params={"idle": "1h"})
    assert done.status_code == 200
    assert state(emr, five["expired"]) in ("TERMINATING", "TERMINATED")
    assert state(emr, five["healthy"]) == "WAITING"


@pytest.mark.parametrize("query", ["dry_run=false&bogus=1", "dry_run=maybe", "dry_run=",
                                   "idle=soon"])
def test_rest_reap_refuses_unknown_and_mistyped_parameters_and_ends_nothing(client, emr, five,
                                                                             query):
    answer = client.post(f"/reap?{query}")
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert state(emr, five["expired"]) == "WAITING"


# ---- doctor, against the emulator (which starts without EMR's default roles) ---------------

@pytest.fixture
def local(cm, emulator):
    cm.write(clouds=emulator.profile(), emr={"default": {"cloud": "local"}})
    return emulator


def checks(result):
    return {r["Check"]: r for r in json.loads(result.out)}


@pytest.fixture
def no_roles(local):
    """A new account: EMR's default roles and instance profile removed from the session's
    emulator, and made again afterwards (the tests share it, and every start needs them)."""
    iam = local.client("iam")
    remove_default_roles(iam)
    yield local
    make_default_roles(iam)


@pytest.fixture
def fixed(local):
    """The session's emulator with the default roles, and a log bucket in its region."""
    local.client("s3").create_bucket(Bucket="doctor-logs")
    return local


def test_doctor_finds_the_roles_missing_and_fix_makes_them_as_the_aws_cli_does(cms, no_roles):
    before = cms("doctor", "--format=json")
    assert before.code == 1
    found = checks(before)
    assert found["service role"]["Status"] == "FAIL"
    assert "EMR_DefaultRole" in found["service role"]["Detail"]
    assert found["instance profile"]["Status"] == "FAIL"
    assert "cms emr doctor --fix" in found["service role"]["Fix"]
    assert before.err.startswith("ERROR: ") and len(before.err.splitlines()) == 1
    result = cms("doctor", "--fix", "--format=json")
    assert result.code == 0, (result.out, result.err)
    iam = no_roles.client("iam")
    for name, service, policy in (
            ("EMR_DefaultRole", "elasticmapreduce.amazonaws.com", "AmazonElasticMapReduceRole"),
            ("EMR_EC2_DefaultRole", "ec2.amazonaws.com", "AmazonElasticMapReduceforEC2Role")):
        role = iam.get_role(RoleName=name)["Role"]
        [statement] = role["AssumeRolePolicyDocument"]["Statement"]
        assert statement["Principal"]["Service"] == service
        assert statement["Action"] == "sts:AssumeRole"
        attached = iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
        assert [p["PolicyArn"] for p in attached] == [
            f"arn:aws:iam::aws:policy/service-role/{policy}"]
    profile = iam.get_instance_profile(InstanceProfileName="EMR_EC2_DefaultRole")
    assert [r["RoleName"] for r in profile["InstanceProfile"]["Roles"]] == ["EMR_EC2_DefaultRole"]
    again = cms("doctor", "--format=json")
    assert checks(again)["service role"]["Status"] == "OK"
    assert checks(again)["instance profile"]["Status"] == "OK"


def test_doctor_all_well(cms, fixed):
    result = cms("doctor", "--loguri=s3://doctor-logs/logs/", "--format=json")
    assert result.code == 0, result.out
    found = checks(result)
    assert found["credentials"]["Detail"].startswith("account ")
    assert fixed.credentials.secret_access_key not in result.out
    assert {r["Status"] for r in found.values()} == {"OK"}


def test_doctor_vcpu_quota_from_service_quotas(cms, fixed):
    """The emulator answers EC2's on-demand standard vCPU quota (an emulated value): a
    launch that asks for more vCPUs than it allows fails the check."""
    quotas = fixed.client("service-quotas")
    limit = quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-1216C47A")["Quota"]["Value"]
    fits = cms("doctor", "--loguri=s3://doctor-logs/logs/", "--count=3", "--format=json")
    assert fits.code == 0, fits.out
    assert checks(fits)["vCPU quota"]["Status"] == "OK"
    assert checks(fits)["vCPU quota"]["Detail"].startswith(f"12 vCPUs asked of {limit:g}")
    count = int(limit // 4) + 1  # m5.xlarge instances have 4 vCPUs each
    too_many = cms("doctor", "--loguri=s3://doctor-logs/logs/", f"--count={count}",
                   "--format=json")
    assert too_many.code == 1
    found = checks(too_many)
    assert {name for name, r in found.items() if r["Status"] == "FAIL"} == {"vCPU quota"}
    assert found["vCPU quota"]["Detail"].startswith(f"{4 * count} vCPUs asked, the quota is "
                                                    f"{limit:g}")
    assert "request-service-quota-increase" in found["vCPU quota"]["Fix"]


@pytest.mark.parametrize("args, failing", [
    (["--release=emr-0.1.0"], "release"),
    (["--node=m1.medium"], "instance types"),
    (["--key=no-such-key"], "key pair"),
    (["--subnet=subnet-0123456789abcdef0"], "subnet"),
    (["--loguri=s3://doctor-elsewhere/logs/"], "log bucket"),
])
def test_doctor_each_check_fails_on_its_own(cms, fixed, args, failing):
    import boto3

    s3 = boto3.session.Session().client(
        "s3", endpoint_url=fixed.endpoint, region_name="eu-west-1", **fixed.credentials.boto())
    try:
        s3.create_bucket(Bucket="doctor-elsewhere",
                         CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    base = [] if failing == "log bucket" else ["--loguri=s3://doctor-logs/logs/"]
    result = cms("doctor", *base, *args, "--format=json")
    assert result.code == 1, result.out
    failed = {name for name, r in checks(result).items() if r["Status"] == "FAIL"}
    if failing == "release":  # an unknown release has no supported types either
        assert failed == {"release", "instance types"}
    else:
        assert failed == {failing}
    table = cms("doctor", *base, *args)
    assert table.code == 1
    assert any(line.startswith("FAIL") for line in table.out.splitlines())


def test_doctor_finds_a_role_the_config_names_missing(cms, fixed, tmp_path):
    config = tmp_path / "cluster.json"
    config.write_text(json.dumps({"Name": "c", "ServiceRole": "Our_EMR_Role",
                                  "JobFlowRole": "EMR_EC2_DefaultRole"}))
    result = cms("doctor", f"--config={config}", "--loguri=s3://doctor-logs/logs/",
                 "--format=json")
    assert result.code == 1
    found = checks(result)
    assert found["service role"]["Status"] == "FAIL"
    assert "Our_EMR_Role" in found["service role"]["Detail"]
    assert found["instance profile"]["Status"] == "OK"


def test_rest_doctor(emr, cm):
    import boto3

    from cloudmesh.emr.api.server import create_app

    boto3.client("iam").delete_role(RoleName="EMR_DefaultRole")
    with create_app().test_client(base_url="http://127.0.0.1:8080") as client:
        answer = client.get("/doctor", params={"key": "no-such-key"})
    assert answer.status_code == 200, answer.text
    found = {r["Check"]: r for r in answer.json()}
    assert found["key pair"]["Status"] == "FAIL"
    assert found["service role"]["Status"] == "FAIL"
    assert found["instance profile"]["Status"] == "OK"


# ---- start runs doctor's fast checks first ------------------------------------------------

def without(what):
    """Remove one default role (or the instance profile) from moto in this process."""
    import boto3

    iam = boto3.client("iam")
    if what == "instance profile":
        iam.remove_role_from_instance_profile(InstanceProfileName="EMR_EC2_DefaultRole",
                                              RoleName="EMR_EC2_DefaultRole")
        iam.delete_instance_profile(InstanceProfileName="EMR_EC2_DefaultRole")
    else:
        iam.delete_role(RoleName=what)


@pytest.mark.parametrize("missing, named", [
    ("EMR_DefaultRole", "service role EMR_DefaultRole"),
    ("instance profile", "instance profile EMR_EC2_DefaultRole"),
])
def test_start_without_a_default_role_makes_no_cluster(cms, emr, cm, missing, named):
    without(missing)
    result = cms("start", "doomed")
    assert result.code == 1
    assert one_error_line(result.err), result.err
    assert named in result.err and "cms emr doctor --fix" in result.err
    assert emr.list_clusters()["Clusters"] == []
    assert [d for d in cm.docs("aws", "action") if d["Action"] == "start"] == []


def test_start_names_a_missing_role_of_its_config(cms, emr, tmp_path):
    config = tmp_path / "cluster.json"
    config.write_text(json.dumps({"Name": "c", "ServiceRole": "Our_EMR_Role",
                                  "JobFlowRole": "EMR_EC2_DefaultRole"}))
    result = cms("start", "c", f"--config={config}")
    assert result.code == 1
    assert one_error_line(result.err), result.err
    assert "service role Our_EMR_Role" in result.err and "doctor --fix" in result.err
    assert emr.list_clusters()["Clusters"] == []


def test_start_no_check_starts_without_the_checks(cms, emr):
    without("EMR_DefaultRole")
    result = cms("start", "unchecked", "--no-check")
    assert result.code == 0, result.err
    [cluster] = emr.list_clusters()["Clusters"]
    assert cluster["Name"] == "unchecked"
    assert emr.describe_cluster(ClusterId=cluster["Id"])["Cluster"]["ServiceRole"] == \
        "EMR_DefaultRole"


def test_rest_start_without_the_service_role_is_409_and_makes_no_cluster(client, emr):
    without("EMR_DefaultRole")
    answer = client.post("/clusters", json={"name": "doomed"})
    assert answer.status_code == 409, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    detail = answer.json()["detail"]
    assert "EMR_DefaultRole" in detail and "cms emr doctor --fix" in detail
    assert emr.list_clusters()["Clusters"] == []
    unchecked = client.post("/clusters", json={"name": "unchecked", "no_check": True})
    assert unchecked.status_code == 201, unchecked.text
    assert len(emr.list_clusters()["Clusters"]) == 1


def test_start_on_the_emulator_checks_the_release_and_the_roles(cms, no_roles):
    """The emulator answers DescribeReleaseLabel (moto in this process does not): an unknown
    release is refused by that check; a new account's missing roles stop the start."""
    emr = no_roles.client("emr")
    before = {c["Id"] for c in emr.list_clusters()["Clusters"]}
    missing = cms("start", "doomed")
    assert missing.code == 1 and one_error_line(missing.err), missing.err
    assert "EMR_DefaultRole" in missing.err and "cms emr doctor --fix" in missing.err
    make_default_roles(no_roles.client("iam"))
    unknown = cms("start", "doomed", "--release=emr-0.1.0")
    assert unknown.code == 2 and one_error_line(unknown.err), unknown.err
    assert "emr-0.1.0" in unknown.err and "list-release-labels" in unknown.err
    assert {c["Id"] for c in emr.list_clusters()["Clusters"]} == before


def test_start_goes_on_with_a_warning_when_iam_may_not_be_read(cms, emr, monkeypatch):
    """A launch-only user: IAM answers AccessDenied to every read (what AWS answers, given
    through botocore's own before-call event): the role checks are warnings, not errors."""
    from cloudmesh.emr.api import provider

    made = provider.botocore_session
    denied = []

    def deny(model, **_):
        from botocore.awsrequest import AWSResponse

        denied.append(model.name)
        return (AWSResponse("https://iam.amazonaws.com/", 403, {}, None),
                {"Error": {"Code": "AccessDenied", "Message": "not authorized"},
                 "ResponseMetadata": {"HTTPStatusCode": 403}})

    def refusing():
        session = made()
        session.register("before-call.iam", deny)
        return session

    monkeypatch.setattr(provider, "botocore_session", refusing)
    result = cms("start", "launch-only", "--count=1")
    assert result.code == 0, result.err
    assert {"GetRole", "GetInstanceProfile"} <= set(denied)
    warnings = [line for line in result.err.splitlines() if line.startswith("WARNING")]
    assert any("EMR_DefaultRole" in w and "AccessDenied" in w and "not checked" in w
               for w in warnings), result.err
    assert any("EMR_EC2_DefaultRole" in w and "AccessDenied" in w for w in warnings)
    [cluster] = emr.list_clusters()["Clusters"]
    assert cluster["Id"] == result.out.split()[0] and cluster["Name"] == "launch-only"
