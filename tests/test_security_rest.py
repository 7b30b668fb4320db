"""Only the user drives the REST service, and no secret leaves it (issue 8).

The service answers only requests that name it in their Host header (a DNS-rebinding
page names its own host), refuses requests from pages of other sites (Origin) unless they
carry the token, takes POST bodies only as application/json (what a browser cannot send
cross-site without a preflight, which the service never grants: it sends no CORS header),
and its served spec says what it requires. Secrets: userinfo in an endpoint URL is
refused, URLs are shown without it, and secret configuration properties are masked in
every output and document.

What was (not) created is read back with boto3 against moto, documents with pymongo.
"""

import json

import pytest

BASE = "http://127.0.0.1:8080"  # create_app's default address: the Host it answers
TOKEN = "sec-token-4b1d"
PROBLEM = "application/problem+json"


def problem_of(response, status):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["detail"]
    return body


def no_cors(response):
    return not any(name.lower().startswith("access-control-") for name in response.headers)


@pytest.fixture
def emr(aws):
    import boto3

    return boto3.client("emr", region_name="us-east-1")


@pytest.fixture
def s3(aws):
    import boto3

    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket="data-bucket")
    return client


def service(**options):
    from cloudmesh.emr.api.server import create_app

    return create_app(**options)


@pytest.fixture
def client(emr):
    with service().test_client(base_url=BASE) as test_client:
        yield test_client


def clusters(emr):
    return emr.list_clusters()["Clusters"]


# ---- Host: DNS rebinding --------------------------------------------------------------------


@pytest.mark.parametrize("host", [
    "attacker.example:8080", "attacker.example", "127.0.0.1", "127.0.0.1:8081", "localhost:9",
    "127.0.0.1.nip.io:8080", "[::1]:8080", "127.0.0.1:8080@attacker.example", "",
])
def test_a_foreign_host_is_400_and_nothing_is_done(client, emr, host):
    headers = {"Host": host, "Content-Type": "application/json"}
    answer = client.post("/clusters", content=json.dumps({"name": "rebound", "count": 1}),
                         headers=headers)
    problem = problem_of(answer, 400)
    assert problem["type"].endswith(":bad-request") and "Host" in problem["detail"]
    assert "cloudmesh.emr.server.hosts" in problem["detail"]
    assert no_cors(answer)
    assert clusters(emr) == []
    for path in ("/clusters", "/openapi.json", "/ui/"):  # the docs too
        problem_of(client.get(path, headers={"Host": host}), 400)


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080"])
def test_the_own_address_and_localhost_are_answered(client, emr, host):
    answer = client.post("/clusters", json={"name": "mine", "count": 1}, headers={"Host": host})
    assert answer.status_code == 201, answer.text
    assert [c["Name"] for c in clusters(emr)] == ["mine"]


def test_hosts_of_cloudmesh_yaml_are_answered(cm, emr):
    cm.write(emr={"server": {"hosts": ["emr.example.org", "proxy.example.org:8443"]}})
    with service().test_client(base_url=BASE) as client:
        for host in ("emr.example.org", "emr.example.org:443", "proxy.example.org:8443"):
            assert client.get("/clusters", headers={"Host": host}).status_code == 200, host
        for host in ("proxy.example.org", "other.example.org:8080"):
            problem_of(client.get("/clusters", headers={"Host": host}), 400)


def test_a_bad_hosts_setting_is_refused(cm, emr):
    from cloudmesh.emr.errors import UsageError

    cm.write(emr={"server": {"hosts": ["http://emr.example.org/"]}})
    with pytest.raises(UsageError, match="cloudmesh.emr.server.hosts"):
        service()


def test_bound_to_every_address_any_ip_of_the_machine_is_its_own(emr):
    with service(host="0.0.0.0", port=8090, token=TOKEN).test_client(
            base_url="http://192.0.2.10:8090") as client:
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/clusters", headers=good).status_code == 200
        problem_of(client.get("/clusters", headers={**good, "Host": "rebind.example:8090"}), 400)


# ---- Origin: pages of other sites ------------------------------------------------------------


