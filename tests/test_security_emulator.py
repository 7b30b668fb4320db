"""Only the user drives the local emulator: credentials, Host, CORS and steps kept in.

Against the session's real daemon (``emulator``): what a page in the user's browser
or another program without the daemon's credentials sends is refused and creates
nothing (checked through a correctly signed boto3 client); the user's own clients
(the AWS CLI, a boto3 script, ``cms emr --cloud=local``) work with what ``cms emr
local env`` prints; a step cannot reach files outside its cluster. The AWS CLI comes
from ``make awscli`` (``.venv-awscli``, its own venv: awscli v1 pins its botocore).
"""

import http.client
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError

from cloudmesh.emr.local import control, credentials, guard

ROOT = Path(__file__).resolve().parent.parent
AWS_CLI = ROOT / ".venv-awscli" / "bin" / "aws"
ATTACKER = "http://attacker.example"


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def run_job_flow_body(name):
    return json.dumps({"Name": name, "ReleaseLabel": "emr-7.12.0",
                       "Instances": {"MasterInstanceType": "m5.xlarge", "InstanceCount": 1,
                                     "KeepJobFlowAliveWhenNoSteps": True},
                       "JobFlowRole": "EMR_EC2_DefaultRole", "ServiceRole": "EMR_DefaultRole"})


