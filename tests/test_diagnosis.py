"""Why a step failed: `cms emr diagnose`, `logs` and `cancel`, and the stored diagnosis.

Two kinds of evidence. Log fixtures in EMR's own layout (``tests/fixtures/emr-logs/<case>/``:
``<cluster>/steps/<step>/{stderr,stdout,controller}``, ``<cluster>/containers/<application>/
<container>/{stderr,stdout}``, ``<cluster>/node/<instance>/bootstrap-actions/<n>/...``, each
gzip'ed into S3 as EMR writes it) for what the emulator cannot produce, such as a YARN
memory kill, read through the real `cms emr` command against moto; and failing programs run
on the emulator (tests/test_steps_kinds.py runs the step kinds themselves).
"""

import gzip
import json
from pathlib import Path

import pytest
import yaml

from emr_helpers import backend, lean_moto, one_error_line, run_job_flow, set_cluster, set_step  # noqa: F401

FIXTURES = Path(__file__).parent / "fixtures" / "emr-logs"
CASES = sorted(path.name for path in FIXTURES.iterdir() if (path / "case.yaml").is_file())
LOG_BUCKET = "aws-logs-fixture"
LOG_URI = f"s3://{LOG_BUCKET}/elasticmapreduce/"


@pytest.fixture
def emr(aws):
    import boto3

    return boto3.client("emr", region_name="us-east-1")


@pytest.fixture
def s3(aws):
    import boto3

    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=LOG_BUCKET)
    return client


def load_case(name):
    return yaml.safe_load((FIXTURES / name / "case.yaml").read_text())


def upload_logs(s3, folder, case, cluster_id, step_id):
    """The fixture's log tree, gzip'ed under LogUri/<cluster_id>/ as EMR writes it (with
    the ids moto gave the cluster and step)."""
    root = folder / case["cluster"]
    for path in sorted(root.rglob("*")):
        if path.is_file():
            relative = path.relative_to(root).as_posix()
            if case.get("step"):
                relative = relative.replace(f"steps/{case['step']}/", f"steps/{step_id}/")
            key = f"elasticmapreduce/{cluster_id}/{relative}.gz"
            s3.put_object(Bucket=LOG_BUCKET, Key=key, Body=gzip.compress(path.read_bytes()))


def make_case(emr, s3, name):
    """A moto cluster (and step) in the state the case describes, its logs in S3."""
    case = load_case(name)
    extra = {}
    if case.get("bootstrap"):
        extra["BootstrapActions"] = [
            {"Name": b["Name"], "ScriptBootstrapAction": {"Path": b["Path"], "Args": b["Args"]}}
            for b in case["bootstrap"]]
    cluster_id = run_job_flow(emr, f"case {name}", LogUri=LOG_URI, **extra)
    step_id = None
    if case.get("step"):
        step_id = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[{
            "Name": name, "ActionOnFailure": "CONTINUE",
            "HadoopJarStep": {"Jar": "command-runner.jar",
                              "Args": ["spark-submit", "s3://my-bucket/jobs/job.py"]}}])["StepIds"][0]
        set_step(cluster_id, step_id, state=case["state"])
    if case.get("cluster_state"):
        set_cluster(cluster_id, state=case["cluster_state"], reason=case["reason"]["Message"])
    upload_logs(s3, FIXTURES / name, case, cluster_id, step_id)
    return case, cluster_id, step_id


@pytest.mark.parametrize("name", CASES)
def test_each_fixture_is_diagnosed_to_its_class_with_its_line(emr, s3, cm, cms, name):
    case, cluster_id, step_id = make_case(emr, s3, name)
    expect = case["expect"]
    args = ["diagnose", cluster_id] + ([step_id] if step_id else []) + ["--format=json"]
    result = cms(*args)
    assert result.code == 0, result.err
    found = json.loads(result.out)
    assert len(found) == 1
    diagnosis = found[0]
    assert diagnosis["Class"] == expect["class"], (diagnosis, result.err)
    assert expect["line"] in diagnosis["Line"]
    if "log" in expect:
        assert diagnosis["Log"].endswith(expect["log"] + ".gz")
    if "file" in expect:
        assert diagnosis["Where"]["File"].endswith(expect["file"])
        assert diagnosis["Where"]["Line"] == expect["lineno"]
    assert diagnosis["Hint"]
    if expect["class"] != "unknown":
        assert expect["line"] in "\n".join(diagnosis["Excerpt"]) or diagnosis["Log"] in (
            "step state", "cluster state")
    if "exit_code" in expect:
        action = diagnosis["BootstrapAction"]
        assert action["ExitCode"] == expect["exit_code"]
        assert action["Name"] == expect["action"]
        assert any(expect["stderr"] in line for line in action["Stderr"])
        assert expect["action"] in diagnosis["Hint"] and "exit code 1" in diagnosis["Hint"]
    # recorded, keyed by the step (or the cluster), with the excerpt it came from
    documents = cm.docs("aws", "diagnosis")
    assert [d["_id"] for d in documents] == [f"aws/diagnosis/{step_id or cluster_id}"]
    assert documents[0]["Class"] == expect["class"]
    assert documents[0]["Excerpt"] == diagnosis["Excerpt"]


