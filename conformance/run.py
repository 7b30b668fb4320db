"""`make conformance`: the emulator tried with clients this project did not write.

1. moto's own EMR tests, from the sdist of the installed moto on PyPI
   (``pip download --no-binary :all: --no-deps moto==X``, kept in ``.conformance/``),
   run in server mode against a fresh emulator, through ``conformance/plugin.py``
   (the emulator's credentials on every request, moto's reset call included; waits
   for settled states after RunJobFlow and TerminateJobFlows);
2. an AWS CLI lifecycle (the AWS CLI from PyPI, in ``.venv-awscli``): create-cluster
   ... terminate-clusters, wait cluster-terminated, and a step on an emr-6.x cluster,
   which runs on a pyspark of that release's Spark installed on first use.

3. this project's long runs, ``pytest -m conformance`` over ``tests/`` (``make test``
   leaves them out, see pytest.ini): the 1,000-example command-line property run,
   the SIGKILL of the database mid-write, the ``schemathesis run --checks all`` of the
   served REST service on an emulator of its own.

It prints a table of what passed and failed, and writes it into the README between
the ``conformance`` markers (``--tests-only`` runs part 3 alone and only prints). Exit 0
when nothing failed but the moto-only assertions listed in ``conformance/expected.py``;
1 otherwise.
"""

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from conformance.expected import MOTO_ONLY  # noqa: E402

CACHE = ROOT / ".conformance"
README = ROOT / "README.md"
BEGIN = "<!-- conformance: begin (written by make conformance) -->"
END = "<!-- conformance: end -->"
DELAY = 0.1  # seconds per transition of the emulator under test
AWS = Path(os.environ.get("AWSCLI_VENV", ROOT / ".venv-awscli")) / "bin" / "aws"

SPARK_JOB = """\
import sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("conformance").getOrCreate()
total = spark.sparkContext.parallelize(range(1, 101), 2).sum()
print("sum", total, "spark", spark.version)
spark.stop()
"""
SLEEP_JOB = "import time\ntime.sleep(300)\n"


# ---- the emulator -------------------------------------------------------------------


def start_emulator(state):
    state.mkdir(parents=True, exist_ok=True)
    log = open(state / "daemon.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "cloudmesh.emr.local.daemon", "--port", "0",
         "--state-dir", str(state), "--delay", str(DELAY)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"ERROR: the emulator exited with {process.returncode}; see "
                     f"{state / 'daemon.log'}")
        try:
            data = json.loads((state / "daemon.json").read_text())
        except (OSError, ValueError):
            data = {}
        if data.get("pid") == process.pid:
            return process, data["endpoint"], credentials(state)
        time.sleep(0.2)
    process.kill()
    sys.exit("ERROR: the emulator did not serve within 90 s")


def credentials(state):
    """The emulator's own key pair (credentials.json), or the plain one it took before."""
    try:
        data = json.loads((state / "credentials.json").read_text())
        return data["AccessKeyId"], data["SecretAccessKey"]
    except (OSError, ValueError, KeyError):
        return "local", "local"


def stop_emulator(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# ---- moto's tests ---------------------------------------------------------------------


def moto_tests():
    """moto's test tree of the installed moto version, from its sdist on PyPI."""
    version = importlib.metadata.version("moto")
    root = CACHE / f"moto-{version}"
    if (root / "tests" / "test_emr").is_dir():
        return version, root
    CACHE.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
                    "--no-deps", f"moto=={version}", "-d", str(CACHE)], check=True)
    sdist = CACHE / f"moto-{version}.tar.gz"
    with tarfile.open(sdist) as archive:
        wanted = [m for m in archive.getmembers()
                  if re.match(rf"moto-{re.escape(version)}/tests/(__init__\.py|conftest\.py|"
                              r"test_emr/)", m.name)]
        archive.extractall(CACHE, members=wanted, filter="data")
    return version, root


