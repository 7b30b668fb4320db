"""cloudmesh.yaml and the environment -> settings: what is read, what is refused, what stays secret."""

import http.server
import json
import threading
from pathlib import Path

import pytest
import yaml

from cloudmesh.emr.config import EMR_DEFAULTS, Settings, config_dir, state_dir
from cloudmesh.emr.errors import UsageError
from emr_helpers import one_error_line

ACCESS_ID = "AKIDCONFIGTEST0001"
SECRET = "config-test-secret-Zq8v/0RkQ"
MONGO_SECRET = "mongo-pass-Hy7"


def write(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else yaml.safe_dump(data)
    (folder / "cloudmesh.yaml").write_text(text)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty config folder as CLOUDMESH_CONFIG_DIR."""
    path = tmp_path / "conf"
    path.mkdir()
    monkeypatch.setenv("CLOUDMESH_CONFIG_DIR", str(path))
    return path


FULL = {"cloudmesh": {
    "cloud": {
        "aws": {"credentials": {"EC2_ACCESS_ID": ACCESS_ID, "EC2_SECRET_KEY": SECRET,
                                "region": "eu-central-1"}},
        "other": {"credentials": {"EC2_ACCESS_ID": "AKIDOTHER", "EC2_SECRET_KEY": "other-secret",
                                  "region": "ap-south-1",
                                  "endpoint": "http://127.0.0.1:5999/path"}},
    },
    "data": {"mongo": {"MODE": "Native", "MONGO_HOST": "db.example.org", "MONGO_PORT": "27018",
                       "MONGO_DBNAME": "results", "MONGO_USERNAME": "emr",
                       "MONGO_PASSWORD": MONGO_SECRET}},
    "emr": {"default": {"cloud": "other", "release": "emr-7.1.0", "master": "m5.2xlarge",
                        "node": "r5.xlarge", "count": 5},
            "server": {"token": "tok"}, "local": {"delay": 0.25}},
}}


# ---- where the file is, and a missing one ----------------------------------------------------

def test_a_missing_file_is_fine_and_gives_the_defaults(folder):
    settings = Settings.load()
    assert settings.path == folder / "cloudmesh.yaml"
    assert settings.data == {}
    assert settings.cloud() == "aws"
    assert settings.emr_default("master") == "m5.xlarge"
    assert settings.emr_default("node") == "m5.xlarge"
    assert int(settings.emr_default("count")) == 3
    assert str(settings.emr_default("release")).startswith("emr-7.")
    mongo = settings.mongo()
    assert mongo["MODE"] == "embedded"
    assert mongo["MONGO_DBNAME"] == "cloudmesh"
    # nothing set: boto3's own chain decides credentials, region and endpoint
    assert settings.boto_options("aws") == ({}, None)


def test_an_empty_file_is_fine(folder):
    write(folder, "")
    assert Settings.load().data == {}
    assert Settings.load().cloud() == "aws"


def test_the_file_is_under_home_without_cloudmesh_config_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("CLOUDMESH_CONFIG_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path / ".cloudmesh", {"cloudmesh": {"cloud": {"fromhome": {}},
                                                  "emr": {"default": {"cloud": "fromhome"}}}})
    assert config_dir() == tmp_path / ".cloudmesh"
    assert Settings.load().cloud() == "fromhome"
    assert state_dir("db") == tmp_path / ".cloudmesh" / "emr" / "db"


def test_cloudmesh_config_dir_names_the_folder(folder):
    write(folder, {"cloudmesh": {"cloud": {"fromdir": {}},
                                 "emr": {"default": {"cloud": "fromdir"}}}})
    assert config_dir() == folder
    assert Settings.load().cloud() == "fromdir"
    assert state_dir("db") == folder / "emr" / "db"


# ---- keys read --------------------------------------------------------------------------------

def test_every_key_is_read(folder):
    write(folder, FULL)
    settings = Settings.load()
    session, endpoint = settings.boto_options("aws")
    assert session == {"aws_access_key_id": ACCESS_ID, "aws_secret_access_key": SECRET,
                       "region_name": "eu-central-1"}
    assert endpoint is None
    session, endpoint = settings.boto_options("other")
    assert session["aws_access_key_id"] == "AKIDOTHER"
    assert session["region_name"] == "ap-south-1"
    assert endpoint == "http://127.0.0.1:5999/path"
    assert settings.cloud() == "other"
    assert settings.emr_default("release") == "emr-7.1.0"
    assert settings.emr_default("master") == "m5.2xlarge"
    assert settings.emr_default("node") == "r5.xlarge"
    assert settings.emr_default("count") == 5
    mongo = settings.mongo()
    assert mongo["MODE"] == "native"  # any case
    assert mongo["MONGO_HOST"] == "db.example.org"
    assert mongo["MONGO_PORT"] == 27018  # a string in YAML is still a port
    assert mongo["MONGO_DBNAME"] == "results"
    assert mongo["MONGO_USERNAME"] == "emr"
    assert settings.server_token() == "tok"
    assert settings.local_delay() == 0.25


def test_unset_keys_fall_back_one_by_one(folder):
    write(folder, {"cloudmesh": {"emr": {"default": {"node": "c5.xlarge"}},
                                 "data": {"mongo": {"MONGO_DBNAME": "mine"}}}})
    settings = Settings.load()
    assert settings.emr_default("node") == "c5.xlarge"
    assert settings.emr_default("master") == EMR_DEFAULTS["master"]
    assert settings.emr_default("count") == EMR_DEFAULTS["count"]
    mongo = settings.mongo()
    assert mongo["MONGO_DBNAME"] == "mine"
    assert mongo["MODE"] == "embedded"
    assert mongo["MONGO_PORT"] == 27017


@pytest.mark.parametrize("given, missing", [("EC2_ACCESS_ID", "EC2_SECRET_KEY"),
                                            ("EC2_SECRET_KEY", "EC2_ACCESS_ID")])
def test_half_a_key_pair_is_refused_not_filled_from_another_account(folder, given, missing):
    write(folder, {"cloudmesh": {"cloud": {"aws": {"credentials": {given: "ONLY",
                                                                   "region": "us-west-2"}}}}})
    with pytest.raises(UsageError) as caught:
        Settings.load().boto_options("aws")
    assert caught.value.exit_code == 2
    assert given in caught.value.message and missing in caught.value.message
    assert "ONLY" not in caught.value.message  # a secret is never echoed


@pytest.mark.parametrize("typo, meant", [("EC2_ACCES_ID", "EC2_ACCESS_ID"),
                                         ("EC2_SECRET", "EC2_SECRET_KEY"),
                                         ("Region", "region"),
                                         ("endpont", "endpoint")])
def test_a_misspelt_credentials_key_names_the_closest_one(folder, typo, meant):
    write(folder, {"cloudmesh": {"cloud": {"aws": {"credentials": {
        typo: "AKIDTYPO", "EC2_SECRET_KEY" if typo != "EC2_SECRET" else "EC2_ACCESS_ID": "x",
        "region": "us-west-2"}}}}})
    with pytest.raises(UsageError) as caught:
        Settings.load().boto_options("aws")
    message = caught.value.message
    assert f"'{typo}'" in message and f"did you mean {meant}?" in message
    for expected in ("EC2_ACCESS_ID", "EC2_SECRET_KEY", "region", "endpoint"):
        assert expected in message
    assert "AKIDTYPO" not in message


def test_cloudmeshs_own_aws_profile_keys_are_accepted(folder):
    write(folder, {"cloudmesh": {"cloud": {"aws": {"credentials": {
        "EC2_ACCESS_ID": "AKID", "EC2_SECRET_KEY": "SECRET", "region": "us-west-2",
        "EC2_SECURITY_GROUP": "group1", "EC2_PRIVATE_KEY_FILE_PATH": "~/.cloudmesh/aws.pem",
        "EC2_PRIVATE_KEY_FILE_NAME": "aws"}}}}})
    session, _ = Settings.load().boto_options("aws")
    assert session["aws_access_key_id"] == "AKID" and session["region_name"] == "us-west-2"


def test_the_local_cloud_signs_with_the_emulators_own_credentials(folder):
    from cloudmesh.emr.local import credentials

    write(folder, {"cloudmesh": {"cloud": {"local": {"credentials": {
        "endpoint": "http://127.0.0.1:5998", "region": "eu-west-1"}}}}})
    settings = Settings.load()
    session, endpoint = settings.boto_options("local")
    assert endpoint == "http://127.0.0.1:5998"
    assert session == {"region_name": "eu-west-1"}  # no emulator keys yet: boto3's chain
    state = folder / "emr" / "local"
    state.mkdir(parents=True)
    pair, reused = credentials.ensure(state)
    assert not reused and credentials.ensure(state) == (pair, True)
    assert (state / "credentials.json").stat().st_mode & 0o777 == 0o600
    session, _ = settings.boto_options("local")
    assert session == {"region_name": "eu-west-1", **pair.boto()}
    assert pair.secret_access_key not in repr(pair)
    # a file that others may read is not trusted: the daemon makes a new pair
    (state / "credentials.json").chmod(0o644)
    assert credentials.read(state) is None
    assert credentials.ensure(state)[0] != pair


def test_local_delay_from_the_environment(folder, monkeypatch):
    write(folder, FULL)
    monkeypatch.setenv("CLOUDMESH_EMR_LOCAL_DELAY", "0")
    assert Settings.load().local_delay() == 0.0
    for bad in ("soon", "-1"):
        monkeypatch.setenv("CLOUDMESH_EMR_LOCAL_DELAY", bad)
        with pytest.raises(UsageError, match=bad):
            Settings.load().local_delay()


# ---- --cloud ------------------------------------------------------------------------------------

def test_cloud_selection(folder):
    assert Settings.load().cloud() == "aws"  # boto3's own chain: no file needed
    assert Settings.load().cloud("local") == "local"
    write(folder, FULL)
    assert Settings.load().cloud() == "other"
    assert Settings.load().cloud("aws") == "aws"
    assert Settings.load().cloud("other") == "other"
    for empty in (" ", ""):
        with pytest.raises(UsageError, match="--cloud"):
            Settings.load().cloud(empty)


@pytest.mark.parametrize("where", ["option", "default"])
def test_a_cloud_that_cloudmesh_yaml_does_not_define_is_refused(folder, where):
    """A misspelt --cloud must not quietly run on the default account (as `aws --profile`
    refuses a profile it does not know): it names itself and the clouds there are."""
    data = {"cloudmesh": {"cloud": {"prod": {}, "moto": {}}}}
    if where == "default":
        data["cloudmesh"]["emr"] = {"default": {"cloud": "prodd"}}
    write(folder, data)
    with pytest.raises(UsageError) as caught:
        Settings.load().cloud("prodd" if where == "option" else None)
    message = caught.value.message
    assert "'prodd'" in message and "\n" not in message
    assert ("--cloud" if where == "option" else "cloudmesh.emr.default.cloud") in message
    assert str(folder / "cloudmesh.yaml") in message
    offered = message.split("use one of: ")[1].split(" (")[0].split(", ")
    assert offered == ["aws", "local", "moto", "prod"]


def test_an_unknown_cloud_through_the_command_does_nothing(cm, aws, cms):
    import boto3

    result = cms("start", "elsewhere", "--cloud=prodd")
    assert result.code == 2
    assert one_error_line(result.err), result.err
    assert "prodd" in result.err
    assert boto3.client("emr").list_clusters()["Clusters"] == []
    assert cm.db.list_collection_names() == []


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers EMR ListClusters and S3 HeadBucket, and keeps every request it saw."""

    seen = []

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        Recorder.seen.append({"method": self.command, "path": self.path,
                              "headers": dict(self.headers), "body": body})
        target = self.headers.get("X-Amz-Target", "")
        if target.endswith("ListClusters"):
            payload = json.dumps({"Clusters": [{
                "Id": "j-RECORDED", "Name": "seen",
                "Status": {"State": "WAITING", "Timeline": {"CreationDateTime": 1735689600}},
                "NormalizedInstanceHours": 0}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
        elif target.endswith("DescribeCluster"):
            payload = json.dumps({"__type": "UnrecognizedClientException",
                                  "message": "The security token included in the request is "
                                             "invalid."}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
        else:
            payload = b""
            self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_HEAD = do_PUT = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def recorder():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_endpoint_profile_sends_emr_and_s3_there_with_its_own_keys(cm, recorder):
    from cloudmesh.emr.api.provider import Provider

    cm.write(clouds={
        "aws": {"credentials": {"EC2_ACCESS_ID": "AKIDWRONGCLOUD", "EC2_SECRET_KEY": "x",
                                "region": "us-east-1"}},
        "mine": {"credentials": {"EC2_ACCESS_ID": ACCESS_ID, "EC2_SECRET_KEY": SECRET,
                                 "region": "eu-west-3", "endpoint": recorder}}})
    Recorder.seen.clear()
    provider = Provider(cloud="mine")
    clusters = provider.list_clusters()
    assert [c["Id"] for c in clusters] == ["j-RECORDED"]
    provider.client("s3").head_bucket(Bucket="some-bucket")
    assert len(Recorder.seen) == 2
    emr_call, s3_call = Recorder.seen
    for call, service in ((emr_call, "elasticmapreduce"), (s3_call, "s3")):
        authorization = call["headers"]["Authorization"]
        assert f"Credential={ACCESS_ID}/" in authorization
        assert f"/eu-west-3/{service}/" in authorization
    assert s3_call["path"].startswith("/some-bucket")  # path style on an endpoint
    # the secret signs requests; it never travels
    assert all(SECRET not in json.dumps(call, default=str) for call in Recorder.seen)
    # and what was listed was recorded under the chosen cloud
    assert [d["_id"] for d in cm.docs("mine", "cluster")] == ["mine/cluster/j-RECORDED"]


def test_refused_credentials_are_one_clear_line_without_the_secret(cm, recorder, cms):
    cm.write(clouds={"mine": {"credentials": {"EC2_ACCESS_ID": ACCESS_ID, "EC2_SECRET_KEY": SECRET,
                                              "region": "eu-west-3", "endpoint": recorder}}},
             emr={"default": {"cloud": "mine"}})
    result = cms("describe", "j-ANYTHING")
    assert result.code == 1
    assert one_error_line(result.err), result.err
    assert "credentials" in result.err and "'mine'" in result.err
    assert SECRET not in result.err + result.out


# ---- refused configuration ---------------------------------------------------------------------

@pytest.mark.parametrize("text,where", [
    ("cloudmesh:\n  cloud: [unclosed\n", "line"),
    ("cloudmesh:\n\tcloud: {}\n", "line"),
    ("cloudmesh: {a: 1\n", "line"),
])
def test_bad_yaml_is_a_one_line_usage_error(folder, text, where):
    write(folder, text)
    with pytest.raises(UsageError) as caught:
        Settings.load()
    message = caught.value.message
    assert "\n" not in message
    assert str(folder / "cloudmesh.yaml") in message
    assert where in message


def test_yaml_that_is_not_a_mapping_is_a_usage_error(folder):
    write(folder, "- just\n- a list\n")
    with pytest.raises(UsageError, match="mapping"):
        Settings.load()


def test_bad_yaml_through_the_command(cm, cms):
    (cm.folder / "cloudmesh.yaml").write_text(f"cloudmesh:\n  cloud: {{aws: [\n  # {SECRET}\n")
    result = cms("list", "clusters")
    assert result.code == 2
    assert one_error_line(result.err), result.err
    assert "cloudmesh.yaml" in result.err
    assert SECRET not in result.err


@pytest.mark.parametrize("url", ["not-a-url", "ftp://127.0.0.1:21", "http://:5000",
                                 "http://127.0.0.1:port", "127.0.0.1:5000", ""])
def test_a_bad_endpoint_is_a_one_line_usage_error(folder, url):
    write(folder, {"cloudmesh": {"cloud": {"bad": {"credentials": {
        "EC2_ACCESS_ID": ACCESS_ID, "EC2_SECRET_KEY": SECRET, "region": "us-east-1",
        "endpoint": url}}}}})
    settings = Settings.load()
    if url == "":  # an empty endpoint is no endpoint
        assert settings.boto_options("bad")[1] is None
        return
    with pytest.raises(UsageError) as caught:
        settings.boto_options("bad")
    message = caught.value.message
    assert "\n" not in message
    assert "cloudmesh.cloud.bad.credentials.endpoint" in message
    assert SECRET not in message


def test_a_bad_endpoint_through_the_command(cm, cms):
    cm.write(clouds={"bad": {"credentials": {"EC2_ACCESS_ID": ACCESS_ID, "EC2_SECRET_KEY": SECRET,
                                             "region": "us-east-1", "endpoint": "localhost:99"}}})
    result = cms("list", "clusters", "--cloud=bad")
    assert result.code == 2
    assert one_error_line(result.err), result.err
    assert "endpoint" in result.err and SECRET not in result.err


@pytest.mark.parametrize("url", [f"http://admin:{SECRET}@127.0.0.1:5000",
                                 f"https://{SECRET}@emr.example.org/",
                                 f"http://admin:{SECRET}@127.0.0.1:5000@x/"])
def test_credentials_in_an_endpoint_are_refused_without_showing_them(folder, url):
    write(folder, {"cloudmesh": {"cloud": {"leaky": {"credentials": {
        "EC2_ACCESS_ID": ACCESS_ID, "EC2_SECRET_KEY": "other", "region": "us-east-1",
        "endpoint": url}}}}})
    with pytest.raises(UsageError) as caught:
        Settings.load().boto_options("leaky")
    message = caught.value.message
    assert "put credentials under credentials:, not in the endpoint" in message
    assert SECRET not in message and "admin" not in message


def test_credentials_in_an_endpoint_through_the_command(cm, cms):
    cm.write(clouds={"leaky": {"credentials": {
        "EC2_ACCESS_ID": ACCESS_ID, "EC2_SECRET_KEY": "other", "region": "us-east-1",
        "endpoint": f"http://admin:{SECRET}@127.0.0.1:5000"}}})
    for args in (["list", "clusters"], ["describe", "j-ABCDEF"], ["stop", "j-ABCDEF"]):
        result = cms(*args, "--cloud=leaky")
        assert result.code == 2, result
        assert one_error_line(result.err), result.err
        assert "not in the endpoint" in result.err and "http://127.0.0.1:5000" in result.err
        assert SECRET not in result.out + result.err
    assert SECRET not in str([cm.docs("leaky", kind) for kind in ("cluster", "action")])


def test_server_hosts_is_a_list_of_names(folder):
    write(folder, {"cloudmesh": {"emr": {"server": {"hosts": ["EMR.example.org", "[::1]:8443"]}}}})
    assert Settings.load().server_hosts() == ["emr.example.org", "[::1]:8443"]
    write(folder, {"cloudmesh": {"emr": {"server": {"hosts": "one.example.org"}}}})
    assert Settings.load().server_hosts() == ["one.example.org"]
    write(folder, {"cloudmesh": {}})
    assert Settings.load().server_hosts() == []
    for bad in (["http://x.example.org/"], ["a b"], [3], {"name": "x"}, ["x.example.org:port"]):
        write(folder, {"cloudmesh": {"emr": {"server": {"hosts": bad}}}})
        with pytest.raises(UsageError, match="cloudmesh.emr.server.hosts"):
            Settings.load().server_hosts()


def test_credentials_that_are_not_a_mapping_are_refused(folder):
    write(folder, {"cloudmesh": {"cloud": {"aws": {"credentials": "AKID:secret"}}}})
    with pytest.raises(UsageError, match="credentials"):
        Settings.load().boto_options("aws")


@pytest.mark.parametrize("mongo,word", [({"MODE": "cloud"}, "MODE"),
                                        ({"MODE": 3}, "MODE"),
                                        ({"MONGO_PORT": "high"}, "MONGO_PORT")])
def test_bad_database_settings_are_one_line_usage_errors(folder, mongo, word):
    write(folder, {"cloudmesh": {"data": {"mongo": mongo}}})
    with pytest.raises(UsageError) as caught:
        Settings.load().mongo()
    assert word in caught.value.message
    assert "\n" not in caught.value.message


def test_a_bad_mode_through_the_command_refuses_before_acting(cm, aws, cms):
    """A bad MODE is bad input: exit 2 before any AWS call, so no cluster starts unseen."""
    import boto3

    cm.write(mongo={"MODE": "cloud"})
    result = cms("start", "unseen")
    assert result.code == 2
    assert one_error_line(result.err), result.err
    assert "MODE" in result.err
    # a cluster started here would run (and cost) with its id printed nowhere
    assert boto3.client("emr").list_clusters()["Clusters"] == []


# ---- secrets --------------------------------------------------------------------------------------

def test_secrets_never_show_in_repr(folder):
    from cloudmesh.emr.api.provider import Provider
    from cloudmesh.emr.database import Database

    write(folder, FULL)
    settings = Settings.load()
    provider = Provider(cloud="aws", settings=settings)
    database = Database(settings)
    for thing in (settings, provider, database):
        for text in (repr(thing), str(thing), f"{thing}", f"{thing!r}"):
            assert SECRET not in text
            assert MONGO_SECRET not in text
            assert "other-secret" not in text
    assert Path(str(folder)) and str(folder / "cloudmesh.yaml") in repr(settings)