def test_table_output_says_class_line_where_and_hint(emr, s3, cm, cms):
    _, cluster_id, step_id = make_case(emr, s3, "java-exception")
    result = cms("diagnose", cluster_id, step_id)
    assert result.code == 0, result.err
    assert "Java exception behind a Py4JJavaError" in result.out
    assert 'java.lang.NumberFormatException: For input string: "ten"' in result.out
    assert "/mnt/tmp/spark-2b/parse.py:5" in result.out
    assert "Hint" in result.out


def test_diagnose_a_cluster_covers_every_failed_step(emr, s3, cm, cms):
    _, cluster_id, step_id = make_case(emr, s3, "heap-space")
    ok = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[{
        "Name": "fine", "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["spark-submit", "s3://b/ok.py"]}}])
    set_step(cluster_id, ok["StepIds"][0], state="COMPLETED")
    result = cms("diagnose", cluster_id, "--format=json")
    assert result.code == 0, result.err
    assert [(d["StepId"], d["Class"]) for d in json.loads(result.out)] == [(step_id, "out-of-memory")]
    # list steps --format=json carries the stored diagnosis of the failed step
    steps = json.loads(cms("list", "steps", cluster_id, "--format=json").out)
    by_id = {s["Id"]: s for s in steps}
    assert by_id[step_id]["Diagnosis"]["Class"] == "out-of-memory"
    assert "Diagnosis" not in by_id[ok["StepIds"][0]]


def test_logs_joins_rotated_parts_and_tails(emr, s3, cm, cms):
    _, cluster_id, step_id = make_case(emr, s3, "unknown")
    base = f"elasticmapreduce/{cluster_id}/steps/{step_id}/"
    s3.put_object(Bucket=LOG_BUCKET, Key=base + "stdout.2.gz", Body=gzip.compress(b"two\n"))
    s3.put_object(Bucket=LOG_BUCKET, Key=base + "stdout.1.gz", Body=gzip.compress(b"one\n"))
    s3.put_object(Bucket=LOG_BUCKET, Key=base + "stdout.gz", Body=gzip.compress(b"now\n"))
    result = cms("logs", cluster_id, step_id, "--file=stdout")
    assert result.code == 0, result.err
    assert result.out.split() == ["one", "two", "now"]
    result = cms("logs", cluster_id, step_id, "--tail=1")
    assert result.out.strip() == "load failed: the data warehouse said no"
    result = cms("logs", cluster_id, step_id, "--file=nosuch")
    assert result.code == 2 and one_error_line(result.err)


def test_logs_without_a_log_uri_say_how_to_set_one(emr, cm, cms):
    cluster_id = run_job_flow(emr, "no logs")
    step_id = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[{
        "Name": "x", "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["spark-submit", "s3://b/x.py"]}}])["StepIds"][0]
    result = cms("logs", cluster_id, step_id)
    assert result.code == 1 and one_error_line(result.err)
    assert "LogUri" in result.err and "--loguri" in result.err
    assert "cloudmesh.emr.default.loguri" in result.err


def test_logs_before_emr_copied_them_say_so(emr, s3, cm, cms):
    import datetime

    cluster_id = run_job_flow(emr, "late logs", LogUri=LOG_URI)
    step_id = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[{
        "Name": "x", "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["spark-submit", "s3://b/x.py"]}}])["StepIds"][0]
    step = set_step(cluster_id, step_id, state="FAILED")
    step.end_date_time = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=2)
    result = cms("logs", cluster_id, step_id)
    assert result.code == 1 and one_error_line(result.err)
    assert "every few minutes" in result.err
    step.end_date_time = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)
    result = cms("logs", cluster_id, step_id)
    assert result.code == 1 and "every few minutes" not in result.err


# ---- the same over REST -------------------------------------------------------------------


@pytest.fixture
def client(emr):
    from cloudmesh.emr.api.server import create_app

    with create_app().test_client(base_url="http://127.0.0.1:8080") as test_client:
        yield test_client


def test_rest_serves_logs_and_the_stored_diagnosis_without_reading_s3_again(emr, s3, cm, client):
    _, cluster_id, step_id = make_case(emr, s3, "s3-not-found")
    log = client.get(f"/clusters/{cluster_id}/steps/{step_id}/logs/stderr", params={"tail": 1})
    assert log.status_code == 200, log.text
    assert log.headers["content-type"].startswith("text/plain")
    assert "[PATH_NOT_FOUND]" in log.text and "Traceback" not in log.text
    first = client.get(f"/clusters/{cluster_id}/steps/{step_id}/diagnosis")
    assert first.status_code == 200, first.text
    assert first.json()["Class"] == "s3-not-found" and not first.json().get("Stored")
    # the logs are gone from S3: the answer now comes from the database
    for key in [o["Key"] for o in s3.list_objects_v2(Bucket=LOG_BUCKET)["Contents"]]:
        s3.delete_object(Bucket=LOG_BUCKET, Key=key)
    again = client.get(f"/clusters/{cluster_id}/steps/{step_id}/diagnosis")
    assert again.status_code == 200, again.text
    assert again.json()["Stored"] is True
    assert again.json()["Line"] == first.json()["Line"]
    stored = cm.db["aws-emr-diagnosis"].find_one({"_id": f"aws/diagnosis/{step_id}"})
    assert stored["Class"] == "s3-not-found" and stored["Excerpt"] == first.json()["Excerpt"]
    listed = client.get(f"/clusters/{cluster_id}/steps")
    assert listed.status_code == 200, listed.text
    assert listed.json()[0]["Diagnosis"]["Class"] == "s3-not-found"
    actions = [d for d in cm.docs("aws", "action") if d["Action"] == "logs"]
    assert [a["Target"] for a in actions] == [step_id]
    gone = client.get(f"/clusters/{cluster_id}/steps/{step_id}/logs/stdout")
    assert gone.status_code == 404 and "application/problem+json" in gone.headers["content-type"]


def test_rest_adds_jar_and_streaming_steps(emr, cm, client):
    cluster_id = run_job_flow(emr, "kinds")
    jar = client.post(f"/clusters/{cluster_id}/steps", json={
        "type": "jar", "bucket": "my-bucket", "key": "jobs/app.jar", "class": "com.example.Main",
        "args": ["a"], "on_failure": "cancel"})
    assert jar.status_code == 201, jar.text
    stream = client.post(f"/clusters/{cluster_id}/steps", json={
        "type": "streaming", "mapper": "s3://my-bucket/m.py", "reducer": "s3://my-bucket/r.py",
        "input": ["s3://my-bucket/in/"], "output": "s3://my-bucket/out/"})
    assert stream.status_code == 201, stream.text
    steps = {s["Id"]: s for s in emr.list_steps(ClusterId=cluster_id)["Steps"]}
    assert steps[jar.json()["StepId"]]["Config"]["Args"] == [
        "spark-submit", "--class", "com.example.Main", "s3://my-bucket/jobs/app.jar", "a"]
    assert steps[jar.json()["StepId"]]["ActionOnFailure"] == "CANCEL_AND_WAIT"
    assert steps[jar.json()["StepId"]]["Name"] == "app.jar"
    assert steps[stream.json()["StepId"]]["Config"]["Args"] == [
        "hadoop-streaming", "-files", "s3://my-bucket/m.py,s3://my-bucket/r.py",
        "-mapper", "m.py", "-reducer", "r.py", "-input", "s3://my-bucket/in/",
        "-output", "s3://my-bucket/out/"]
    for body, word in [({"type": "streaming", "mapper": "s3://my-bucket/m.py"}, "reducer"),
                       ({"type": "spark", "bucket": "my-bucket", "key": "a.py", "class": "A"},
                        "class"),
                       ({"type": "jar", "bucket": "my-bucket", "key": "a.py"}, "a.py")]:
        answer = client.post(f"/clusters/{cluster_id}/steps", json=body)
        assert answer.status_code == 400 and word in answer.json()["detail"], answer.text


def test_wait_on_an_interrupted_step_exits_1_with_its_diagnosis(emr, s3, cm, cms):
    _, cluster_id, step_id = make_case(emr, s3, "interrupted")
    result = cms("wait", cluster_id, step_id, "--delay=0.2", "--timeout=5")
    assert result.code == 1
    assert result.out.split() == [step_id, "INTERRUPTED"]
    assert "Cause: Step interrupted [interrupted]" in result.err
    assert cm.db["aws-emr-diagnosis"].find_one({"_id": f"aws/diagnosis/{step_id}"})["Class"] == \
        "interrupted"


def test_run_and_stream_options_reach_the_step_and_bad_ones_are_exit_2(emr, cm, cms):
    cluster_id = run_job_flow(emr, "options")
    result = cms("run", cluster_id, "my-bucket", "jobs/app.jar", "in", "--class=com.example.Main",
                 "--name=nightly", "--on-failure=terminate")
    assert result.code == 0, result.err
    step = emr.describe_step(ClusterId=cluster_id, StepId=result.out.strip())["Step"]
    assert step["Name"] == "nightly" and step["ActionOnFailure"] == "TERMINATE_CLUSTER"
    assert step["Config"]["Args"] == ["spark-submit", "--class", "com.example.Main",
                                      "s3://my-bucket/jobs/app.jar", "in"]
    plain = cms("run", cluster_id, "my-bucket", "jobs/wordcount.py")
    step = emr.describe_step(ClusterId=cluster_id, StepId=plain.out.strip())["Step"]
    assert step["Name"] == "wordcount.py" and step["ActionOnFailure"] == "CONTINUE"
    stream = cms("stream", cluster_id, "--mapper=s3://my-bucket/m.py", "--reducer=s3://my-bucket/r.py",
                 "--input=s3://my-bucket/a/", "--input=s3://my-bucket/b/",
                 "--output=s3://my-bucket/out/", "--on-failure=cancel")
    step = emr.describe_step(ClusterId=cluster_id, StepId=stream.out.strip())["Step"]
    assert step["ActionOnFailure"] == "CANCEL_AND_WAIT"
    assert step["Config"]["Args"].count("-input") == 2
    before = len(emr.list_steps(ClusterId=cluster_id)["Steps"])
    for args, word in [
        (["run", cluster_id, "my-bucket", "jobs/app.py", "--class=com.x.Main"], "--class"),
        (["run", cluster_id, "my-bucket", "jobs/app.jar", "--class=not a class"], "--class"),
        (["run", cluster_id, "my-bucket", "jobs/app.py", "--on-failure=explode"], "explode"),
        (["stream", cluster_id, "--mapper=m.py", "--reducer=s3://my-bucket/r.py",
          "--input=s3://my-bucket/a/", "--output=s3://my-bucket/o/"], "--mapper"),
        (["logs", cluster_id, "s-ABC", "--tail=many"], "--tail"),
        (["diagnose", cluster_id, "x-1"], "x-1"),
    ]:
        result = cms(*args)
        assert result.code == 2 and one_error_line(result.err) and word in result.err, (args, result)
    assert len(emr.list_steps(ClusterId=cluster_id)["Steps"]) == before


@pytest.mark.parametrize("line, kind", [
    ("cluster state: TERMINATED_WITH_ERRORS STEP_FAILURE: Shut down as step failed",
     "cluster-error"),
    ("cluster state: TERMINATED_WITH_ERRORS BOOTSTRAP_FAILURE: On the master instance "
     "(i-0123456789abcdef0), bootstrap action 1 returned a non-zero return code",
     "bootstrap-failure"),
    ("step state: CANCELLED Cancelled by user request", "cancelled"),
])
def test_states_alone_are_diagnosed_by_the_table(line, kind):
    from cloudmesh.emr.api import diagnosis

    found = diagnosis.diagnose([diagnosis.Log("status", "state", line)])
    assert found["Class"] == kind
    assert "{" not in found["Hint"]