def raw(emulator, method, path, body=b"", headers=None):
    """One HTTP request as a browser or curl would send it: (status, headers, body)."""
    port = urlsplit(emulator.endpoint).port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def signed(emulator, method, url, body=b"", headers=None, service="elasticmapreduce", secret=None):
    """Headers of a request signed (SigV4) for ``url`` with the daemon's key id."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    pair = emulator.credentials
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    SigV4Auth(Credentials(pair.access_key_id, secret or pair.secret_access_key),
              service, "us-east-1").add_auth(request)
    return dict(request.headers.items())


def no_cors(headers):
    return not [name for name in headers if name.lower().startswith("access-control-")]


def cluster_names(emulator):
    emr = emulator.client("emr")
    return {c["Name"] for page in emr.get_paginator("list_clusters").paginate()
            for c in page["Clusters"]}


def bucket_names(emulator):
    return {b["Name"] for b in emulator.client("s3").list_buckets().get("Buckets", [])}


EMR_TARGET = {"X-Amz-Target": "ElasticMapReduce.RunJobFlow",
              "Content-Type": "application/x-amz-json-1.1"}


# ---- what the daemon accepts ---------------------------------------------------------


def test_the_credentials_are_the_users_own(emulator):
    file = emulator.state_dir / credentials.FILE
    assert file.stat().st_mode & 0o777 == 0o600
    pair = emulator.credentials
    assert credentials.ACCESS_KEY_ID.fullmatch(pair.access_key_id)
    # the secret is in no log line of the daemon
    assert pair.secret_access_key not in emulator.log.read_text()


def test_unsigned_requests_are_refused_and_create_nothing(emulator):
    name = unique("unsigned")
    status, headers, body = raw(emulator, "POST", "/", run_job_flow_body(name).encode(),
                                {**EMR_TARGET, "Origin": ATTACKER})
    assert status == 403 and json.loads(body)["__type"] == "InvalidClientTokenId"
    assert no_cors(headers)
    status, headers, body = raw(emulator, "PUT", f"/{name}", headers={"Origin": ATTACKER})
    assert status == 403 and b"<Code>AccessDenied</Code>" in body and no_cors(headers)
    # a token that is not SigV4 is no signature either
    status, _, body = raw(emulator, "POST", "/", run_job_flow_body(name).encode(),
                          {**EMR_TARGET, "Authorization": "Bearer something"})
    assert status == 403 and json.loads(body)["__type"] == "InvalidClientTokenId"
    assert name not in cluster_names(emulator) and name not in bucket_names(emulator)


def test_requests_signed_with_other_keys_are_refused_with_awss_errors(emulator):
    import boto3

    name = unique("wrong-keys")
    pair = emulator.credentials

    def client(service, key, secret):
        return boto3.session.Session().client(
            service, endpoint_url=emulator.endpoint, region_name="us-east-1",
            aws_access_key_id=key, aws_secret_access_key=secret)

    other = credentials.generate()
    wrong_secret = credentials.generate().secret_access_key
    expected = [  # (service, key, secret, what the call does, the error code AWS gives)
        ("emr", other.access_key_id, other.secret_access_key, "emr", "InvalidClientTokenId"),
        ("emr", pair.access_key_id, wrong_secret, "emr", "SignatureDoesNotMatch"),
        ("s3", other.access_key_id, other.secret_access_key, "s3", "InvalidAccessKeyId"),
        ("s3", pair.access_key_id, wrong_secret, "s3", "SignatureDoesNotMatch"),
        ("ec2", pair.access_key_id, wrong_secret, "ec2", "AuthFailure"),
        ("cloudwatch", other.access_key_id, other.secret_access_key, "cw",
         "InvalidClientTokenId"),
    ]
    calls = {
        "emr": lambda c: c.run_job_flow(**json.loads(run_job_flow_body(name))),
        "s3": lambda c: c.create_bucket(Bucket=name),
        "ec2": lambda c: c.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
                                         TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                             {"Key": "Name", "Value": name}]}]),
        "cw": lambda c: c.put_metric_data(Namespace=name,
                                          MetricData=[{"MetricName": "m", "Value": 1.0}]),
    }
    for service, key, secret, call, code in expected:
        with pytest.raises(ClientError) as refused:
            calls[call](client(service, key, secret))
        assert refused.value.response["Error"]["Code"] == code, (service, key == pair.access_key_id)
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] in (401, 403)
    # read back with the right keys: none of it happened
    assert name not in cluster_names(emulator) and name not in bucket_names(emulator)
    ec2 = emulator.client("ec2")
    tagged = ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": [name]}])
    assert tagged["Reservations"] == []
    metrics = emulator.client("cloudwatch").list_metrics(Namespace=name)["Metrics"]
    assert metrics == []


def test_a_cors_preflight_is_refused_and_no_answer_carries_cors_headers(emulator):
    status, headers, _ = raw(emulator, "OPTIONS", "/", headers={
        "Origin": ATTACKER, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-amz-target"})
    assert status == 403 and no_cors(headers)
    # even a correctly signed request from a page gets no CORS permission back
    url = f"{emulator.endpoint}/"
    body = b"{}"
    headers = signed(emulator, "POST", url, body, {
        "X-Amz-Target": "ElasticMapReduce.ListClusters",
        "Content-Type": "application/x-amz-json-1.1"})
    status, answer, _ = raw(emulator, "POST", "/", body, {**headers, "Origin": ATTACKER})
    assert status == 200 and no_cors(answer)


def test_a_foreign_host_is_refused_even_when_signed(emulator):
    """DNS rebinding: the browser names the attacker's host; nothing is done."""
    name = unique("rebinding")
    port = urlsplit(emulator.endpoint).port
    body = run_job_flow_body(name).encode()
    for host in (f"attacker.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}"):
        headers = signed(emulator, "POST", f"http://{host}/", body, EMR_TARGET)
        status, answer, text = raw(emulator, "POST", "/", body, {**headers, "Host": host})
        assert status == 403 and no_cors(answer), host
        assert json.loads(text)["__type"] == "AccessDeniedException"
    assert name not in cluster_names(emulator)
    # localhost:PORT is the emulator too
    headers = signed(emulator, "POST", f"http://localhost:{port}/", b"{}", {
        "X-Amz-Target": "ElasticMapReduce.ListClusters",
        "Content-Type": "application/x-amz-json-1.1"})
    assert raw(emulator, "POST", "/", b"{}", {**headers, "Host": f"localhost:{port}"})[0] == 200


