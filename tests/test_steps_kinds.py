"""Every kind of step EMR users submit, run on the emulator, its output checked.

command-runner.jar with bash -c, hadoop-streaming, aws s3 sync, spark-example (SparkPi),
script-runner.jar, a custom jar (a Spark application built here with javac against
pyspark's jars), cancelling a pending and a running step, and failures read back through
`cms emr logs` and `cms emr diagnose`. Everything is read back with boto3 (the steps' logs
in S3, their output objects) or through the `cms` command, as a user would.
"""

import gzip
import json
import re
import shutil
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest

from local_fixtures import wait_for

MAPPER = """#!/usr/bin/env python3
import sys
for line in sys.stdin:
    for word in line.split():
        print(f"{word.lower()}\\t1")
"""
REDUCER = """#!/usr/bin/env python3
import sys
current, total = None, 0
for line in sys.stdin:
    word, count = line.rstrip("\\n").split("\\t")
    if word != current:
        if current is not None:
            print(f"{current}\\t{total}")
        current, total = word, 0
    total += int(count)
if current is not None:
    print(f"{current}\\t{total}")
"""
BAD_MAPPER = """#!/usr/bin/env python3
import sys
for number, line in enumerate(sys.stdin):
    fields = line.split()
    print(fields[3])
"""
TEXT_A = "the quick brown fox\nThe lazy dog\n"
TEXT_B = "the end\nquick quick\n"
JAVA_MAIN = """
package demo;

public class Hello {
    public static void main(String[] args) {
        org.apache.spark.SparkConf conf = new org.apache.spark.SparkConf();
        System.out.println("hello from a jar: " + String.join(",", args) + " on Spark "
                           + org.apache.spark.package$.MODULE$.SPARK_VERSION());
    }
}
"""


def step(name, args, action="CONTINUE", jar="command-runner.jar", **extra):
    return {"Name": name, "ActionOnFailure": action,
            "HadoopJarStep": {"Jar": jar, "Args": list(args), **extra}}


@pytest.fixture(scope="module")
def bucket(s3):
    name = f"kinds-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    for key, body in {"jobs/mapper.py": MAPPER, "jobs/reducer.py": REDUCER,
                      "jobs/bad_mapper.py": BAD_MAPPER, "in/a.txt": TEXT_A,
                      "in/b.txt": TEXT_B,
                      "jobs/setup.sh": "#!/bin/bash\necho \"set up with $1\"\n"}.items():
        s3.put_object(Bucket=name, Key=key, Body=body.encode())
    return name