@pytest.mark.parametrize("origin", [
    "https://attacker.example", "http://attacker.example:8080", "null", "http://127.0.0.1:9999",
    "file://", "http://localhost:8080.attacker.example",
])
def test_a_foreign_origin_is_403_and_nothing_is_done(client, emr, origin):
    answer = client.post("/clusters", json={"name": "drive-by", "count": 1},
                         headers={"Origin": origin})
    problem = problem_of(answer, 403)
    assert problem["type"].endswith(":forbidden") and "Origin" in problem["detail"]
    assert no_cors(answer)
    assert clusters(emr) == []


def test_the_own_origin_is_answered(client, emr):
    for origin in ("http://127.0.0.1:8080", "http://localhost:8080"):
        answer = client.post("/clusters", json={"name": "ui", "count": 1},
                             headers={"Origin": origin})
        assert answer.status_code == 201, answer.text
        assert no_cors(answer)
    assert len(clusters(emr)) == 2


def test_a_foreign_origin_with_the_token_is_answered_and_without_it_refused(emr):
    with service(token=TOKEN).test_client(base_url=BASE) as client:
        origin = {"Origin": "https://dashboard.example"}
        problem_of(client.post("/clusters", json={"name": "x"}, headers=origin), 403)
        wrong = {**origin, "Authorization": "Bearer not-the-token"}
        problem_of(client.post("/clusters", json={"name": "x"}, headers=wrong), 403)
        assert clusters(emr) == []
        good = {**origin, "Authorization": f"Bearer {TOKEN}"}
        answer = client.post("/clusters", json={"name": "with-token", "count": 1}, headers=good)
        assert answer.status_code == 201, answer.text
        assert no_cors(answer)
    assert [c["Name"] for c in clusters(emr)] == ["with-token"]


# ---- JSON only -------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
])
def test_a_post_that_is_not_json_is_415_and_nothing_is_done(client, emr, s3, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"name": "simple", "count": 1}).encode()
    answer = client.post("/clusters", content=body, headers=headers)
    problem = problem_of(answer, 415)
    assert problem["type"].endswith(":unsupported-media-type")
    assert "application/json" in problem["detail"]
    assert clusters(emr) == []
    cluster_id = emr.run_job_flow(
        Name="target", Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1,
                                  "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole")["JobFlowId"]
    step = json.dumps({"type": "spark", "bucket": "data-bucket", "key": "a.py"}).encode()
    problem_of(client.post(f"/clusters/{cluster_id}/steps", content=step, headers=headers), 415)
    assert emr.list_steps(ClusterId=cluster_id)["Steps"] == []


def test_an_upload_without_content_type_is_still_raw_bytes(client, s3):
    answer = client.put("/buckets/data-bucket/objects/raw.txt", content=b"raw bytes")
    assert answer.status_code == 201, answer.text
    assert s3.get_object(Bucket="data-bucket", Key="raw.txt")["Body"].read() == b"raw bytes"


# ---- no CORS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/clusters", "/clusters/j-ABC/steps",
                                  "/buckets/data-bucket/objects/a.py", "/openapi.json", "/ui/"])