def test_presigned_urls_verify_and_unsigned_or_altered_ones_do_not(emulator):
    s3 = emulator.client("s3")
    bucket = unique("presigned")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a b+c.txt", Body=b"hello")
    v4 = emulator.client("s3", signature_version="s3v4")
    url = urlsplit(v4.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "a b+c.txt"}, ExpiresIn=300))
    path = f"{url.path}?{url.query}"
    status, headers, body = raw(emulator, "GET", path)
    assert (status, body) == (200, b"hello") and no_cors(headers)
    assert raw(emulator, "GET", url.path)[0] == 403  # the same object, unsigned
    altered = path.replace("X-Amz-Expires=300", "X-Amz-Expires=301")
    status, _, body = raw(emulator, "GET", altered)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    # a presigned PUT writes only what it was signed for
    put = urlsplit(v4.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "up.txt"}, ExpiresIn=300))
    assert raw(emulator, "PUT", f"{put.path}?{put.query}", b"uploaded")[0] == 200
    other = f"{put.path.replace('up.txt', 'other.txt')}?{put.query}"
    assert raw(emulator, "PUT", other, b"x")[0] == 403
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == ["a b+c.txt", "up.txt"]
    # Signature Version 2 presigned URLs (boto3's default here) verify as well
    v2 = urlsplit(s3.generate_presigned_url("get_object",
                                            Params={"Bucket": bucket, "Key": "a b+c.txt"}))
    assert "AWSAccessKeyId=" in v2.query
    assert raw(emulator, "GET", f"{v2.path}?{v2.query}")[:3:2] == (200, b"hello")
    forged = f"{v2.path.replace('a%20b', 'a%20c')}?{v2.query}"
    status, _, body = raw(emulator, "GET", forged)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    # a SigV2 Authorization header is not accepted, and the answer says why
    status, _, body = raw(emulator, "GET", f"/{bucket}", headers={
        "Authorization": f"AWS {emulator.credentials.access_key_id}:c2lnbmF0dXJl"})
    assert status == 400 and b"<Code>InvalidRequest</Code>" in body and b"AWS4" in body


def test_expired_presigned_urls_and_old_signatures_are_refused():
    """The guard's clock, moved: no daemon needed to wait an hour."""
    import boto3
    from botocore.config import Config
    from werkzeug.test import EnvironBuilder

    pair = credentials.generate()
    seen = []

    def app(environ, start_response):
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Access-Control-Allow-Origin", "*")])
        return [b"ok"]

    s3 = boto3.session.Session().client(
        "s3", endpoint_url="http://127.0.0.1:5999", region_name="us-east-1",
        config=Config(signature_version="s3v4"),
        **pair.boto())
    url = urlsplit(s3.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"},
                                             ExpiresIn=60))

    def call(clock):
        environ = EnvironBuilder(path=url.path, query_string=url.query,
                                 base_url="http://127.0.0.1:5999").get_environ()
        environ["SERVER_PORT"] = "5999"
        status = []
        body = b"".join(guard.Guard(app, pair, clock=clock)(
            environ, lambda s, headers, exc=None: status.append((s, headers))))
        return status[0][0], dict(status[0][1]), body

    now = datetime.now(timezone.utc).timestamp()
    status, headers, _ = call(lambda: now)
    assert status.startswith("200") and no_cors(headers)  # moto's CORS headers are removed
    status, _, body = call(lambda: now + 120)
    assert status.startswith("403") and b"Request has expired" in body
    # Signature Version 2 presigned URLs expire too
    v2 = boto3.session.Session().client("s3", endpoint_url="http://127.0.0.1:5999",
                                        region_name="us-east-1", **pair.boto())
    url = urlsplit(v2.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"},
                                             ExpiresIn=60))
    assert "Expires=" in url.query
    assert call(lambda: now)[0].startswith("200")
    status, _, body = call(lambda: now + 120)
    assert status.startswith("403") and b"Request has expired" in body
    assert seen == ["/b/k", "/b/k"]


# A restarted daemon keeps its valid credentials (and never logs the secret): checked by the
# restart test of tests/test_emulator_fidelity.py, which restarts a daemon anyway. A file
# others could read is replaced: tests/test_config.py, credentials.ensure.


def test_moto_api_needs_the_credentials(emulator):
    for path in ("/moto-api/data.json", "/moto-api/config"):
        status, _, _ = raw(emulator, "GET", path)
        assert status == 403, path
    # signed, moto answers (its config: data.json would dump every backend of every
    # region, seconds of work on a session's emulator)
    url = f"{emulator.endpoint}/moto-api/config"
    status, _, body = raw(emulator, "GET", "/moto-api/config",
                          headers=signed(emulator, "GET", url, service="s3"))
    assert status == 201 and "batch" in json.loads(body)  # moto answers its config so
    # what a test harness calls: control.moto_api signs for it
    status, body = control.moto_api("/moto-api/config", method="GET",
                                    state=emulator.state_dir)
    assert status == 201 and "batch" in json.loads(body)  # moto answers its config so


# ---- the user's own clients ----------------------------------------------------------


@pytest.fixture
def user(cm, emulator):
    """A user's config folder whose emulator is the session's, and no cloud profile.

    The folder's emr/local is the session daemon's state folder, so ``cms emr local
    env`` and ``--cloud=local`` find it as they find one that ``cms emr local start``
    started; cloudmesh.yaml names the test database only.
    """
    (cm.folder / "emr").mkdir(exist_ok=True)
    (cm.folder / "emr" / "local").symlink_to(emulator.state_dir)
    return cm