@pytest.fixture(scope="module")
def cluster(emr, s3, emulator):
    """One waiting cluster for the module's steps (they run one at a time)."""
    try:
        s3.create_bucket(Bucket="kinds-logs")
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    answer = emr.run_job_flow(
        Name="kinds", ReleaseLabel="emr-7.12.0", LogUri="s3://kinds-logs/emr/",
        Applications=[{"Name": "Spark"}, {"Name": "Hadoop"}],
        Instances={"InstanceGroups": [
            {"InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1}],
            "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole")
    cluster_id = answer["JobFlowId"]
    emulator.wait_cluster(cluster_id, ["WAITING"], timeout=60)
    yield cluster_id
    emr.terminate_job_flows(JobFlowIds=[cluster_id])


@pytest.fixture
def local_cms(emulator, cm, cms):
    """`cms emr ... --cloud=local` in this process, on the session's emulator."""
    cm.write(clouds=emulator.profile())

    def run(*args):
        return cms(*args, "--cloud=local")

    return run


def add(emr, cluster_id, *steps):
    return emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=list(steps))["StepIds"]


def log_of(s3, cluster_id, step_id, name):
    body = s3.get_object(Bucket="kinds-logs", Key=f"emr/{cluster_id}/steps/{step_id}/{name}.gz")
    return gzip.decompress(body["Body"].read()).decode()


def finished(emulator, cluster_id, step_id, timeout=60):
    return emulator.wait_step(cluster_id, step_id,
                              ["COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED"], timeout)


# ---- steps without Spark -----------------------------------------------------------------


def test_bash_c_writes_its_output_to_stdout_gz(emulator, emr, s3, cluster):
    [step_id] = add(emr, cluster, step("bash", ["bash", "-c", "echo hello from bash; pwd; "
                                               "echo oops >&2"]))
    assert finished(emulator, cluster, step_id)["Status"]["State"] == "COMPLETED"
    stdout = log_of(s3, cluster, step_id, "stdout")
    assert stdout.splitlines() == ["hello from bash", "/home/hadoop"]
    assert "oops" in log_of(s3, cluster, step_id, "stderr")
    assert "bash" in log_of(s3, cluster, step_id, "controller")


def test_hadoop_streaming_word_count_counts_right(emulator, emr, s3, cluster, bucket, local_cms):
    result = local_cms("stream", cluster, f"--mapper=s3://{bucket}/jobs/mapper.py",
                       f"--reducer=s3://{bucket}/jobs/reducer.py",
                       f"--input=s3://{bucket}/in/", f"--output=s3://{bucket}/counts/")
    assert result.code == 0, result.err
    step_id = result.out.strip()
    assert finished(emulator, cluster, step_id)["Status"]["State"] == "COMPLETED"
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="counts/")["Contents"])
    assert keys == ["counts/_SUCCESS", "counts/part-00000"]
    lines = s3.get_object(Bucket=bucket, Key="counts/part-00000")["Body"].read().decode()
    counts = dict(line.split("\t") for line in lines.splitlines())
    words = (TEXT_A + TEXT_B).lower().split()
    assert counts == {word: str(words.count(word)) for word in set(words)}
    assert list(counts) == sorted(counts)  # the reducer saw its keys sorted
    # the same output again: Hadoop refuses an output folder that exists
    again = local_cms("stream", cluster, f"--mapper=s3://{bucket}/jobs/mapper.py",
                      f"--reducer=s3://{bucket}/jobs/reducer.py",
                      f"--input=s3://{bucket}/in/", f"--output=s3://{bucket}/counts/")
    failed = finished(emulator, cluster, again.out.strip())
    assert failed["Status"]["State"] == "FAILED"
    assert "already exists" in failed["Status"]["FailureDetails"]["Message"]
    diagnosis = json.loads(local_cms("diagnose", cluster, again.out.strip(),
                                     "--format=json").out)[0]
    assert diagnosis["Class"] == "output-exists"


def test_a_failing_mapper_fails_the_step_with_its_stderr_diagnosed(emulator, emr, s3, cluster,
                                                                     bucket, local_cms):
    [step_id] = add(emr, cluster, step("bad stream", [
        "hadoop-streaming", "-files", f"s3://{bucket}/jobs/bad_mapper.py",
        "-mapper", "bad_mapper.py", "-reducer", "cat", "-input", f"s3://{bucket}/in/a.txt",
        "-output", f"s3://{bucket}/bad-out/"]))
    done = finished(emulator, cluster, step_id)
    assert done["Status"]["State"] == "FAILED"
    assert "IndexError" in done["Status"]["FailureDetails"]["Message"]
    assert "subprocess failed with code 1" in log_of(s3, cluster, step_id, "stderr")
    result = local_cms("diagnose", cluster, step_id, "--format=json")
    diagnosis = json.loads(result.out)[0]
    assert diagnosis["Class"] == "python-exception"
    assert diagnosis["Line"] == "IndexError: list index out of range"
    assert diagnosis["Where"]["File"].endswith("bad_mapper.py")
    assert diagnosis["Where"]["Line"] == 5
    assert "bad-out/_SUCCESS" not in {o["Key"] for o in s3.list_objects_v2(
        Bucket=bucket).get("Contents", [])}


def test_script_runner_runs_its_script_from_s3_with_bash(emulator, emr, s3, cluster, bucket):
    [step_id] = add(emr, cluster, step(
        "script", [f"s3://{bucket}/jobs/setup.sh", "numpy"],
        jar="s3://us-east-1.elasticmapreduce/libs/script-runner/script-runner.jar"))
    assert finished(emulator, cluster, step_id)["Status"]["State"] == "COMPLETED"
    assert log_of(s3, cluster, step_id, "stdout").strip() == "set up with numpy"


def test_aws_s3_sync_copies_a_folder_to_the_master(emulator, emr, s3, cluster, bucket):
    [step_id] = add(emr, cluster, step("sync", ["aws", "s3", "sync", f"s3://{bucket}/in/",
                                                "/home/hadoop/in/"]))
    assert finished(emulator, cluster, step_id)["Status"]["State"] == "COMPLETED"
    home = emulator.master(cluster) / "home" / "hadoop" / "in"
    assert (home / "a.txt").read_text() == TEXT_A and (home / "b.txt").read_text() == TEXT_B