def run_moto(root, endpoint, keys, report):
    env = dict(os.environ, TEST_SERVER_MODE="true", TEST_SERVER_MODE_ENDPOINT=endpoint,
               CONFORMANCE_ACCESS_KEY_ID=keys[0], CONFORMANCE_SECRET_ACCESS_KEY=keys[1],
               PYTHONPATH=f"{ROOT}{os.pathsep}{root}")
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        env.pop(name, None)
    subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "conformance" / "pytest.ini"),
         "--rootdir", str(root), "-p", "conformance.plugin", "tests/test_emr", "-q",
         "--tb=line", f"--junitxml={report}"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=3600)
    return junit_results(report)


def junit_results(report):
    """[(node, outcome, detail)] of a pytest JUnit XML report."""
    results = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        path = case.get("classname", "").replace(".", "/")
        node = f"{path}.py::{case.get('name')}"
        outcome, detail = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                detail = (child.get("message") or "").splitlines()[0][:160]
            elif child.tag == "skipped":
                outcome, detail = "skipped", (child.get("message") or "")[:160]
        results.append((node, outcome, detail))
    return results


# ---- this project's long runs --------------------------------------------------------------


def run_long(workdir):
    """[(node, outcome, detail)] of ``pytest -m conformance`` over this project's tests."""
    report = workdir / "long.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "conformance", "-q", "--tb=short",
         "-p", "no:cacheprovider", f"--basetemp={workdir / 'long'}", f"--junitxml={report}"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=3600)
    return junit_results(report)


# ---- the AWS CLI lifecycle ---------------------------------------------------------------


