"""Property: whatever the command line, `cms emr` ends with exit 0, 1 or 2, one ERROR line
when it fails, and never "unexpected".

The command lines are built from the usage text itself (each usage pattern parsed into
its words, alternatives, optional parts and repeats), filled with values that fit, values
that almost fit and garbage (including text that is not valid Unicode), and sometimes
mangled further. They run in this process against moto (its threaded server, see ``world``) and the session's
database. Patterns that would wait, serve or start a daemon are left out.
"""

import contextlib
import io
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emr_helpers import lean_moto, run_job_flow  # noqa: F401  lean_moto: autouse

# command lines per run, the same ones every run (derandomized): `make test` tries 200,
# `make conformance` 1,000 (pytest -m conformance)
EXAMPLES = [200, pytest.param(1000, marks=pytest.mark.conformance)]
# patterns that would block (wait, serve) or start/stop a daemon the session shares
SKIPPED_COMMANDS = {("wait",), ("local",), ("server",)}
SKIPPED_OPTIONS = {"--wait"}
TOKEN = re.compile(r"\[|\]|\(|\)|\||\.\.\.|[^\s\[\]()|.]+(?:\.[^\s\[\]()|.]+)*")


def usage_patterns():
    """The usage lines of `cms emr --help`, continuation lines joined, as token lists."""
    from cloudmesh.emr.command.emr import EmrCommand

    text = EmrCommand.usage().split("Usage:", 1)[1].split("\n\n", 1)[0]
    lines = []
    for line in text.strip("\n").splitlines():
        if line.strip().startswith("emr "):
            lines.append(line.strip())
        elif lines:
            lines[-1] += " " + line.strip()
    return [TOKEN.findall(line)[1:] for line in lines if " | " not in line]


def parse(tokens):
    """Tokens -> a tree: ("seq", [...]), ("opt", seq), ("alt", [seq...]), ("rep", node),
    or a word."""
    position = 0

    def sequence(end):
        nonlocal position
        items, alternatives = [], []
        while position < len(tokens) and tokens[position] not in end:
            token = tokens[position]
            position += 1
            if token in ("[", "("):
                inner = sequence({"]"} if token == "[" else {")"})
                position += 1
                node = ("opt", inner) if token == "[" else inner
            elif token == "|":
                alternatives.append(("seq", items))
                items = []
                continue
            elif token == "...":
                items[-1] = ("rep", items[-1])
                continue
            else:
                node = token
            items.append(node)
        if alternatives:
            return ("alt", alternatives + [("seq", items)])
        return ("seq", items)

    return sequence(set())


GARBAGE = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
    st.sampled_from(["", " ", "-", "--", "--x", "caf\udce9", "\udcff", "\ud800", "\x00",
                     "a" * 300, "j-", "j-" + "Z" * 70, "s3://", "s3://b", "../..", "%s",
                     "-1", "0", "99999999999999999999", "1e3", "nan", "--format=json"]),
)


def values(cluster, step, group, program):
    """What fits each placeholder (and a little that does not)."""
    words = {
        "CLUSTERID": [cluster, cluster, "j-NOSUCHCLUSTER1", "j-2AXXXXXXGAPLF"],
        "STEPID": [step, "s-NOSUCHSTEP1"],
        "GROUPID": [group, "ig-NOSUCH"],
        "COUNT": ["1", "2", "3", "0"],
        "NAME": ["wordcount", "a name with spaces", "x"],
        "FILE": [program, "/nonexistent/file.py", "examples"],
        "BUCKET": ["jobs", "nosuchbucket", "Bad_Bucket"],
        "BUCKETNAME": ["wordcount.py", "dir/x.jar", "x.txt"],
        "ARGS": ["--n", "10", "s3://jobs/in/", "--"],
        "STATUS": ["all", "active", "wait", "RUNNING", "run,wait", "bogus"],
        "TYPE": ["master", "core", "task", "m5.xlarge", "t2.micro", "bogus"],
        "STATE": ["all", "pending", "failed", "COMPLETED", "bogus"],
        "FORMAT": ["table", "csv", "json", "yaml", "dict", "xml"],
        "CLOUD": ["moto", "moto", "nosuchcloud"],
        "MASTER": ["m5.xlarge", "t2.micro", "m5"],
        "NODE": ["m5.xlarge", "c5.2xlarge"],
        "LABEL": ["emr-7.12.0", "emr-6.15.0", "emr-0.0.1", "7.12"],
        "N": ["1", "4", "-3", "x"],
        "PRICE": ["0.1", "-1", "free"],
        "DURATION": ["1h", "30m", "90s", "0", "forever"],
        "MIN:MAX": ["2:10", "5:1", "x:y"],
        "URI": ["s3://logs/emr/", "http://x", "s3:/"],
        "KEYPAIR": ["mykey"],
        "SUBNET": ["subnet-12345678", "x"],
        "ZONE": ["us-east-1a", "mars-1a"],
        "ACTION": ["s3://jobs/boot.sh", "s3://jobs/boot.sh,a,b", "continue", "cancel",
                   "terminate", "boot.sh"],
        "KEY=VALUE": ["team=data", "novalue", "=x"],
        "KEY": ["nightly-1", "bad key!"],
        "MAIN": ["com.example.WordCount", "1bad"],
        "S3URI": ["s3://jobs/mapper.py", "s3://jobs/in/", "s3://jobs/out/", "file.py"],
        "WHEN": ["2025-01-01", "1d", "yesterday"],
        "SECONDS": ["1", "x"],
        "PORT": ["8080", "0", "x"],
        "HOST": ["127.0.0.1"],
    }
    return words


