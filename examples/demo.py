"""`make demo`: the whole EMR lifecycle on the local emulator, one printed command at a time.

It starts the embedded database and the emulator (unless they already run), shows
`doctor` finding EMR's default roles missing and `doctor --fix` making them,
starts a cluster and waits until it is ready (`start --wait`), uploads a PySpark word
count and a sample text, runs it with s3:// input and output, waits for the steps
(`cms emr wait`), reads the top words back from the emulated S3, stops the cluster,
then starts a cluster from a job-flow config with `--auto-terminate` that ends by itself
after its step, and stops what it started. No AWS account needed.
"""

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUCKET = "cloudmesh-emr-demo"
CMS = Path(sys.executable).parent / "cms"


def cms(*args, quiet=False, check=True):
    """Run `cms ARGS`, showing the command (and its output unless quiet); return stdout."""
    words = ["cms", *map(str, args)]
    if not quiet:
        print(f"\n$ {shlex.join(words)}", flush=True)
    done = subprocess.run([str(CMS), *map(str, args)], capture_output=True, text=True)
    if not quiet and done.stdout.strip():
        print(done.stdout.rstrip(), flush=True)
    if done.stderr.strip():
        print(done.stderr.rstrip(), file=sys.stderr, flush=True)
    if check and done.returncode != 0:
        raise SystemExit(f"demo stopped: '{shlex.join(words)}' exited {done.returncode}")
    return done.stdout.strip()


def say(text):
    print(f"\n# {text}", flush=True)


def s3_client():
    """boto3 on the emulator's S3, for the two things cms leaves to S3 tools (mb, cat)."""
    import boto3

    from cloudmesh.emr.local import control

    env = control.env()  # the endpoint and the emulator's own credentials
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                        region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def main():
    from cloudmesh.emr import agent
    from cloudmesh.emr.database import Database
    from cloudmesh.emr.local import control

    started = time.monotonic()
    db_was_running = Database().server is not None and Database().server.running() is not None
    emulator_was_running = control.endpoint() is not None
    agent_was_running = agent.supported() and agent.status() is not None
    cluster = None
    try:
        say("the embedded database records every result; the emulator speaks the EMR and S3 APIs")
        cms("emr", "db", "start")
        cms("emr", "local", "start")

        say("a new account has none of EMR's default roles: doctor finds them missing, "
            "doctor --fix makes them (as 'aws emr create-default-roles'); start checks them")
        cms("emr", "doctor", "--cloud=local", check=False)
        cms("emr", "doctor", "--fix", "--cloud=local")

        say("start a Spark cluster: the same command works on AWS without --cloud=local")
        cluster = cms("emr", "start", "demo", "--count=3", "--wait", "--cloud=local")
        cms("emr", "list", "clusters", "--status=active", "--cloud=local")

        say(f"a bucket for program, data and results (on AWS: aws s3 mb s3://{BUCKET})")
        s3 = s3_client()
        s3.create_bucket(Bucket=BUCKET)

        cms("emr", "upload", HERE / "wordcount.py", BUCKET, "wordcount.py", "--cloud=local")
        cms("emr", "upload", HERE / "data" / "sample.txt", BUCKET, "input/sample.txt",
            "--cloud=local")

        say("copy the program onto the master node, then run it with spark-submit")
        copy = cms("emr", "copy", cluster, BUCKET, "wordcount.py", "--cloud=local")
        # Spark refuses to write into an existing folder: one output folder per cluster
        output = f"output/{cluster}/"
        step = cms("emr", "run", cluster, BUCKET, "wordcount.py",
                   f"s3://{BUCKET}/input/sample.txt", f"s3://{BUCKET}/{output}", "--cloud=local")
        say("wait for both steps: exit 0 when they completed, 1 (and why) when one did not")
        cms("emr", "wait", cluster, copy, step, "--cloud=local")
        cms("emr", "list", "steps", cluster, "--cloud=local")

        say(f"the top words, read back from s3://{BUCKET}/{output}")
        lines = []
        for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=output).get("Contents", []):
            if Path(item["Key"]).name.startswith("part-"):
                body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read().decode()
                lines.extend(line for line in body.splitlines() if line.strip())
        counts = sorted((line.split("\t") for line in lines), key=lambda p: -int(p[1]))
        for word, count in counts[:10]:
            print(f"  {count:>5}  {word}")

        cms("emr", "describe", cluster, "--cloud=local")
        cms("emr", "list", "instances", cluster, "--cloud=local")
        say("stop the cluster: on AWS this is what stops the bill")
        cms("emr", "stop", cluster, "--cloud=local")
        cluster = None

        say("a whole job flow from a config file; --auto-terminate ends it after its step")
        config = {"ReleaseLabel": "emr-7.12.0", "Applications": [{"Name": "Spark"}],
                  "Instances": {"InstanceGroups": [
                      {"Name": "Primary node", "InstanceRole": "MASTER", "Market": "ON_DEMAND",
                       "InstanceType": "m5.xlarge", "InstanceCount": 1}]},
                  "Steps": [{"Name": "fetch the counts", "ActionOnFailure": "TERMINATE_CLUSTER",
                             "HadoopJarStep": {"Jar": "command-runner.jar", "Args": [
                                 "aws", "s3", "cp", f"s3://{BUCKET}/wordcount.py",
                                 "/home/hadoop/"]}}]}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
            json.dump(config, file, indent=2)
        try:
            print(f"\n$ cat {file.name}\n{json.dumps(config, indent=2)}", flush=True)
            ended = cms("emr", "start", "once", f"--config={file.name}", "--auto-terminate",
                        "--cloud=local")
        finally:
            os.unlink(file.name)
        cms("emr", "wait", ended, "--until=terminated", "--cloud=local")
        cms("emr", "describe", ended, "--cloud=local")
        cms("emr", "db", "status")
    finally:
        if cluster:
            cms("emr", "stop", cluster, "--cloud=local", check=False)
        if not emulator_was_running:
            cms("emr", "local", "stop", "--force", check=False)
        if not db_was_running:
            cms("emr", "db", "stop", check=False)
        if not agent_was_running:  # the agent the demo's first command started
            cms("emr", "agent", "stop", check=False)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