def test_no_answer_carries_a_cors_header_not_even_a_preflight(client, s3, path):
    for origin in ("https://attacker.example", "http://127.0.0.1:8080"):
        preflight = client.options(path, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization"})
        assert preflight.status_code >= 400 and no_cors(preflight), preflight.headers
    for answer in (client.get(path), client.get(path, headers={"Origin": "http://127.0.0.1:8080"}),
                   client.head(path)):
        assert no_cors(answer), answer.headers


# ---- the served spec -------------------------------------------------------------------------


def operations(spec):
    return [op for item in spec["paths"].values() for method, op in item.items()
            if method != "parameters"]


def test_the_served_spec_has_security_only_when_a_token_is_required(client, emr):
    spec = client.get("/openapi.json").json()
    assert "security" not in spec and "securitySchemes" not in spec.get("components", {})
    assert not any("security" in op or "401" in op["responses"] for op in operations(spec))
    with service(token=TOKEN).test_client(base_url=BASE) as secured:
        spec = secured.get("/openapi.json").json()
    assert spec["security"] == [{"bearer": []}]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert all("401" in op["responses"] for op in operations(spec))


def test_the_vocabulary_parameters_list_the_words_of_the_tables(client):
    from cloudmesh.emr.api import vocabulary

    spec = client.get("/openapi.json").json()
    parameters = spec["components"]["parameters"]
    for name, kind in (("ClusterStatus", "cluster status"), ("InstanceStatus", "instance status"),
                       ("InstanceType", "instance type"), ("StepState", "step state")):
        enum = parameters[name]["schema"]["items"]["enum"]
        assert enum == vocabulary.spellings(kind)
        option, table = vocabulary.FILTERS[kind]
        assert {"all", "ALL"} <= set(enum) and set(table) <= set(enum)
    assert "CANCEL_PENDING" in parameters["StepState"]["schema"]["items"]["enum"]


def test_a_word_the_spec_does_not_list_is_a_400_naming_the_listed_ones(client):
    problem = problem_of(client.get("/clusters?status=Wait"), 400)
    assert problem["detail"].startswith("status: 'Wait' is not a cluster status")
    assert "wait" in problem["detail"] and "repeat status" in problem["detail"]
    problem = problem_of(client.get("/clusters?status=wait,error"), 400)
    assert "'wait,error'" in problem["detail"]
    assert client.get("/clusters?status=WAIT&status=error").status_code == 200


# ---- secrets: credentials in an endpoint URL ---------------------------------------------------

SECRET = "pw-Zk3/9+qLeak"  # shaped like an AWS secret key: a slash inside
SECRET2 = "pw-Zk3-9qLeak"
JDBC_PASSWORD = "jdbc-hunter2-Leak"
NESTED_TOKEN = "nested-token-Leak"


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def everything_stored(cm):
    """Every document of the test's database, as one text."""
    return "\n".join(str(doc) for name in cm.db.list_collection_names()
                     for doc in cm.db[name].find())


def test_redact_removes_the_userinfo_of_every_url_in_a_text():
    from cloudmesh.emr.redaction import redact

    text = (f'Could not connect to the endpoint URL: "http://admin:{SECRET}@127.0.0.1:9/x" '
            f"(mongodb://emr:{SECRET}@db.example.org:27017/cloudmesh), s3://bucket/a@b.txt")
    shown = redact(text)
    assert SECRET not in shown and "admin" not in shown and "emr:" not in shown
    assert '"http://127.0.0.1:9/x"' in shown and "mongodb://db.example.org:27017/cloudmesh" in shown
    assert "s3://bucket/a@b.txt" in shown  # an S3 key may hold '@'


@pytest.fixture
def leaky_environment(cm, monkeypatch):
    """AWS_ENDPOINT_URL with credentials in it, at a port where nothing listens."""
    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://admin:{SECRET}@127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return f"http://127.0.0.1:{port}"


def test_credentials_in_aws_endpoint_url_are_refused_and_never_shown(leaky_environment, cm, cms,
                                                                      caplog):
    import logging

    for args in (["list", "clusters"], ["describe", "j-ABCDEF"], ["start", "leak", "--count=1"],
                 ["stop", "j-ABCDEF"], ["list", "steps", "j-ABCDEF", "--format=json"]):
        result = cms(*args)
        assert result.code == 2, result
        assert "AWS_ENDPOINT_URL" in result.err and "not in the endpoint" in result.err
        assert leaky_environment in result.err  # the URL, shown without them
        assert SECRET not in result.out + result.err and "admin" not in result.err
    with caplog.at_level(logging.DEBUG), service().test_client(base_url=BASE) as client:
        answers = [client.get("/clusters"), client.get("/clusters/j-ABCDEF"),
                   client.post("/clusters", json={"name": "leak"}),
                   client.delete("/clusters/j-ABCDEF")]
    for answer in answers:
        assert problem_of(answer, 400)["detail"].startswith("the endpoint http://127.0.0.1:")
        assert SECRET not in answer.text
    assert SECRET not in caplog.text
    assert SECRET not in everything_stored(cm)


def test_credentials_that_reach_botocore_are_cut_from_its_errors(leaky_environment, cm, cms,
                                                                 monkeypatch, caplog):
    """Should credentials reach botocore some other way, its connection errors (which
    repeat the whole URL) still show the URL without them: in the command's error, the
    REST 502 body, the service log and the recorded action."""
    import logging

    from cloudmesh.emr.api.provider import Provider

    monkeypatch.setattr(Provider, "_check_endpoint", lambda self, url: None)  # the way round
    # a password urllib3 can parse, so that botocore does try to connect
    monkeypatch.setenv("AWS_ENDPOINT_URL", leaky_environment.replace("//", f"//admin:{SECRET2}@"))
    result = cms("stop", "j-ABCDEF")
    assert result.code == 1, result
    assert f'"{leaky_environment}/"' in result.err  # botocore's message, cut
    assert SECRET2 not in result.out + result.err
    [action] = cm.docs("aws", "action")
    assert leaky_environment in action["Error"]["Message"]
    with caplog.at_level(logging.DEBUG, logger="cloudmesh.emr.server"), \
            service().test_client(base_url=BASE) as client:
        answer = client.get("/clusters")
    assert leaky_environment in problem_of(answer, 502)["detail"]
    assert SECRET2 not in answer.text
    assert leaky_environment in caplog.text and SECRET2 not in caplog.text
    assert SECRET2 not in everything_stored(cm)


def test_the_service_log_cuts_credentials_from_tracebacks_too(client, monkeypatch):
    import io
    import logging

    from cloudmesh.emr.api import server
    from cloudmesh.emr.api.provider import Provider

    def broken(self, status=None, **query):
        raise RuntimeError(f"cannot reach http://admin:{SECRET}@127.0.0.1:1/")

    monkeypatch.setattr(Provider, "list_clusters", broken)
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(server.Redacting("%(message)s"))
    server.LOG.addHandler(handler)
    try:
        answer = client.get("/clusters")
    finally:
        server.LOG.removeHandler(handler)
    assert answer.status_code == 500 and SECRET not in answer.text
    log = output.getvalue()
    assert "Traceback" in log and "http://127.0.0.1:1/" in log and SECRET not in log


# ---- secrets: configuration properties ---------------------------------------------------------


def cluster_with_secrets(emr):
    """A cluster started with boto3 whose Configurations hold a JDBC password and a
    nested token, next to properties that are no secret."""
    return emr.run_job_flow(
        Name="hive", ReleaseLabel="emr-7.12.0",
        Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1,
                   "KeepJobFlowAliveWhenNoSteps": True},
        Configurations=[{
            "Classification": "hive-site",
            "Properties": {"javax.jdo.option.ConnectionPassword": JDBC_PASSWORD,
                           "javax.jdo.option.ConnectionURL": "jdbc:mysql://db.example.org/hive",
                           "javax.jdo.option.ConnectionUserName": "hive"},
            "Configurations": [{"Classification": "export",
                                "Properties": {"DB_TOKEN": NESTED_TOKEN}}],
        }, {"Classification": "spark-defaults",
            "Properties": {"spark.hadoop.fs.s3a.Secret.Key": JDBC_PASSWORD,
                           "spark.executor.memory": "2g"}}],
        JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole")["JobFlowId"]


def no_secret(text):
    return JDBC_PASSWORD not in text and NESTED_TOKEN not in text


def test_secret_configuration_properties_appear_in_no_output_answer_or_document(emr, cm, cms,
                                                                               client):
    cluster_id = cluster_with_secrets(emr)
    for fmt in (None, "table", "csv", "json", "yaml", "dict"):
        result = cms("describe", cluster_id, *([f"--format={fmt}"] if fmt else []))
        assert result.code == 0, result
        assert no_secret(result.out + result.err), (fmt, result.out)
    described = json.loads(cms("describe", cluster_id, "--format=json").out)
    hive, spark = described["Configurations"]
    assert hive["Properties"] == {"javax.jdo.option.ConnectionPassword": "********",
                                  "javax.jdo.option.ConnectionURL": "jdbc:mysql://db.example.org/hive",
                                  "javax.jdo.option.ConnectionUserName": "hive"}
    assert hive["Configurations"][0]["Properties"] == {"DB_TOKEN": "********"}
    assert spark["Properties"] == {"spark.hadoop.fs.s3a.Secret.Key": "********",
                                   "spark.executor.memory": "2g"}
    for path in (f"/clusters/{cluster_id}", "/clusters"):
        answer = client.get(path)
        assert answer.status_code == 200 and no_secret(answer.text), answer.text
    assert client.get(f"/clusters/{cluster_id}").json()["Configurations"] == described["Configurations"]
    [document] = cm.docs("aws", "cluster")
    assert document["Configurations"] == described["Configurations"]
    assert no_secret(everything_stored(cm))