def test_cancel_a_pending_and_a_running_step(emulator, emr, s3, cluster, local_cms):
    running, pending = add(emr, cluster, step("sleeper", ["bash", "-c", "echo started; sleep 60"]),
                           step("after", ["bash", "-c", "echo never"]))
    emulator.wait_step(cluster, running, ["RUNNING"], timeout=60)
    wait_for(lambda: "started" in (emulator.master(cluster) / "mnt/var/log/hadoop/steps" /
                                   running / "stdout").read_text(), 30, what="the sleeper")
    result = local_cms("cancel", cluster, pending, running, "--format=json")
    assert result.code == 0, result.err
    answers = {a["Target"]: a["Response"] for a in json.loads(result.out)}
    assert answers[pending]["Status"] == "SUBMITTED" and answers[pending]["PreviousState"] == "PENDING"
    assert answers[running]["PreviousState"] == "RUNNING"
    assert finished(emulator, cluster, pending)["Status"]["State"] == "CANCELLED"
    assert finished(emulator, cluster, running)["Status"]["State"] in ("CANCELLED", "INTERRUPTED")
    # cancelling them again: each is reported as ended, not an error
    again = local_cms("cancel", cluster, pending, running)
    assert again.code == 0 and again.out.count("already ended") == 2


def test_logs_through_cms_and_an_unknown_command(emulator, emr, s3, cluster, local_cms):
    [step_id] = add(emr, cluster, step("hive", ["hive-script", "--run-hive-script", "q.sql"]))
    done = finished(emulator, cluster, step_id)
    assert done["Status"]["State"] == "FAILED"
    result = local_cms("logs", cluster, step_id)
    assert result.code == 0 and "hive-script" in result.out
    controller = local_cms("logs", cluster, step_id, "--file=controller", "--tail=1")
    assert controller.code == 0 and len(controller.out.strip().splitlines()) == 1


# ---- steps with Spark (few: each starts a JVM) --------------------------------------------------


def test_spark_example_names_an_example_it_does_not_have(emulator, emr, s3, cluster):
    # SparkPi itself runs (and prints Pi) in the Airflow job flow of
    # tests/test_lifecycle_emulator.py: one real SparkPi run in the suite
    [missing] = add(emr, cluster, step("no such", ["spark-example", "SparkNoSuchThing"]))
    failed = finished(emulator, cluster, missing)
    assert failed["Status"]["FailureDetails"]["Reason"] == "Example not available"
    assert "SparkNoSuchThing" in failed["Status"]["FailureDetails"]["Message"]


@pytest.mark.skipif(not shutil.which("javac") or not shutil.which("jar"), reason="needs a JDK")
def test_a_custom_jar_step_runs_its_main_class(emulator, emr, s3, cluster, bucket, tmp_path,
                                               local_cms):
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    source = tmp_path / "demo" / "Hello.java"
    source.parent.mkdir()
    source.write_text(textwrap.dedent(JAVA_MAIN))
    subprocess.run(["javac", "-cp", f"{jars}/*", "-d", str(tmp_path / "classes"), str(source)],
                   check=True, capture_output=True, timeout=180)
    jar = tmp_path / "hello.jar"
    subprocess.run(["jar", "cf", str(jar), "-C", str(tmp_path / "classes"), "."], check=True,
                   capture_output=True, timeout=60)
    s3.upload_file(str(jar), bucket, "jobs/hello.jar")
    [step_id] = add(emr, cluster, step("jar", ["one", "two"], jar=f"s3://{bucket}/jobs/hello.jar",
                                       MainClass="demo.Hello"))
    done = finished(emulator, cluster, step_id, timeout=240)
    assert done["Status"]["State"] == "COMPLETED", done["Status"]
    assert "hello from a jar: one,two on Spark 3." in log_of(s3, cluster, step_id, "stdout")
    # a --class the jar does not hold: class-not-found, naming it
    [wrong] = add(emr, cluster, step("wrong class", [], jar=f"s3://{bucket}/jobs/hello.jar",
                                     MainClass="demo.Helo"))
    assert finished(emulator, cluster, wrong, timeout=240)["Status"]["State"] == "FAILED"
    found = json.loads(local_cms("diagnose", cluster, wrong, "--format=json").out)[0]
    assert found["Class"] == "class-not-found", found
    assert "demo.Helo" in found["Line"]


