"""The real `cms` process against a moto server, through an endpoint profile in cloudmesh.yaml.

What a user does in a terminal: start a cluster, look at it, send a program, run it,
stop it; then what was recorded, and that the profile's secret shows up nowhere.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emr_helpers import (  # noqa: F401  lean_moto: autouse
    COLUMNS, lean_moto, loaded, one_error_line, parse, plain,
)

SECRET = "testing-secret-never-shown"  # the moto_cloud profile's EC2_SECRET_KEY


@pytest.fixture
def aws_at(moto_cloud):
    """boto3 clients on the moto server, as a user's `aws --endpoint-url` would be."""
    import boto3

    def client(service):
        return boto3.client(service, endpoint_url=moto_cloud, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="other")

    return client


def test_a_cluster_s_life_through_the_real_cms(cms_process, aws_at, cm, tmp_path):
    emr, s3 = aws_at("emr"), aws_at("s3")
    outputs = []

    def cms(*args):
        result = cms_process("emr", *args)
        outputs.append(result.out + result.err)
        assert result.code == 0, (args, result.err)
        return result

    started = cms("start", "e2e", "--count=2")
    cid = started.out.strip()
    assert cid.startswith("j-") and started.out == cid + "\n"
    groups = {g["InstanceGroupType"]: g["RequestedInstanceCount"]
              for g in emr.list_instance_groups(ClusterId=cid)["InstanceGroups"]}
    assert groups == {"MASTER": 1, "CORE": 1}

    listed = json.loads(cms("list", "clusters", "--format=json").out)
    assert listed == [plain(c) for c in emr.list_clusters()["Clusters"]]

    described = loaded(parse(cms("describe", cid, "--format=yaml").out, "yaml"))
    cluster = emr.describe_cluster(ClusterId=cid)["Cluster"]
    assert {k: v for k, v in described.items() if k not in ("InstanceGroups", "Region")} == \
        plain(cluster)
    assert described["Region"] == "us-east-1"
    assert len(described["InstanceGroups"]) == 2

    s3.create_bucket(Bucket="e2e-jobs")
    program = tmp_path / "wordcount.py"
    program.write_text("import sys\nprint(len(sys.argv))\n")
    uploaded = cms("upload", program, "e2e-jobs", "code/wordcount.py")
    assert uploaded.out == "s3://e2e-jobs/code/wordcount.py\n"
    body = s3.get_object(Bucket="e2e-jobs", Key="code/wordcount.py")["Body"].read()
    assert body == program.read_bytes()

    copy_id = cms("copy", cid, "e2e-jobs", "code/wordcount.py").out.strip()
    run_id = cms("run", cid, "e2e-jobs", "code/wordcount.py", "s3://e2e-jobs/in.txt", "out").out.strip()
    steps = {s["Id"]: s for s in emr.list_steps(ClusterId=cid)["Steps"]}
    assert set(steps) == {copy_id, run_id}
    assert steps[copy_id]["Config"]["Args"] == [
        "aws", "s3", "cp", "s3://e2e-jobs/code/wordcount.py", "/home/hadoop/"]
    assert steps[run_id]["Config"]["Args"] == [
        "spark-submit", "s3://e2e-jobs/code/wordcount.py", "s3://e2e-jobs/in.txt", "out"]

    headers, rows = parse(cms("list", "steps", cid, "--format=csv").out, "csv")
    assert headers == COLUMNS["step"]
    assert {row[0] for row in rows} == {copy_id, run_id}

    instances = parse(cms("list", "instances", cid, "--format=dict").out, "dict")
    assert sorted(i["Id"] for i in instances) == sorted(
        i["Id"] for i in emr.list_instances(ClusterId=cid)["Instances"])
    assert sorted(i["InstanceGroupType"] for i in instances) == ["CORE", "MASTER"]

    stopped = cms("stop", cid)
    assert cid in stopped.out
    assert emr.describe_cluster(ClusterId=cid)["Cluster"]["Status"]["State"] == "TERMINATED"
    ended = json.loads(cms("list", "clusters", "--status=shutdown", "--format=json").out)
    assert [c["Id"] for c in ended] == [cid]
    assert json.loads(cms("list", "clusters", "--status=active", "--format=json").out) == []

    # what was recorded: every printed id, under the profile's cloud
    actions = {d["Action"]: d for d in cm.docs("moto", "action")}
    assert set(actions) == {"start", "upload", "copy", "run", "stop"}
    assert actions["start"]["Target"] == cid
    assert actions["upload"]["Target"] == "s3://e2e-jobs/code/wordcount.py"
    assert actions["copy"]["Target"] == copy_id and actions["run"]["Target"] == run_id
    assert actions["stop"]["Target"] == cid
    cluster_doc, = cm.docs("moto", "cluster")
    assert cluster_doc["_id"] == f"moto/cluster/{cid}"
    assert cluster_doc["Status"]["State"] == "TERMINATED"  # the latest listing updated it
    assert {d["_id"] for d in cm.docs("moto", "step")} == {f"moto/step/{copy_id}",
                                                           f"moto/step/{run_id}"}
    assert len(cm.docs("moto", "instance")) == 2

    # the profile's secret: in no output and no document
    assert all(SECRET not in text for text in outputs)
    for name in cm.db.list_collection_names():
        for doc in cm.db[name].find():
            assert SECRET not in json.dumps(doc, default=str), f"{name}/{doc['_id']}"