def clean_env(home):
    """The environment of a user with no AWS configuration at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(home), AWS_CONFIG_FILE=str(home / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(home / "none"))
    return env


def aws_cli():
    if AWS_CLI.exists():
        return AWS_CLI
    reason = f"the AWS CLI is not installed at {AWS_CLI}: run 'make awscli'"
    if os.environ.get("MAKELEVEL"):
        pytest.fail(reason)  # make test installs it first: missing is a defect
    pytest.skip(reason)


def test_cms_local_env_prints_what_other_clients_need(user, emulator, cms_process, tmp_path):
    done = cms_process("emr", "local", "env")
    assert done.code == 0, done.err
    pair = emulator.credentials
    assert done.out.splitlines() == [
        f"export AWS_ENDPOINT_URL={emulator.endpoint}",
        f"export AWS_ACCESS_KEY_ID={pair.access_key_id}",
        f"export AWS_SECRET_ACCESS_KEY={pair.secret_access_key}",
        "export AWS_DEFAULT_REGION=us-east-1",
    ]
    as_json = json.loads(cms_process("emr", "local", "env", "--format=json").out)
    assert as_json == {"AWS_ENDPOINT_URL": emulator.endpoint,
                       "AWS_ACCESS_KEY_ID": pair.access_key_id,
                       "AWS_SECRET_ACCESS_KEY": pair.secret_access_key,
                       "AWS_DEFAULT_REGION": "us-east-1"}
    # the secret is printed here only: not by status, not in the database
    status = cms_process("emr", "local", "status", "--format=json")
    assert status.code == 0 and pair.secret_access_key not in status.out + status.err
    listed = cms_process("emr", "list", "clusters", "--cloud=local", "--format=json")
    assert listed.code == 0, listed.err
    assert pair.secret_access_key not in listed.out + listed.err
    for name in user.db.list_collection_names():
        for document in user.db[name].find():
            assert pair.secret_access_key not in json.dumps(document, default=str)
    # no emulator: one clear line, exit 1
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = cms_process("emr", "local", "env", env={"CLOUDMESH_CONFIG_DIR": str(empty)})
    assert missing.code == 1 and missing.out == ""
    assert missing.err.strip() == (
        "ERROR: the local emulator is not running: start it with 'cms emr local start'")


def test_eval_local_env_then_the_aws_cli_and_a_boto3_script_work(user, emulator, tmp_path):
    aws = aws_cli()
    name = unique("from-cli")
    home = tmp_path / "home"
    home.mkdir()
    script = tmp_path / "mine.py"
    script.write_text(
        "import boto3, sys\n"
        "s3 = boto3.client('s3')\n"
        "s3.create_bucket(Bucket=sys.argv[1])\n"
        "print([c['Name'] for c in boto3.client('emr').list_clusters()['Clusters']])\n")
    cms = [sys.executable, "-m", "cloudmesh.emr.shell"]
    line = " ".join(cms)
    shell = (
        f'eval "$({line} emr local env)" && '
        f'"{aws}" emr create-cluster --name {name} --release-label emr-7.12.0 '
        "--instance-type m5.xlarge --instance-count 1 --use-default-roles --output json && "
        f'"{aws}" emr list-clusters --output json && '
        f'"{sys.executable}" "{script}" {name}'
    )
    env = {**clean_env(home), "CLOUDMESH_CONFIG_DIR": str(user.folder),
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, env=env,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout[: done.stdout.index("}") + 1])["ClusterId"]
    assert name in done.stdout.splitlines()[-1]  # the boto3 script sees the CLI's cluster
    # read back with our own signed client
    emr = emulator.client("emr")
    assert emr.describe_cluster(ClusterId=created)["Cluster"]["Name"] == name
    assert name in bucket_names(emulator)
    emr.terminate_job_flows(JobFlowIds=[created])
    # the same CLI without the credentials is refused
    refused = subprocess.run(
        [str(aws), "emr", "list-clusters", "--endpoint-url", emulator.endpoint,
         "--region", "us-east-1"],
        capture_output=True, text=True, timeout=120,
        env={**clean_env(home), "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
             "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"})
    assert refused.returncode != 0 and "InvalidClientTokenId" in refused.stderr


def test_cloud_local_needs_no_configuration(user, emulator, cms_process):
    name = unique("no-config")
    started = cms_process("emr", "start", name, "--cloud=local", "--count=1")
    assert started.code == 0, started.err
    cluster = next(c for c in emulator.client("emr").list_clusters()["Clusters"]
                   if c["Name"] == name)
    stopped = cms_process("emr", "stop", cluster["Id"], "--cloud=local")
    assert stopped.code == 0, stopped.err


# ---- steps stay inside their cluster ---------------------------------------------------


def step(name, *args):
    return {"Name": name, "ActionOnFailure": "CONTINUE",
            "HadoopJarStep": {"Jar": "command-runner.jar", "Args": list(args)}}


@pytest.fixture(scope="module")
def cluster(emulator):
    emr = emulator.client("emr")
    cluster_id = emr.run_job_flow(
        Name=unique("confined"), ReleaseLabel="emr-7.12.0",
        Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1,
                   "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole")["JobFlowId"]
    emulator.wait_cluster(cluster_id, ["WAITING"])
    yield cluster_id
    emr.terminate_job_flows(JobFlowIds=[cluster_id])


def run_steps(emulator, cluster_id, *steps):
    emr = emulator.client("emr")
    ids = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=list(steps))["StepIds"]
    return [emulator.wait_step(cluster_id, step_id, ["COMPLETED", "FAILED", "CANCELLED"],
                               timeout=120) for step_id in ids]


def test_a_step_naming_a_local_path_outside_the_cluster_fails_and_runs_nothing(
        emulator, cluster, tmp_path):
    marker = tmp_path / "ran"
    program = tmp_path / "outside.py"
    program.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    named = [str(program), f"file://{program}", "~/outside.py", "../../outside.py",
             "/etc/passwd", f"/home/hadoop/../../{program}"]
    steps = [step(f"outside-{n}", "spark-submit", path) for n, path in enumerate(named)]
    steps.append(step("py-files", "spark-submit", "--py-files", str(program),
                      "/home/hadoop/any.py"))
    done = run_steps(emulator, cluster, *steps)
    for path, described in zip(named + [str(program)], done):
        assert described["Status"]["State"] == "FAILED", path
        details = described["Status"]["FailureDetails"]
        assert details["Reason"] == "File not found"
        assert f"{path} does not exist on the cluster" in details["Message"]
    # bash FILE: the file must be on the cluster too (bash -c TEXT is the user's own code)
    script = tmp_path / "outside.sh"
    script.write_text(f"echo ran > {marker}\n")
    for name in (str(script), "../../" + str(script), "~/outside.sh"):
        [described] = run_steps(emulator, cluster, step("bash-outside", "bash", name))
        assert described["Status"]["State"] == "FAILED", name
        details = described["Status"]["FailureDetails"]
        assert details["Reason"] == "File not found"
        assert "does not exist on the cluster" in details["Message"]
        done.append(described)
    assert not marker.exists()
    controllers = "".join(  # the step's controller log says what it started: nothing
        (emulator.master(cluster) / "mnt/var/log/hadoop/steps" / d["Id"] / "controller")
        .read_text() for d in done)
    assert "does not exist on the cluster" in controllers and "running [" not in controllers


def test_a_step_writes_nothing_outside_its_cluster(emulator, cluster, tmp_path):
    s3 = emulator.client("s3")
    bucket = unique("confine")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="data.txt", Body=b"payload")
    s3.put_object(Bucket=bucket, Key="deep/../../../escape.txt", Body=b"payload")
    master = emulator.master(cluster)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("the user's secret")
    home = master / "home/hadoop"
    home.mkdir(parents=True, exist_ok=True)
    # what an earlier step (user code) could have left: links out of the cluster
    (home / "out").symlink_to(outside, target_is_directory=True)
    (home / "leak.txt").symlink_to(secret)
    (home / "mine").mkdir(exist_ok=True)
    (home / "mine" / "kept.txt").write_text("kept")
    (home / "mine" / "leak.txt").symlink_to(secret)

    done = run_steps(
        emulator, cluster,
        step("dotdot", "aws", "s3", "cp", f"s3://{bucket}/data.txt", "../../x"),
        step("dotdot-home", "aws", "s3", "cp", f"s3://{bucket}/data.txt",
             "/home/hadoop/../../../../y"),
        step("key", "aws", "s3", "cp", "--recursive", f"s3://{bucket}/deep/", "/home/hadoop/k/"),
        step("through-link", "aws", "s3", "cp", f"s3://{bucket}/data.txt", "/home/hadoop/out/x"),
        step("upload-link", "aws", "s3", "cp", "/home/hadoop/leak.txt", f"s3://{bucket}/leak"),
        step("upload-folder", "aws", "s3", "cp", "--recursive", "/home/hadoop/mine/",
             f"s3://{bucket}/mine/"),
    )
    states = {d["Name"]: d["Status"]["State"] for d in done}
    assert states == {"dotdot": "COMPLETED", "dotdot-home": "COMPLETED", "key": "COMPLETED",
                      "through-link": "FAILED", "upload-link": "FAILED",
                      "upload-folder": "COMPLETED"}
    by_name = {d["Name"]: d for d in done}
    assert "leads out of the cluster" in by_name["through-link"]["Status"]["FailureDetails"][
        "Message"]
    assert "does not exist" in by_name["upload-link"]["Status"]["FailureDetails"]["Message"]
    # ../../x is /x of the cluster: in its folder, as on EMR
    assert (master / "x").read_bytes() == b"payload" and (master / "y").exists()
    assert list(outside.iterdir()) == []
    assert secret.read_text() == "the user's secret"
    # nothing of it lies anywhere else in the emulator's state folder or next to it
    strays = [p for p in emulator.state_dir.parent.rglob("*")
              if p.name in ("x", "y", "escape.txt") and master not in p.parents]
    assert strays == []
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert "leak" not in keys and "mine/leak.txt" not in keys and "mine/kept.txt" in keys


@pytest.mark.spark
def test_a_spark_step_runs_inside_its_cluster_and_its_links_out_are_not_uploaded(
        emulator, cluster, tmp_path):
    """One small real spark-submit: HOME, TMPDIR and the working folder are the
    cluster's; a link the program writes into its S3 output is not followed."""
    s3 = emulator.client("s3")
    bucket = unique("spark-confine")
    s3.create_bucket(Bucket=bucket)
    secret = tmp_path / "secret.txt"
    secret.write_text("the user's secret")
    s3.put_object(Bucket=bucket, Key="job.py", Body=(
        "import json, os, sys\n"
        "out = sys.argv[1]\n"
        "os.makedirs(out, exist_ok=True)\n"
        "open(os.path.join(out, 'where.json'), 'w').write(json.dumps({\n"
        "    'cwd': os.getcwd(), 'home': os.environ['HOME'], 'tmp': os.environ['TMPDIR']}))\n"
        f"os.symlink({str(secret)!r}, os.path.join(out, 'leak.txt'))\n").encode())
    [done] = run_steps(emulator, cluster, step("spark", "spark-submit", f"s3://{bucket}/job.py",
                                                f"s3://{bucket}/out/"))
    assert done["Status"]["State"] == "COMPLETED", done["Status"]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "out/where.json" in keys and "out/leak.txt" not in keys
    where = json.loads(s3.get_object(Bucket=bucket, Key="out/where.json")["Body"].read())
    master = str(emulator.master(cluster).resolve())
    for folder in where.values():
        assert str(Path(folder).resolve()).startswith(master + "/"), where
    assert where["home"].endswith("/home/hadoop")


def test_steps_may_use_what_emr_ships(tmp_path):
    """/usr/lib/spark/... stands for the installed pyspark, read only; nothing else."""
    from cloudmesh.emr.local import commands, steps

    shipped = steps.shipped_folders()
    if "/usr/lib/spark" not in shipped:
        pytest.skip("pyspark is not installed")
    pi = "/usr/lib/spark/examples/src/main/python/pi.py"
    plan = commands.spark_plan([pi, "10"], tmp_path / "s3", tmp_path / "master", shipped)
    [(name, local)] = plan.needed
    assert name == pi and local.is_file() and plan.mapped == []
    with pytest.raises(commands.StepFailure, match="/usr/lib/hadoop/x.py does not exist on"):
        commands.spark_plan(["/usr/lib/hadoop/x.py"], tmp_path / "s3", tmp_path / "master",
                            shipped)


def test_the_emulators_folder_is_its_owners_alone(emulator):
    """S3 objects, credentials and clusters live under the state folder: nobody else reads it."""
    import stat as modes

    assert modes.S_IMODE(emulator.state_dir.stat().st_mode) == 0o700