def fill(draw, node, words):
    """Draw one command line (a list of words) for the tree ``node``."""
    if isinstance(node, str):
        if node.startswith("--") and "=" in node:
            option, placeholder = node.split("=", 1)
            return [f"{option}={draw_value(draw, placeholder, words)}"]
        if node.startswith("-") or not node.isupper() and node not in words:
            return [node]
        return [draw_value(draw, node, words)]
    kind, inner = node
    if kind == "seq":
        return [word for item in inner for word in fill(draw, item, words)]
    if kind == "opt":
        if any(isinstance(i, str) and i.split("=")[0] in SKIPPED_OPTIONS
               for i in inner[1]):
            return []
        return fill(draw, inner, words) if draw(st.booleans()) else []
    if kind == "alt":
        return fill(draw, draw(st.sampled_from(inner)), words)
    if kind == "rep":
        return [word for _ in range(draw(st.integers(1, 3)))
                for word in fill(draw, inner, words)]
    raise AssertionError(kind)


def draw_value(draw, placeholder, words):
    if placeholder in words and draw(st.integers(0, 4)):
        return draw(st.sampled_from(words[placeholder]))
    return draw(GARBAGE)


def mangle(draw, line):
    """Sometimes: drop a word, repeat one, add garbage, or swap two."""
    how = draw(st.sampled_from(["keep", "keep", "keep", "drop", "repeat", "add", "swap"]))
    if not line or how == "keep":
        return line
    index = draw(st.integers(0, len(line) - 1))
    if how == "drop":
        return line[:index] + line[index + 1:]
    if how == "repeat":
        return line[:index + 1] + line[index:]
    if how == "add":
        return line[:index] + [draw(GARBAGE)] + line[index:]
    other = draw(st.integers(0, len(line) - 1))
    line = list(line)
    line[index], line[other] = line[other], line[index]
    return line


@pytest.fixture
def world(cm, moto_server, tmp_path, monkeypatch):
    """One cluster with a step and a bucket, in moto; a program on disk; a cloud 'moto'
    (the default) on the moto server, with one attempt per call so a failure is quick.

    moto runs in this process as its threaded server rather than mock_aws: under
    mock_aws, moto's own missing checks (ListSteps of an unknown cluster is a KeyError
    inside moto) escape into the caller as Python exceptions, where EMR answers an error.
    """
    import boto3
    from emr_helpers import reset_moto

    from cloudmesh.emr.api import provider

    reset_moto(moto_server)
    monkeypatch.setattr(provider, "BACKOFF_BASE", 0.001)
    cm.write(clouds={"moto": {"credentials": {
        "EC2_ACCESS_ID": "testing", "EC2_SECRET_KEY": "testing", "region": "us-east-1",
        "endpoint": moto_server}}},
        emr={"default": {"cloud": "moto"}, "retry": {"attempts": 1}})
    options = {"endpoint_url": moto_server, "region_name": "us-east-1",
               "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    emr = boto3.client("emr", **options)
    cluster = run_job_flow(emr, "fuzzed")
    step = emr.add_job_flow_steps(JobFlowId=cluster, Steps=[{
        "Name": "one", "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["spark-submit", "x.py"]}}]
    )["StepIds"][0]
    group = emr.list_instance_groups(ClusterId=cluster)["InstanceGroups"][0]["Id"]
    boto3.client("s3", **options).create_bucket(Bucket="jobs")
    program = tmp_path / "wordcount.py"
    program.write_text("print('hello')\n")
    return values(cluster, step, group, str(program))


def run(argv):
    from cloudmesh.emr.command.emr import EmrCommand

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = EmrCommand().run(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_the_usage_patterns_are_read():
    from cloudmesh.emr.command.emr import EmrCommand

    patterns = usage_patterns()
    usage = EmrCommand.usage().split("Usage:", 1)[1].split("\n\n", 1)[0]
    assert len(patterns) == usage.count("\n  emr ") - 1  # all but `emr -h | --help`
    listing = next(p for p in patterns if p[:2] == ["list", "clusters"])
    assert listing[2:6] == ["[", "--status=STATUS", "...", "]"]
    tree = parse(listing)
    assert tree[0] == "seq" and tree[1][:2] == ["list", "clusters"]
    assert tree[1][2] == ("opt", ("seq", [("rep", "--status=STATUS")]))
    assert any(p[:2] == ["db", "("] for p in patterns)


@pytest.mark.parametrize("examples", EXAMPLES)
def test_any_command_line_ends_in_0_1_or_2_with_one_error_line(world, examples):
    trees = [parse(tokens) for tokens in usage_patterns()
             if tuple(tokens[:1]) not in SKIPPED_COMMANDS]
    seen = {"codes": set()}

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        draw = data.draw
        if draw(st.integers(0, 9)) == 0:  # pure garbage now and then
            line = draw(st.lists(GARBAGE, max_size=6))
        else:
            line = mangle(draw, fill(draw, draw(st.sampled_from(trees)), world))
        if line[:1] in (["wait"], ["local"], ["server"]) or "--wait" in line:
            return  # a mangled line may have become one of the skipped ones
        code, out, err = run(line)
        seen["codes"].add(code)
        assert code in (0, 1, 2), (line, code, err)
        assert "unexpected" not in err and "Traceback" not in err, (line, err)
        errors = [text for text in err.splitlines() if text.startswith("ERROR:")]
        if code:  # one ERROR line; stop and cancel say one per cluster or step refused
            several = line[:1] in (["stop"], ["cancel"])
            assert len(errors) >= 1 if several else len(errors) == 1, (line, err)
            assert all(len(text) < 700 for text in errors), (line, err)
        for text in err.splitlines():
            assert text.startswith(("ERROR: ", "WARNING: ")), (line, err)

    check()
    assert seen["codes"] == {0, 1, 2}  # the lines reached every outcome