def on_a_terminal(*args):
    """Run the real `cms` with stderr on a terminal (a pseudo-terminal 100 columns wide);
    return (exit code, stdout, what the terminal showed)."""
    import fcntl
    import pty
    import struct
    import termios

    shown, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with subprocess.Popen([*cms_command(), *[str(a) for a in args]], stdout=subprocess.PIPE,
                          stderr=terminal, stdin=subprocess.DEVNULL) as process:
        os.close(terminal)
        screen = b""
        while True:
            try:
                chunk = os.read(shown, 65536)
            except OSError:  # the terminal closed: the process has ended
                break
            if not chunk:
                break
            screen += chunk
        out = process.stdout.read().decode()
        code = process.wait(timeout=120)
    os.close(shown)
    return code, out, screen.decode(errors="replace")


def test_upload_shows_progress_on_a_terminal_for_big_files_only(moto_cloud, aws_at, tmp_path):
    s3 = aws_at("s3")
    s3.create_bucket(Bucket="e2e-data")
    big, small = tmp_path / "big.bin", tmp_path / "small.txt"
    big.write_bytes(os.urandom(9 * 1024 * 1024))  # over 8 MiB
    small.write_text("a few words\n")
    code, out, screen = on_a_terminal("emr", "upload", big, "e2e-data", "big.bin")
    assert code == 0, screen
    assert out == "s3://e2e-data/big.bin\n"  # stdout stays clean for $(...)
    assert "big.bin" in screen and "%|" in screen and "9.00M" in screen, screen
    assert s3.head_object(Bucket="e2e-data", Key="big.bin")["ContentLength"] == big.stat().st_size
    code, out, screen = on_a_terminal("emr", "upload", small, "e2e-data", "small.txt")
    assert code == 0, screen
    assert out == "s3://e2e-data/small.txt\n"
    assert screen.strip() == ""


def test_bad_input_through_the_real_cms(cms_process, moto_cloud, aws_at):
    for args in (["start", "x", "--count=0"], ["start", "x", "--master=m1.small"],
                 ["list", "clusters", "--format=xml"], ["describe", "nonsense"],
                 ["list", "nothing"]):
        result = cms_process("emr", *args)
        assert result.code == 2, (args, result.err)
        assert one_error_line(result.err), (args, result.err)
        assert result.out == ""
    assert aws_at("emr").list_clusters()["Clusters"] == []
    unknown = cms_process("emr", "describe", "j-NOSUCHCLUSTER1")
    assert unknown.code == 1
    assert one_error_line(unknown.err), unknown.err


def test_python_m_cloudmesh_emr_is_cms_emr(cm):
    done = subprocess.run([sys.executable, "-m", "cloudmesh.emr", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout and "emr list clusters" in done.stdout
    done = subprocess.run([sys.executable, "-m", "cloudmesh.emr", "list"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert one_error_line(done.stderr), done.stderr


def cms_command():
    script = Path(sys.executable).parent / "cms"
    return [sys.executable, str(script)] if script.exists() else [
        sys.executable, "-m", "cloudmesh.emr.shell"]


def test_help_does_not_import_the_heavy_libraries(cm):
    python, *script = cms_command()
    done = subprocess.run([python, "-X", "importtime", *script, "emr", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:") and line.count("|") == 2}
    assert "cloudmesh.emr.command.emr" in imported  # the list is read right
    heavy = sorted(name for name in imported
                   if name.split(".")[0] in ("boto3", "botocore", "pymongo", "connexion",
                                             "moto", "pyspark", "s3transfer"))
    assert heavy == []


def test_version(cms_process):
    from cloudmesh.emr import __version__

    for args in (["emr", "--version"], ["version"]):
        result = cms_process(*args)
        assert result.code == 0
        assert __version__ in result.out


def test_output_into_a_closed_pipe_is_not_an_error(cm):
    """`cms emr ... | head -1`: when the reader has gone, stop quietly; no traceback, and no
    'unexpected error, please report it'."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([*cms_command(), "emr", "--help"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "unexpected" not in done.stderr, done.stderr