class Cli:
    def __init__(self, endpoint, keys, workdir):
        config = workdir / "aws-config"
        config.write_text("[default]\nregion = us-east-1\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.env.update(AWS_ACCESS_KEY_ID=keys[0], AWS_SECRET_ACCESS_KEY=keys[1],
                        AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(config),
                        AWS_SHARED_CREDENTIALS_FILE=str(workdir / "none"), AWS_PAGER="",
                        AWS_MAX_ATTEMPTS="2")
        self.endpoint = endpoint
        self.rows = []

    def __call__(self, label, *args, check=None, timeout=900):
        command = [str(AWS), "--endpoint-url", self.endpoint, "--output", "json", *args]
        started = time.monotonic()
        done = subprocess.run(command, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        seconds = time.monotonic() - started
        answer = None
        if done.returncode == 0 and done.stdout.strip().startswith(("{", "[")):
            answer = json.loads(done.stdout)
        ok, detail = done.returncode == 0, ""
        if not ok:
            detail = (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]
        elif check is not None:
            try:
                detail = check(answer if answer is not None else done.stdout) or ""
            except AssertionError as error:
                ok, detail = False, str(error) or "unexpected answer"
        self.rows.append((label, ok, f"{detail} ({seconds:.1f} s)".strip()))
        return answer if answer is not None else done.stdout


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def run_cli(endpoint, keys, workdir):
    if not AWS.is_file():
        sys.exit(f"ERROR: no AWS CLI at {AWS}: run 'make .venv-awscli' first")
    aws = Cli(endpoint, keys, workdir)
    bucket = "conformance-cli"
    (workdir / "job.py").write_text(SPARK_JOB)
    (workdir / "sleep.py").write_text(SLEEP_JOB)
    aws("s3 mb", "s3", "mb", f"s3://{bucket}")
    aws("s3 cp (the job)", "s3", "cp", str(workdir / "job.py"), f"s3://{bucket}/job.py")
    aws("s3 cp (a sleeper)", "s3", "cp", str(workdir / "sleep.py"), f"s3://{bucket}/sleep.py")
    created = aws("create-cluster", "emr", "create-cluster", "--name", "conformance",
                  "--release-label", "emr-7.12.0", "--applications", "Name=Spark",
                  "--instance-groups",
                  "InstanceGroupType=MASTER,InstanceCount=1,InstanceType=m5.xlarge",
                  "InstanceGroupType=CORE,InstanceCount=1,InstanceType=m5.xlarge",
                  "--service-role", "EMR_DefaultRole",
                  "--ec2-attributes", "InstanceProfile=EMR_EC2_DefaultRole",
                  "--log-uri", f"s3://{bucket}/logs/",
                  check=lambda a: expect(a["ClusterId"].startswith("j-"), "no cluster id"))
    cluster = created["ClusterId"] if isinstance(created, dict) else "j-NONE"
    aws("wait cluster-running", "emr", "wait", "cluster-running", "--cluster-id", cluster)
    added = aws("add-steps Type=Spark", "emr", "add-steps", "--cluster-id", cluster, "--steps",
                f"Type=Spark,Name=sum,ActionOnFailure=CONTINUE,Args=[s3://{bucket}/job.py]",
                check=lambda a: expect(len(a["StepIds"]) == 1, "no step id"))
    step = added["StepIds"][0] if isinstance(added, dict) else "s-NONE"
    aws("wait step-complete", "emr", "wait", "step-complete", "--cluster-id", cluster,
        "--step-id", step)
    aws("describe-step", "emr", "describe-step", "--cluster-id", cluster, "--step-id", step,
        check=lambda a: expect(a["Step"]["Status"]["State"] == "COMPLETED",
                               a["Step"]["Status"]["State"]) or "COMPLETED")
    aws("list-steps", "emr", "list-steps", "--cluster-id", cluster,
        check=lambda a: expect(step in [s["Id"] for s in a["Steps"]], "step not listed"))
    sleeper = aws("add-steps (a sleeper)", "emr", "add-steps", "--cluster-id", cluster,
                  "--steps", f"Type=Spark,Name=sleep,ActionOnFailure=CONTINUE,"
                             f"Args=[s3://{bucket}/sleep.py]")
    sleeper_id = sleeper["StepIds"][0] if isinstance(sleeper, dict) else "s-NONE"
    aws("cancel-steps", "emr", "cancel-steps", "--cluster-id", cluster, "--step-ids", sleeper_id,
        check=lambda a: expect(a["CancelStepsInfoList"][0]["Status"] == "SUBMITTED",
                               str(a["CancelStepsInfoList"])))
    deadline = time.monotonic() + 60
    state = None
    while time.monotonic() < deadline:
        answer = subprocess.run(
            [str(AWS), "--endpoint-url", endpoint, "--output", "json", "emr", "describe-step",
             "--cluster-id", cluster, "--step-id", sleeper_id],
            env=aws.env, capture_output=True, text=True, timeout=60)
        state = json.loads(answer.stdout)["Step"]["Status"]["State"] if answer.returncode == 0 \
            else None
        if state in ("CANCELLED", "COMPLETED", "FAILED", "INTERRUPTED"):
            break
        time.sleep(0.5)
    aws.rows.append(("cancelled step ends CANCELLED", state == "CANCELLED", str(state)))
    aws("modify-cluster", "emr", "modify-cluster", "--cluster-id", cluster,
        "--step-concurrency-level", "2",
        check=lambda a: expect(a["StepConcurrencyLevel"] == 2, str(a)))
    groups = aws("add-instance-groups", "emr", "add-instance-groups", "--cluster-id", cluster,
                 "--instance-groups",
                 "InstanceGroupType=TASK,InstanceCount=1,InstanceType=m5.xlarge",
                 check=lambda a: expect(a.get("InstanceGroupIds"), f"no InstanceGroupIds: {a}"))
    group_id = (groups.get("InstanceGroupIds") or ["ig-NONE"])[0] if isinstance(groups, dict) \
        else "ig-NONE"
    aws("modify-instance-groups", "emr", "modify-instance-groups", "--cluster-id", cluster,
        "--instance-groups", f"InstanceGroupId={group_id},InstanceCount=2")
    aws("describe-cluster (the task group asks for 2)", "emr", "describe-cluster",
        "--cluster-id", cluster,
        check=lambda a: expect([g["RequestedInstanceCount"] for g in a["Cluster"]["InstanceGroups"]
                                if g["Id"] == group_id] == [2], "not resized"))
    aws("put-auto-termination-policy", "emr", "put-auto-termination-policy", "--cluster-id",
        cluster, "--auto-termination-policy", "IdleTimeout=3600")
    aws("get-auto-termination-policy", "emr", "get-auto-termination-policy", "--cluster-id",
        cluster, check=lambda a: expect(a["AutoTerminationPolicy"]["IdleTimeout"] == 3600, str(a)))
    aws("describe-release-label", "emr", "describe-release-label", "--release-label",
        "emr-7.12.0", check=lambda a: expect({"Name": "spark", "Version": "3.5.6"}
                                             in a["Applications"], str(a["Applications"])))
    aws("list-instance-fleets", "emr", "list-instance-fleets", "--cluster-id", cluster,
        check=lambda a: expect(a["InstanceFleets"] == [], str(a)))
    aws("terminate-clusters", "emr", "terminate-clusters", "--cluster-ids", cluster)
    aws("wait cluster-terminated", "emr", "wait", "cluster-terminated", "--cluster-id", cluster)
    aws("describe-cluster after the end", "emr", "describe-cluster", "--cluster-id", cluster,
        check=lambda a: expect(a["Cluster"].get("MasterPublicDnsName"), "no MasterPublicDnsName"))

    # a step on a cluster of another release: the pyspark of its Spark, installed on first use
    other = aws("create-cluster emr-6.15.0 with a Spark step", "emr", "create-cluster",
                "--name", "spark-3.4", "--release-label", "emr-6.15.0", "--applications",
                "Name=Spark", "--instance-type", "m5.xlarge", "--instance-count", "1",
                "--service-role", "EMR_DefaultRole",
                "--ec2-attributes", "InstanceProfile=EMR_EC2_DefaultRole",
                "--log-uri", f"s3://{bucket}/logs/", "--auto-terminate", "--steps",
                f"Type=Spark,Name=sum,ActionOnFailure=CONTINUE,Args=[s3://{bucket}/job.py]")
    other_id = other["ClusterId"] if isinstance(other, dict) else "j-NONE"
    listed = aws("list-steps emr-6.15.0", "emr", "list-steps", "--cluster-id", other_id)
    other_step = listed["Steps"][0]["Id"] if isinstance(listed, dict) and listed["Steps"] else ""
    aws("wait step-complete emr-6.15.0 (pip installs pyspark 3.4 on first use)", "emr", "wait",
        "step-complete", "--cluster-id", other_id, "--step-id", other_step, timeout=1800)
    import gzip

    try:
        raw = subprocess.run(
            [str(AWS), "--endpoint-url", endpoint, "s3", "cp",
             f"s3://{bucket}/logs/{other_id}/steps/{other_step}/controller.gz", "-"],
            env=aws.env, capture_output=True, timeout=120).stdout
        text = gzip.decompress(raw).decode(errors="replace")
    except (OSError, ValueError, EOFError, subprocess.SubprocessError):
        text = ""
    found = re.search(r"(installed|using) pyspark (\S+) for Spark 3\.4[^\n]*", text)
    warned = re.search(r"WARNING: emr-6\.15\.0 ships Spark 3\.4[^\n]*", text)
    spark_line = found.group(0) if found else (warned.group(0) if warned else "")
    aws.rows.append(("s3 cp .../controller.gz - (the step ran on pyspark 3.4)", bool(found),
                     spark_line[:200] or "no pyspark line in the controller log"))
    return aws.rows, spark_line


# ---- the report ------------------------------------------------------------------------


def tally(results):
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for _node, outcome, _detail in results:
        counts[outcome] += 1
    return counts


def long_lines(long_results):
    counts = tally(long_results)
    return f"| this project's long runs (pytest -m conformance) | {counts['passed']} | " \
           f"{counts['failed']} | {counts['skipped']} |"


def long_failures(long_results):
    failed = [(n, d) for n, o, d in long_results if o == "failed"]
    if not failed:
        return []
    return ["Long runs of this project that failed:", "",
            *[f"- `{node}`: {detail}" for node, detail in failed], ""]


def report(version, moto_results, cli_rows, spark_line, long_results):
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for _node, outcome, _detail in moto_results:
        counts[outcome] += 1
    failed = [(n, d) for n, o, d in moto_results if o == "failed"]
    unexpected = [(n, d) for n, d in failed if n not in MOTO_ONLY]
    cli_passed = sum(1 for _label, ok, _detail in cli_rows if ok)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    lines = [
        f"Last run {when}: moto {version}'s `tests/test_emr` in server mode against the "
        f"emulator, the AWS CLI lifecycle, and this project's long runs.",
        "",
        "| suite | passed | failed | skipped |",
        "| --- | --- | --- | --- |",
        f"| moto {version} tests/test_emr | {counts['passed']} | {counts['failed']} "
        f"({len(failed) - len(unexpected)} moto-only, {len(unexpected)} unexpected) | "
        f"{counts['skipped']} |",
        f"| AWS CLI lifecycle | {cli_passed} | {len(cli_rows) - cli_passed} | 0 |",
        long_lines(long_results),
        "",
        *long_failures(long_results),
    ]
    if failed:
        lines += ["moto's tests that still fail, and the EMR behaviour that makes each fail:", ""]
        for node, detail in failed:
            why = MOTO_ONLY.get(node)
            lines.append(f"- `{node.split('::')[1]}`: "
                         + (why if why else f"**unexpected**: {detail}"))
        lines.append("")
    lines += ["| AWS CLI command | result |", "| --- | --- |"]
    for label, ok, detail in cli_rows:
        lines.append(f"| `aws {label}` | {'passed' if ok else 'FAILED: ' + detail} |")
    if spark_line:
        lines += ["", f"The emr-6.15.0 step's controller log: `{spark_line}`."]
    long_ok = tally(long_results)["failed"] == 0 and long_results
    return "\n".join(lines), bool(not unexpected and cli_passed == len(cli_rows) and long_ok)


def write_readme(text):
    readme = README.read_text()
    if BEGIN not in readme or END not in readme:
        print(f"(no conformance markers in {README}: the README is left as it is)")
        return
    head, rest = readme.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-readme", action="store_true", help="print only")
    parser.add_argument("--tests-only", action="store_true",
                        help="run this project's long runs (pytest -m conformance) alone; print only")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="cloudmesh-emr-conformance-"))
    if args.tests_only:
        try:
            long_results = run_long(workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print("\n".join(["| suite | passed | failed | skipped |", "| --- | --- | --- | --- |",
                         long_lines(long_results), "", *long_failures(long_results)]))
        return 0 if long_results and tally(long_results)["failed"] == 0 else 1
    version, root = moto_tests()
    try:
        process, endpoint, keys = start_emulator(workdir / "moto" / "state")
        try:
            moto_results = run_moto(root, endpoint, keys, workdir / "moto.xml")
        finally:
            stop_emulator(process)
        process, endpoint, keys = start_emulator(workdir / "cli" / "state")
        try:
            cli_rows, spark_line = run_cli(endpoint, keys, workdir)
        finally:
            stop_emulator(process)
        spark_line = spark_line.replace(str(workdir / "cli" / "state"), "<state folder>")
        long_results = run_long(workdir)
        text, ok = report(version, moto_results, cli_rows, spark_line, long_results)
        print(text)
        if not args.no_readme:
            write_readme(text)
        return 0 if ok else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