# ---- failing programs on the emulator, each diagnosed to its class with its line ------------

FAILING = {
    # class: (program, the line, the program line the diagnosis names or None)
    "syntax-error": ("import sys\ndef broken(:\n    pass\n", "SyntaxError: invalid syntax", 2),
    "missing-module": ("import sys\nimport no_such_module_here\n",
                       "ModuleNotFoundError: No module named 'no_such_module_here'", 2),
    "java-exception": (
        "from pyspark.sql import SparkSession\n"
        "spark = SparkSession.builder.getOrCreate(); spark.sparkContext.setLogLevel('ERROR')\n"
        "spark.sparkContext._jvm.java.net.URI('::bad')\n",
        "java.net.URISyntaxException: Expected scheme name at index 0: ::bad", 3),
}


@pytest.mark.parametrize("kind", sorted(FAILING))
def test_failing_programs_are_diagnosed(emulator, emr, s3, cluster, bucket, local_cms, kind):
    program, line, number = FAILING[kind]
    s3.put_object(Bucket=bucket, Key=f"broken/{kind}.py", Body=program.encode())
    result = local_cms("run", cluster, bucket, f"broken/{kind}.py", "--name", kind)
    assert result.code == 0, result.err
    step_id = result.out.strip()
    assert finished(emulator, cluster, step_id, timeout=240)["Status"]["State"] == "FAILED"
    found = json.loads(local_cms("diagnose", cluster, step_id, "--format=json").out)[0]
    assert found["Class"] == kind, found
    assert "Where" in found, {k: found.get(k) for k in ("Line", "Log", "LogLine", "Excerpt")}
    assert found["Line"] == line
    assert found["Where"]["File"] == f"s3://{bucket}/broken/{kind}.py" or \
        found["Where"]["File"].endswith(f"/{kind}.py")
    assert found["Where"]["Line"] == number
    assert found["Name"] == kind


def test_cheap_failures_need_no_spark_job(emulator, emr, s3, cluster, bucket, local_cms):
    """A missing application (before Spark starts) and a bad spark-submit option."""
    missing = local_cms("run", cluster, bucket, "jobs/typo.py").out.strip()
    bad = add(emr, cluster, step("bad option", ["spark-submit", "--no-such-option",
                                                f"s3://{bucket}/jobs/mapper.py"]))[0]
    for step_id, kind, words in ((missing, "s3-not-found", f"s3://{bucket}/jobs/typo.py"),
                                 (bad, "bad-arguments", "--no-such-option")):
        assert finished(emulator, cluster, step_id, timeout=120)["Status"]["State"] == "FAILED"
        found = json.loads(local_cms("diagnose", cluster, step_id, "--format=json").out)[0]
        assert found["Class"] == kind, found
        assert words in found["Line"]


def test_cluster_deploy_mode_keeps_the_driver_output_in_its_container_logs(
        emulator, emr, s3, cluster, bucket, local_cms):
    s3.put_object(Bucket=bucket, Key="broken/raises.py",
                  Body=b"import sys\nprint('driver starts')\nraise ValueError('no input given')\n")
    [step_id] = add(emr, cluster, step("cluster mode", [
        "spark-submit", "--deploy-mode", "cluster", f"s3://{bucket}/broken/raises.py"]))
    assert finished(emulator, cluster, step_id, timeout=240)["Status"]["State"] == "FAILED"
    stderr = log_of(s3, cluster, step_id, "stderr")
    [application] = sorted(set(re.findall(r"application_\d+_\d+", stderr)))
    assert "finished with failed status" in stderr
    keys = [o["Key"] for o in s3.list_objects_v2(
        Bucket="kinds-logs", Prefix=f"emr/{cluster}/containers/{application}/")["Contents"]]
    stdout_key = next(k for k in keys if k.endswith("_01_000001/stdout.gz"))
    driver = gzip.decompress(s3.get_object(Bucket="kinds-logs", Key=stdout_key)["Body"].read())
    assert b"driver starts" in driver
    found = json.loads(local_cms("diagnose", cluster, step_id, "--format=json").out)[0]
    assert found["Class"] == "python-exception", found
    assert found["Line"] == "ValueError: no input given"
    assert found["Where"]["Line"] == 3 and found["Where"]["File"].endswith("raises.py")
    assert "/containers/" in found["Log"]


# ---- run --wait and stream --wait: the final state, and the cause on stderr ----------------


def test_run_wait_exits_1_with_the_probable_cause_on_stderr(emulator, cluster, bucket, local_cms):
    result = local_cms("run", cluster, bucket, "jobs/nothing-here.py", "--wait")
    assert result.code == 1
    step_id, state = result.out.split()[-2:]
    assert state == "FAILED" and step_id.startswith("s-")
    assert "Cause: S3 object or bucket missing [s3-not-found]" in result.err
    assert f"s3://{bucket}/jobs/nothing-here.py does not exist" in result.err
    assert "Hint:" in result.err and "Traceback" not in result.err


def test_stream_wait_reports_completed_and_a_failed_mapper(emulator, cluster, bucket, local_cms):
    ok = local_cms("stream", cluster, f"--mapper=s3://{bucket}/jobs/mapper.py",
                   f"--reducer=s3://{bucket}/jobs/reducer.py", f"--input=s3://{bucket}/in/a.txt",
                   f"--output=s3://{bucket}/waited/", "--name=counted", "--wait")
    assert ok.code == 0, ok.err
    assert ok.out.split()[-1] == "COMPLETED"
    bad = local_cms("stream", cluster, f"--mapper=s3://{bucket}/jobs/bad_mapper.py",
                    f"--reducer=s3://{bucket}/jobs/reducer.py", f"--input=s3://{bucket}/in/a.txt",
                    f"--output=s3://{bucket}/waited-bad/", "--wait")
    assert bad.code == 1
    assert bad.out.split()[-1] == "FAILED"
    assert "Cause: Python exception [python-exception]" in bad.err
    assert "IndexError: list index out of range" in bad.err and "bad_mapper.py:5" in bad.err


def test_wait_on_a_cancelled_step_exits_1_and_says_it_was_cancelled(emulator, emr, cluster,
                                                                    local_cms):
    running, pending = add(emr, cluster, step("long", ["bash", "-c", "sleep 30"]),
                           step("later", ["bash", "-c", "echo later"]))
    emulator.wait_step(cluster, running, ["RUNNING"], timeout=60)
    assert local_cms("cancel", cluster, pending, running).code == 0
    result = local_cms("wait", cluster, pending, "--delay=0.2", "--timeout=60")
    assert result.code == 1
    assert result.out.split() == [pending, "CANCELLED"]
    assert "[cancelled]" in result.err


def test_a_failed_bootstrap_action_is_diagnosed_with_its_exit_code_and_stderr(
        emulator, emr, s3, bucket, local_cms):
    s3.put_object(Bucket=bucket, Key="bootstrap/ok.sh", Body=b"echo fine\n")
    s3.put_object(Bucket=bucket, Key="bootstrap/install.sh",
                  Body=b"echo \"No matching distribution found for $1\" >&2\nexit 3\n")
    answer = emr.run_job_flow(
        Name="bad bootstrap", ReleaseLabel="emr-7.12.0", LogUri="s3://kinds-logs/emr/",
        Applications=[{"Name": "Spark"}],
        Instances={"InstanceGroups": [
            {"InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1}],
            "KeepJobFlowAliveWhenNoSteps": True},
        BootstrapActions=[
            {"Name": "fine", "ScriptBootstrapAction": {"Path": f"s3://{bucket}/bootstrap/ok.sh"}},
            {"Name": "install-deps", "ScriptBootstrapAction": {
                "Path": f"s3://{bucket}/bootstrap/install.sh", "Args": ["numpy==0.0.1"]}}],
        JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole")
    cluster_id = answer["JobFlowId"]
    emulator.wait_cluster(cluster_id, ["TERMINATED_WITH_ERRORS"], timeout=60)
    result = local_cms("diagnose", cluster_id, "--format=json")
    assert result.code == 0, result.err
    [found] = json.loads(result.out)
    assert found["Class"] == "bootstrap-failure", found
    assert "bootstrap action 2 returned a non-zero return code" in found["Line"]
    action = found["BootstrapAction"]
    assert (action["Number"], action["Name"], action["ExitCode"]) == (2, "install-deps", 3)
    assert any("No matching distribution found for numpy==0.0.1" in line
               for line in action["Stderr"])
    assert "install-deps" in found["Hint"] and "exit code 3" in found["Hint"]
