"""The step runner: carries out one command-runner.jar step on this machine.

Each cluster has a master folder under the emulator's state folder that stands in
for the master node's file system (``/home/hadoop`` is ``<master>/home/hadoop``).
A step runs in ``<master>/mnt/var/lib/hadoop/steps/<step-id>``, writes its output
to ``<master>/mnt/var/log/hadoop/steps/<step-id>/{controller,stdout,stderr}``, and
those logs are gzip'ed to ``<LogUri>/<cluster-id>/steps/<step-id>/`` as EMR does.

Before Spark starts, the application and the files named by --py-files, --files,
--jars, --archives and --properties-file must exist (a missing one fails the step at
once, not after a JVM start), and Java must be new enough for the installed pyspark.
A failed step's FailureDetails name paths as the step did (``s3://...``,
``/home/hadoop/...``), not as the local mirror holds them.

Steps stay in the cluster: a step runs with its working folder, HOME
(``/home/hadoop``) and TMPDIR inside the cluster's master folder; what it names must
be in S3, in the master folder or among what EMR ships (``commands.SHIPPED``); and
what the emulator itself copies or uploads for it never follows a symbolic link out
of the master folder (such a link stands for a file the cluster does not have).
What the user's own program opens is up to that program: it runs as the user.

``spark-submit`` runs as a child process in its own process group, so that
cancelling the step (CancelSteps, the cluster terminating, the daemon stopping)
stops Spark's JVM and its Python workers together. ``aws s3 cp`` runs in-process.
"""

import gzip
import importlib.metadata
import importlib.util
import logging
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from cloudmesh.emr.local.commands import (
    HOME,
    SHIPPED,
    aws_method,
    bash_script,
    cluster_mode,
    cluster_path,
    command_method,
    example_program,
    sort_records,
    step_kind,
    streaming_key,
    streaming_plan,
    StepFailure,
    last_error_line,
    master_path,
    mirror_path,
    not_on_cluster,
    s3_cp_plan,
    spark_plan,
    split_s3,
)

log = logging.getLogger(__name__)

SPARK_SUBMIT_ENV = "CLOUDMESH_EMR_LOCAL_SPARK_SUBMIT"  # another spark-submit to use
INSTALL_PYSPARK = "pip install 'cloudmesh-emr[local]'"
GRACE = 5.0  # seconds between SIGTERM and SIGKILL when a step is stopped
INSTALL_JAVA = (
    "install Java 17 (for example OpenJDK 17), put its java on PATH or set JAVA_HOME, "
    "then restart the emulator"
)
JAVA_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


@dataclass
class Result:
    ok: bool
    failure: dict = None


def inside(path, root):
    """Whether ``path``, its symbolic links followed, lies in folder ``root``."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def files_under(folder, root):
    """The files under ``folder`` that lie in ``root``; links out of it are skipped."""
    found = []
    for top, dirs, names in os.walk(folder):  # does not descend into linked folders
        dirs[:] = [d for d in dirs if inside(os.path.join(top, d), root)]
        for name in names:
            path = Path(top) / name
            if inside(path, root) and path.is_file():
                found.append(path)
    return found


def shipped_folders(spark_home=None):
    """{emulated folder: local folder} of what EMR ships, as far as it is installed.

    ``spark_home``: the pyspark the step runs with, which stands for /usr/lib/spark.
    """
    folders = {}
    for prefix, package in SHIPPED.items():
        if package == "pyspark" and spark_home:
            folders[prefix] = str(spark_home)
            continue
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            folders[prefix] = str(Path(spec.origin).parent)
    return folders


def hidden(relative):
    """Files that are not uploaded: Spark's .crc checksums and other dot files, _temporary."""
    return any(part.startswith(".") or part == "_temporary" for part in relative.parts)


# Spark's PythonRunner merges the driver's stderr into its stdout; EMR users look for
# a Python traceback in the step's stderr, so the driver runs through this wrapper,
# which appends its stderr to the step's stderr log.
DRIVER_WRAPPER = """#!/bin/sh
# PySpark driver of a cloudmesh-emr local step: stderr to the step's stderr log
if [ -n "$CLOUDMESH_EMR_STEP_STDERR" ]; then
  exec "$CLOUDMESH_EMR_PYTHON" "$@" 2>>"$CLOUDMESH_EMR_STEP_STDERR"
fi
exec "$CLOUDMESH_EMR_PYTHON" "$@"
"""


class Runner:
    """What every step run shares: the endpoint, the state folder, S3 clients."""

    def __init__(self, endpoint, state_dir, region="us-east-1", credentials=None):
        self.endpoint = endpoint
        self.credentials = credentials  # the daemon's own (credentials.Credentials)
        self.clusters_dir = Path(state_dir) / "clusters"
        self.started_ms = int(time.time() * 1000)  # as a ResourceManager's start time
        self.region = region
        self._clients = {}
        self._lock = threading.Lock()
        from cloudmesh.emr.local.pysparks import PysparkCache, java_major

        self.pysparks = PysparkCache(Path(state_dir) / "pyspark", java_major)
        self.driver = Path(state_dir) / "bin" / "pyspark-driver"
        self.driver.parent.mkdir(parents=True, exist_ok=True)
        self.driver.write_text(DRIVER_WRAPPER)
        self.driver.chmod(0o755)

    def launch(self, cluster, step, done):
        return StepRun(self, cluster, step, done)

    def master(self, cluster_id):
        return self.clusters_dir / cluster_id

    def s3(self, account):
        """A boto3 S3 client of the emulator itself, acting in ``account``."""
        return self.client("s3", account)

    def client(self, service, account):
        """A boto3 client of the emulator itself, acting in ``account``."""
        with self._lock:
            if (service, account) not in self._clients:
                import boto3
                from botocore.config import Config

                session = boto3.session.Session(region_name=self.region,
                                                **self.credentials.boto())
                client = session.client(
                    service,
                    endpoint_url=self.endpoint,
                    config=Config(
                        retries={"max_attempts": 3, "mode": "standard"},
                        s3={"addressing_style": "path"},
                        connect_timeout=5,
                        read_timeout=60,
                    ),
                )

                def in_account(request, **_):
                    request.headers["x-moto-account-id"] = account

                client.meta.events.register("before-sign", in_account)
                self._clients[service, account] = client
            return self._clients[service, account]


def spark_submit():
    """(program, SPARK_HOME or None) of the spark-submit to run; StepFailure if none."""
    override = os.environ.get(SPARK_SUBMIT_ENV)
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return override, None
        raise StepFailure(
            "pyspark is not installed",
            f"no spark-submit at {override} (set by {SPARK_SUBMIT_ENV}): {INSTALL_PYSPARK} "
            "where the emulator runs, then restart it",
        )
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.origin:
        raise StepFailure(
            "pyspark is not installed",
            f"spark-submit steps need pyspark where the emulator runs: {INSTALL_PYSPARK}, "
            "then restart it with 'cms emr local stop' and 'cms emr local start'",
        )
    home = Path(spec.origin).parent
    program = home / "bin" / "spark-submit"
    if not program.is_file():
        raise StepFailure(
            "pyspark is not installed",
            f"pyspark at {home} has no bin/spark-submit: {INSTALL_PYSPARK}",
        )
    return str(program), str(home)


def java(env, needed=None):
    """The java that spark-submit will run; StepFailure if there is none, or too old.

    ``needed``: the lowest Java major version the installed pyspark runs on (17 for
    pyspark 4, 8 for pyspark 3); None: the one of the installed pyspark, if any.
    """
    home = env.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        program = os.path.join(home, "bin", "java")
    else:
        program = shutil.which("java", path=env.get("PATH"))
    if not program:
        raise StepFailure(
            "Java is not installed", f"spark-submit needs a Java 17 runtime: {INSTALL_JAVA}"
        )
    needed = pyspark_java() if needed is None else needed
    found = java_version(program)
    if needed and found and found < needed:
        raise StepFailure(
            "Java is too old",
            f"the installed pyspark needs Java {needed} or later, {program} is Java {found}: "
            f"{INSTALL_JAVA}",
        )
    return program


def pyspark_java():
    """The lowest Java major version the installed pyspark runs on, or None if unknown."""
    try:
        major = int(importlib.metadata.version("pyspark").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None
    return 17 if major >= 4 else 8


_java_versions = {}


def java_version(program):
    """The major version of the ``program`` (a java), or None when it does not say."""
    try:
        key = (program, os.stat(program).st_mtime_ns)
    except OSError:
        return None
    if key not in _java_versions:
        try:
            done = subprocess.run([program, "-version"], capture_output=True, text=True,
                                  timeout=60, stdin=subprocess.DEVNULL)
            match = JAVA_VERSION.search(done.stderr + done.stdout)
        except (OSError, subprocess.SubprocessError):
            match = None
        version = None
        if match:  # "1.8.0_392" is Java 8, "17.0.15" Java 17
            version = int(match.group(1))
            if version == 1 and match.group(2):
                version = int(match.group(2))
        _java_versions[key] = version
    return _java_versions[key]


def as_on_emr(text, mirror, master):
    """``text`` with a step's local paths named as on EMR.

    ``mirror`` holds the step's copy of S3 (``mirror/bucket/key``: ``s3://bucket/key``),
    ``master`` stands for the master node's file system (``master/home/hadoop``:
    ``/home/hadoop``), so a failure message names what the user named.
    """
    mirror, master = str(mirror), str(master)
    for local, emr in ((f"file://{mirror}/", "s3://"), (f"file:{mirror}/", "s3://"),
                       (f"{mirror}/", "s3://"), (f"{master}/", "/")):
        text = text.replace(local, emr)
    return text


class Background:
    """Work carried out in a thread of its own (``self._thread``, running ``self._main``),
    which the engine starts, watches and joins: a step run, a cluster's bootstrap actions."""

    def start(self):
        self._thread.start()

    @property
    def alive(self):
        return self._thread.is_alive()

    def join(self, timeout=None):
        self._thread.join(timeout)


class StepRun(Background):
    """One step being carried out, in its own thread."""

    def __init__(self, runner, cluster, step, done):
        # read everything from moto's model now, under the engine's lock
        self.runner = runner
        self.account = cluster.emr_backend.account_id
        self.region = cluster.emr_backend.region_name
        self.cluster_id = cluster.id
        self.step_id = step.id
        self.jar = step.jar or ""
        self.args = [str(arg) for arg in (step.args or [])]
        self.main_class = (getattr(step, "hadoop_jar_step", None) or {}).get("MainClass")
        self.containers = []  # (application, container, local folder) of cluster-mode drivers
        self.log_uri = cluster.log_uri
        self.release = cluster.release_label
        self.done = done
        self.cancelled = False
        self._kill = None
        self._process = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name=f"step-{step.id}", daemon=True)
        self.master = runner.master(cluster.id)
        self.home = master_path(self.master, HOME)
        self.workdir = self.master / "mnt/var/lib/hadoop/steps" / step.id
        self.logdir = self.master / "mnt/var/log/hadoop/steps" / step.id

    # ---- control from the engine: start, alive and join come from Background ----------

    def cancel(self, kill=False):
        """Stop the step: SIGTERM to its process group, SIGKILL after GRACE seconds."""
        with self._lock:
            self.cancelled = True
            process = self._process
            if process is None or process.poll() is not None:
                return
            self._signal(signal.SIGKILL if kill else signal.SIGTERM)
            if not kill and self._kill is None:
                self._kill = threading.Timer(GRACE, self._signal, (signal.SIGKILL,))
                self._kill.daemon = True
                self._kill.start()

    def _signal(self, signum):
        process = self._process
        if process is None or process.returncode is not None:
            return
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass

    def _stragglers(self):
        """Once spark-submit has exited, end what it left behind in its process group."""
        with self._lock:
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # the group is empty: nothing was left behind

    # ---- the run ------------------------------------------------------------------

    def _main(self):
        result = Result(False, {"Reason": "Internal error of the local emulator",
                                "Message": "the step runner stopped unexpectedly"})
        try:
            result = self._run()
        except Exception:  # a defect of the emulator: the step must still end
            log.exception("step %s failed in the emulator", self.step_id)
        finally:
            if self._kill is not None:
                self._kill.cancel()
            self.done(self, result)

    def _run(self):
        for folder in (self.home, self.workdir, self.logdir):
            if not inside(folder, self.master):  # a link that a step left leads out
                return Result(False, {
                    "Reason": "Internal error of the local emulator",
                    "Message": f"/{folder.relative_to(self.master).as_posix()} leads out of "
                               "the cluster's file system: terminate this cluster"})
            folder.mkdir(parents=True, exist_ok=True)
        paths = {name: self.logdir / name for name in ("controller", "stdout", "stderr")}
        # append mode: the step's processes and the driver wrapper share the files
        with open(paths["controller"], "a") as ctl, open(paths["stdout"], "a") as out, open(
            paths["stderr"], "a"
        ) as err:
            self.ctl, self.out, self.err = ctl, out, err
            self.note(f"step {self.step_id} of cluster {self.cluster_id}: {self.jar} {self.args}")
            try:
                result = self._execute()
            except StepFailure as failure:
                print(failure.message, file=err)
                result = Result(False, {"Reason": failure.reason, "Message": failure.message})
            except Exception as error:  # a defect of the emulator: still end the step
                log.exception("step %s failed in the emulator", self.step_id)
                message = f"{type(error).__name__}: {error}"
                print(message, file=err)
                result = Result(False, {"Reason": "Internal error of the local emulator",
                                        "Message": message})
            if result.failure and result.failure.get("Message"):
                result.failure["Message"] = self.as_on_emr(result.failure["Message"])
            self.note(f"step ended: {'ok' if result.ok else result.failure}")
        log_file = self._upload_logs(paths)
        if result.failure is not None and log_file:
            result.failure["LogFile"] = log_file
        return result

    def as_on_emr(self, text):
        return as_on_emr(text, self.workdir / "s3", self.master)

    def note(self, line):
        self.ctl.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
        self.ctl.flush()

    def _execute(self):
        kind = step_kind(self.jar)
        if kind == "script":  # script-runner.jar SCRIPT ARGS
            return self._script(self.args)
        if kind == "jar":  # a custom jar: a Spark application (or any Java main class)
            main = ["--class", self.main_class] if self.main_class else []
            return self._spark([*main, self.jar, *self.args])
        method = command_method(self.args)
        if method == "_aws":
            method, rest = aws_method(self.args[1:])
            return getattr(self, method)(rest)
        if method == "_spark":
            return self._spark(self.args[1:])
        return getattr(self, method)(self.args)

    # ---- processes other than spark-submit ------------------------------------------

    def _process_run(self, command, cwd, env, stdin=None, stdout=None, data=None):
        """Run ``command`` as the step's process (cancel stops it); its exit code, and
        what it wrote on stdout when ``stdout`` is PIPE."""
        with self._lock:
            if self.cancelled:
                return None, b""
            try:
                self._process = subprocess.Popen(
                    command, cwd=cwd, env=env, stdin=stdin or subprocess.DEVNULL,
                    stdout=stdout or self.out, stderr=self.err, start_new_session=True)
            except OSError as error:
                raise StepFailure(
                    "Command failed",
                    f"java.io.IOException: Cannot run program \"{command[0]}\": "
                    f"error={error.errno}, {error.strerror}") from None
        output, _ = self._process.communicate(data)
        self._stragglers()
        return self._process.returncode, output or b""

    def _shell_env(self):
        """The environment of a bash, script or streaming process: HOME on the master,
        and the aws CLI pointed at the emulated S3."""
        env = dict(os.environ)
        env.update(self.confined_env(env))
        keys = self.runner.credentials.boto()
        env.update(AWS_ENDPOINT_URL=self.runner.endpoint, AWS_DEFAULT_REGION=self.region,
                   AWS_ACCESS_KEY_ID=keys["aws_access_key_id"],
                   AWS_SECRET_ACCESS_KEY=keys["aws_secret_access_key"],
                   PYTHONUNBUFFERED="1")
        for key in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
            env.pop(key, None)
        return env

    def _on_master(self, word):
        """A command-line word with ``/home/hadoop`` named as the master folder holds it."""
        return word.replace(HOME, str(self.home)) if HOME in word else word

    def _bash(self, args):
        """``bash -c SCRIPT`` or ``bash FILE ARGS``, in /home/hadoop on the master.

        FILE must be on the cluster (under /home/hadoop, or what EMR ships); any other
        path of this machine does not exist there, and nothing runs."""
        script = bash_script(args[1:])
        if script is not None:
            local = cluster_path(script, self.master, shipped_folders(), cwd=HOME)
            on_master = local is not None and Path(self.master) in local.parents
            if (local is None or not local.is_file()
                    or (on_master and not inside(local, self.master))):
                raise StepFailure("File not found",
                                  f"bash: {script}: No such file or directory (it does not "
                                  f"exist on the cluster)")
        command = ["bash", *[self._on_master(arg) for arg in args[1:]]]
        self.note(f"running {command}")
        code, _ = self._process_run(command, self.home, self._shell_env())
        self.note(f"bash exited with status {code}")
        if self.cancelled:
            return Result(False)
        if code != 0:
            raise StepFailure(f"bash exited with status {code}", self._last_error(
                f"bash exited with status {code}"))
        return Result(True)

    def _script(self, args):
        """script-runner.jar: fetch the script from S3 (or the master) and run it with bash."""
        if not args:
            raise StepFailure("Invalid command", "script-runner.jar needs a script: s3://... ARGS")
        where = split_s3(args[0])
        script = self.workdir / (posixpath.basename(args[0]) or "script")
        if where:
            from botocore.exceptions import ClientError

            try:
                self.runner.s3(self.account).download_file(where[0], where[1], str(script))
            except ClientError:
                raise StepFailure("File not found",
                                  f"script-runner.jar: {args[0]} does not exist in S3") from None
        elif self._master_file(args[0]):
            shutil.copyfile(self._master_file(args[0]), script)
        else:
            raise StepFailure("File not found", f"script-runner.jar: {args[0]} is neither in S3 "
                              f"nor under {HOME}/ on the master")
        script.chmod(0o755)
        command = ["bash", str(script), *[self._on_master(arg) for arg in args[1:]]]
        self.note(f"running {command}")
        code, _ = self._process_run(command, self.home, self._shell_env())
        self.note(f"script exited with status {code}")
        if self.cancelled:
            return Result(False)
        if code != 0:
            raise StepFailure(f"script exited with status {code}", self._last_error(
                f"{args[0]} exited with status {code}"))
        return Result(True)

    def _master_file(self, name):
        """The local file of ``name`` under /home/hadoop on the master, if it is one there
        (a link out of the cluster's folder is not)."""
        if not name.startswith(HOME + "/"):
            return None
        local = master_path(self.master, name)
        return local if local.is_file() and inside(local, self.master) else None

    def _last_error(self, default):
        self.err.flush()
        self.out.flush()
        stderr = (self.logdir / "stderr").read_text(errors="replace")
        return last_error_line(stderr) or default

    def _sync(self, args):
        """``aws s3 sync``: every file is copied (the emulator does not compare them)."""
        return self._copy(["--recursive", *args])

    def _example(self, args):
        """``spark-example CLASS ARGS`` and ``run-example``: the Python program of the same
        example, as pyspark ships it under /usr/lib/spark/examples/src/main/python/."""
        options, program, rest = example_program(args[1:])
        return self._spark([*options, program, *rest])

    # ---- hadoop-streaming ---------------------------------------------------------------

    def _streaming(self, args):
        """A real streaming run: the mapper over every input file, a sort by key, the
        reducer; part-NNNNN files and _SUCCESS under the output prefix in S3."""
        plan = streaming_plan(args[1:])
        s3 = self.runner.s3(self.account)
        task = self.workdir / "task"
        task.mkdir(parents=True, exist_ok=True)
        for name in plan.files:
            self._ship(s3, name, task)
        output = split_s3(plan.output)
        if not output:
            raise StepFailure("Invalid command",
                              f"hadoop-streaming: -output {plan.output} must be an s3:// folder")
        bucket, prefix = output[0], output[1].rstrip("/") + "/" if output[1].strip("/") else ""
        if self._s3_keys(s3, bucket, prefix) or (prefix and self._s3_keys(s3, bucket, prefix[:-1],
                                                                          exact=True)):
            raise StepFailure(
                "Output directory exists",
                "org.apache.hadoop.mapred.FileAlreadyExistsException: Output directory "
                f"{plan.output} already exists")
        splits = self._streaming_inputs(s3, plan.inputs)
        env = {**self._shell_env(), **plan.env}
        print(f"packageJobJar: [] [] {self.workdir}/streamjob.jar tmpDir=null", file=self.err)
        print(f"INFO mapreduce.JobSubmitter: number of splits:{len(splits)}", file=self.err,
              flush=True)
        mapped = []
        for uri, data in splits:
            out = self._streaming_task("map", plan.mapper, data, task, env, uri)
            if plan.combiner:
                out = self._streaming_task("combine", plan.combiner, sort_records(out), task,
                                           env, uri)
            mapped.append(out)
            if self.cancelled:
                return Result(False)
        if plan.reducers == 0:
            parts = mapped or [b""]
        else:
            buckets = [[] for _ in range(plan.reducers)]
            for out in mapped:
                for line in out.splitlines():
                    buckets[zlib.crc32(streaming_key(line)) % plan.reducers].append(line)
            parts = []
            for number, lines in enumerate(buckets):
                data = sort_records(b"\n".join(lines) + (b"\n" if lines else b""))
                if plan.reducer:
                    data = self._streaming_task("reduce", plan.reducer, data, task, env,
                                                f"partition {number}")
                parts.append(data)
                if self.cancelled:
                    return Result(False)
        for number, data in enumerate(parts):
            s3.put_object(Bucket=bucket, Key=f"{prefix}part-{number:05d}", Body=data)
        s3.put_object(Bucket=bucket, Key=f"{prefix}_SUCCESS", Body=b"")
        print(f"INFO mapreduce.Job: map 100% reduce 100%", file=self.err)
        print(f"INFO streaming.StreamJob: Output directory: {plan.output}", file=self.err,
              flush=True)
        return Result(True)

    def _s3_keys(self, s3, bucket, prefix, exact=False):
        from botocore.exceptions import ClientError

        try:
            if exact:
                s3.head_object(Bucket=bucket, Key=prefix)
                return [prefix]
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            return [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return []
            if error.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise StepFailure("Bucket not found",
                                  f"NoSuchBucket: The specified bucket does not exist: {bucket}") from None
            raise

    def _ship(self, s3, name, task):
        """A -files entry, into the tasks' working folder (executable, as Hadoop makes it)."""
        target = task / posixpath.basename(name.split("#", 1)[0])
        where = split_s3(name.split("#", 1)[0])
        if where:
            if not self._s3_keys(s3, where[0], where[1], exact=True):
                raise StepFailure("File not found", f"hadoop-streaming: -files {name}: "
                                  f"s3://{where[0]}/{where[1]} does not exist")
            s3.download_file(where[0], where[1], str(target))
        elif self._master_file(name):
            shutil.copyfile(self._master_file(name), target)
        else:
            raise StepFailure("File not found", f"hadoop-streaming: -files {name} is neither "
                              f"in S3 nor under {HOME}/ on the master")
        target.chmod(0o755)

    def _streaming_inputs(self, s3, inputs):
        """[(uri, bytes)]: every input file, decompressed when it ends in .gz."""
        splits = []
        for uri in inputs:
            where = split_s3(uri)
            if not where:
                raise StepFailure("Invalid command",
                                  f"hadoop-streaming: -input {uri} must be in s3://")
            bucket, key = where
            keys = self._s3_keys(s3, bucket, key, exact=True) if key and not key.endswith("/") else []
            if not keys:
                folder = key.rstrip("/") + "/" if key.strip("/") else ""
                keys = [k for k in self._s3_keys(s3, bucket, folder)
                        if not posixpath.basename(k).startswith(("_", ".")) and not k.endswith("/")]
            if not keys:
                raise StepFailure("Input path does not exist",
                                  "ERROR streaming.StreamJob: Error Launching job : "
                                  f"Input path does not exist: {uri}")
            for found in sorted(keys):
                data = s3.get_object(Bucket=bucket, Key=found)["Body"].read()
                if found.endswith(".gz"):
                    data = gzip.decompress(data)
                splits.append((f"s3://{bucket}/{found}", data))
        return splits

    def _streaming_task(self, kind, command, data, cwd, env, what):
        words = shlex.split(command)
        if not words:
            raise StepFailure("Invalid command", f"hadoop-streaming: an empty -{kind}")
        if (cwd / words[0]).is_file():
            words[0] = str(cwd / words[0])
        self.note(f"{kind} task over {what}: {words}")
        code, output = self._process_run(words, cwd, env, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, data=data)
        if code not in (0, None):
            message = ("java.lang.RuntimeException: PipeMapRed.waitOutputThreads(): "
                       f"subprocess failed with code {code}")
            said = self._last_error(message)  # the task's own error, before Hadoop's lines
            print(f"Error: {message}", file=self.err)
            print("ERROR streaming.StreamJob: Job not successful!", file=self.err, flush=True)
            raise StepFailure(f"the {kind} task failed", said)
        return output

    # ---- spark-submit ---------------------------------------------------------------

    def _pyspark(self):
        """The pyspark of the cluster's release (see pysparks.py): (program, home, python)."""
        from cloudmesh.emr.local import releases
        from cloudmesh.emr.local.pysparks import SPARK_RUNS_ON, line_of

        if os.environ.get(SPARK_SUBMIT_ENV):
            program, home = spark_submit()
            return program, home, None, 0  # another spark-submit: its Java is its own
        choice = self.runner.pysparks.choose(releases.spark_line(self.release), self.release)
        if choice.warning:
            print(choice.warning, file=self.err, flush=True)
            self.note(choice.warning)
        if choice.note:
            self.note(choice.note)
        if not choice.program:
            program, home = spark_submit()
            return program, home, None, None
        needed = SPARK_RUNS_ON.get(line_of(choice.version), (None,))[0]
        return choice.program, choice.home, choice.python, needed

    def _spark(self, args):
        program, spark_home, python, needed = self._pyspark()
        env = dict(os.environ)
        java(env, needed)
        if python:
            env["PYSPARK_PYTHON"] = python
        plan = spark_plan(args, self.workdir / "s3", self.master, shipped_folders(spark_home))
        for name, local in plan.mapped:
            if not inside(local, self.master):  # a link that a step left leads out
                raise not_on_cluster(name)
        s3 = self.runner.s3(self.account)
        for ref in plan.refs:
            self._download(s3, ref)
        self._check_needed(plan.needed)
        before = self._snapshot(plan.refs)
        env.update(SPARK_LOCAL_IP="127.0.0.1", SPARK_LOCAL_HOSTNAME="localhost",
                   PYTHONUNBUFFERED="1")
        env.update(self.confined_env(env))
        env.setdefault("PYSPARK_PYTHON", sys.executable)
        env.update(
            PYSPARK_DRIVER_PYTHON=str(self.runner.driver),
            CLOUDMESH_EMR_PYTHON=env["PYSPARK_PYTHON"],
            CLOUDMESH_EMR_STEP_STDERR=str(self.logdir / "stderr"),
        )
        if spark_home:
            env["SPARK_HOME"] = spark_home
        command = [program] + plan.args
        # cluster deploy mode: the driver's output goes to its YARN container's logs, and
        # the step's stderr holds what the YARN client says, as on EMR
        driver = self._driver_container() if cluster_mode(args) else None
        out, err = self.out, self.err
        if driver is not None:
            out, err = open(driver["stdout"], "a"), open(driver["stderr"], "a")
            env["CLOUDMESH_EMR_STEP_STDERR"] = str(driver["stderr"])
            self._yarn_client(driver, "submitted")
        self.note(f"running {command}")
        self.out.flush()
        self.err.flush()
        try:
            with self._lock:
                if self.cancelled:
                    return Result(False)
                self._process = subprocess.Popen(
                    command,
                    cwd=self.workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            code = self._process.wait()
        finally:
            if driver is not None:
                out.close()
                err.close()
        self._stragglers()
        self.note(f"spark-submit exited with status {code}")
        if self.cancelled:
            return Result(False)
        self._upload_changes(s3, plan.refs, before)
        if driver is not None:
            self._yarn_client(driver, "ended", code)
        if code != 0:
            self.err.flush()
            self.out.flush()
            logs = (driver["stderr"], driver["stdout"]) if driver else (
                self.logdir / "stderr", self.logdir / "stdout")
            texts = [path.read_text(errors="replace") for path in logs]
            reason = f"spark-submit exited with status {code}"
            raise StepFailure(reason, last_error_line(*texts) or reason)
        return Result(True)

    def _driver_container(self):
        """The YARN application and the container of a cluster-mode driver: their ids and
        the local files of its stdout and stderr (under the master's container logs)."""
        root = self.master / "mnt/var/log/hadoop-yarn/containers"
        root.mkdir(parents=True, exist_ok=True)
        stamp = self.runner.started_ms
        number = len(list(root.glob(f"application_{stamp}_*"))) + 1
        application = f"application_{stamp}_{number:04d}"
        container = f"container_{stamp}_{number:04d}_01_000001"
        folder = root / application / container
        folder.mkdir(parents=True, exist_ok=True)
        self.containers.append((application, container, folder))
        return {"application": application, "container": container,
                "stdout": folder / "stdout", "stderr": folder / "stderr"}

    def _yarn_client(self, driver, stage, code=None):
        """What spark-submit's YARN client prints on the step's stderr in cluster mode."""
        stamp = time.strftime("%y/%m/%d %H:%M:%S")
        application = driver["application"]
        if stage == "submitted":
            lines = [f"{stamp} INFO Client: Submitting application {application} to ResourceManager",
                     f"{stamp} INFO YarnClientImpl: Submitted application {application}",
                     f"{stamp} INFO Client: Application report for {application} (state: RUNNING)"]
        else:
            final = "SUCCEEDED" if code == 0 else "FAILED"
            lines = [f"{stamp} INFO Client: Application report for {application} (state: FINISHED)",
                     f"\t final status: {final}",
                     f"\t tracking URL: http://localhost:20888/proxy/{application}/"]
            if code != 0:
                lines.append('Exception in thread "main" org.apache.spark.SparkException: '
                             f"Application {application} finished with failed status")
        print("\n".join(lines), file=self.err, flush=True)

    def confined_env(self, env):
        """HOME, TMPDIR and Spark's scratch folders inside the cluster's master folder."""
        import site

        tmp = self.master / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        values = {"HOME": str(self.home), "TMPDIR": str(tmp), "SPARK_LOCAL_DIRS": str(tmp)}
        if "PYTHONUSERBASE" not in env:  # packages the user installed with --user stay found
            values["PYTHONUSERBASE"] = site.getuserbase()
        return values

    @staticmethod
    def _check_needed(needed):
        """Fail before Spark starts when the application or a file it needs is missing."""
        for name, local in needed:
            if local.is_file() or (local.is_dir() and any(local.iterdir())):
                continue
            where = "in S3" if split_s3(name) else "on the master node"
            raise StepFailure(
                "File not found",
                f"spark-submit cannot start: {name} does not exist {where}",
            )

    def _download(self, s3, ref):
        """Mirror the object named by ``ref``, or every object under its prefix."""
        from botocore.exceptions import ClientError

        prefix = ref.prefix
        folder = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        try:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=ref.bucket, Prefix=prefix)
            keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "NoSuchBucket":
                return  # nothing to read; writing there fails later, with a clear reason
            raise
        for key in keys:
            if key.endswith("/"):
                continue  # a "folder" marker
            if key == prefix and prefix == ref.key:
                target = ref.local
            elif key.startswith(folder):
                target = mirror_path(ref.root, ref.bucket, key)
            else:
                continue  # e.g. "output2" for prefix "output"
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(ref.bucket, key, str(target))
            self.note(f"downloaded s3://{ref.bucket}/{key} to {target}")

    def _files(self, ref):
        """The files the step may have written under ``ref``; never one out of the cluster."""
        watch = ref.watch
        if not inside(watch, self.master):
            return []
        if watch.is_file():
            return [watch]
        if watch.is_dir():
            return files_under(watch, self.master)
        return []

    def _snapshot(self, refs):
        state = {}
        for ref in refs:
            for path in self._files(ref):
                stat = path.stat()
                state[path] = (stat.st_size, stat.st_mtime_ns)
        return state

    def _upload_changes(self, s3, refs, before):
        """Upload the files the step wrote under a mapped S3 path."""
        from botocore.exceptions import ClientError

        done = set()
        for ref in refs:
            for path in self._files(ref):
                if path in done:
                    continue
                done.add(path)
                relative = path.relative_to(ref.root / ref.bucket)
                stat = path.stat()
                if hidden(relative) or before.get(path) == (stat.st_size, stat.st_mtime_ns):
                    continue
                key = relative.as_posix()
                try:
                    s3.upload_file(str(path), ref.bucket, key)
                except ClientError as error:
                    code = error.response.get("Error", {}).get("Code", "")
                    raise StepFailure(
                        "Cannot write the output",
                        f"cannot write s3://{ref.bucket}/{key}: {code or error}",
                    ) from None
                self.note(f"uploaded {path} to s3://{ref.bucket}/{key}")

    # ---- aws s3 cp -------------------------------------------------------------------

    def _copy(self, args):
        from botocore.exceptions import ClientError

        plan = s3_cp_plan(args)
        s3 = self.runner.s3(self.account)
        source, dest = split_s3(plan.source), split_s3(plan.dest)
        try:
            if source:
                pairs = self._s3_sources(s3, *source, plan)
            else:
                pairs = self._local_sources(plan)
            for origin, shown, relative in pairs:
                self._copy_one(s3, origin, shown, relative, dest, plan)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            raise StepFailure("aws s3 cp failed", f"fatal error: {code}: {error}") from None
        return Result(True)

    def _s3_sources(self, s3, bucket, key, plan):
        """[(("s3", bucket, key), shown, relative name)] of what to copy."""
        from botocore.exceptions import ClientError

        if not plan.recursive:
            try:
                s3.head_object(Bucket=bucket, Key=key)
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code")
                if code in ("404", "NoSuchKey", "NoSuchBucket"):
                    raise StepFailure(
                        "aws s3 cp failed", f"fatal error: s3://{bucket}/{key} does not exist"
                    ) from None
                raise
            return [(("s3", bucket, key), f"s3://{bucket}/{key}", key.rsplit("/", 1)[-1])]
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        found = [
            (("s3", bucket, obj["Key"]), f"s3://{bucket}/{obj['Key']}", obj["Key"][len(prefix):])
            for page in pages
            for obj in page.get("Contents", [])
            if not obj["Key"].endswith("/")
        ]
        if not found:
            raise StepFailure(
                "aws s3 cp failed", f"fatal error: nothing under s3://{bucket}/{prefix}"
            )
        return found

    def _local_sources(self, plan):
        path = master_path(self.master, plan.source)
        inside_cluster = inside(path, self.master)  # a link out stands for nothing there
        if plan.recursive and path.is_dir() and inside_cluster:
            return [
                (("file", p), str(plan.source).rstrip("/") + "/" + p.relative_to(path).as_posix(),
                 p.relative_to(path).as_posix())
                for p in sorted(files_under(path, self.master))
            ]
        if not path.is_file() or not inside_cluster:
            raise StepFailure(
                "aws s3 cp failed",
                f"fatal error: the file {plan.source} does not exist on the master",
            )
        return [(("file", path), plan.source, path.name)]

    def _copy_one(self, s3, origin, shown, relative, dest, plan):
        into_folder = plan.recursive or plan.dest.endswith("/")
        if dest:  # to S3
            bucket, key = dest
            if into_folder or not key:
                key = (key.rstrip("/") + "/" if key.strip("/") else "") + relative
            if origin[0] == "s3":
                s3.copy_object(Bucket=bucket, Key=key,
                               CopySource={"Bucket": origin[1], "Key": origin[2]})
                verb = "copy"
            else:
                s3.upload_file(str(origin[1]), bucket, key)
                verb = "upload"
            print(f"{verb}: {shown} to s3://{bucket}/{key}", file=self.out, flush=True)
            return
        target = master_path(self.master, plan.dest)
        if into_folder or target.is_dir():
            target = master_path(self.master, posixpath.join(plan.dest, relative))
        if not inside(target, self.master):  # a link that a step left leads out
            emulated = "/" + target.relative_to(self.master).as_posix()
            raise StepFailure(
                "aws s3 cp failed",
                f"fatal error: cannot write {emulated}: it leads out of the cluster's file system",
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(origin[1], origin[2], str(target))
        emulated = "/" + target.relative_to(self.master).as_posix()
        print(f"download: {shown} to {emulated}", file=self.out, flush=True)

    # ---- logs ------------------------------------------------------------------------

    def _upload_logs(self, paths):
        """gzip the step's logs to <LogUri>/<cluster>/steps/<step>/; the stderr.gz URI."""
        where = split_s3(self.log_uri or "")
        if not where:
            return None
        bucket, prefix = where
        folder = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        base = f"{folder}{self.cluster_id}/steps/{self.step_id}/"
        s3 = self.runner.s3(self.account)
        try:
            self._ensure_bucket(s3, bucket)
            for name, path in paths.items():
                text = self.as_on_emr(path.read_text(errors="replace"))  # paths as EMR's
                s3.put_object(Bucket=bucket, Key=f"{base}{name}.gz",
                              Body=gzip.compress(text.encode()))
            for application, container, local in self.containers:
                for name in ("stdout", "stderr"):
                    if (local / name).is_file():
                        text = self.as_on_emr((local / name).read_text(errors="replace"))
                        s3.put_object(
                            Bucket=bucket,
                            Key=f"{folder}{self.cluster_id}/containers/{application}/"
                                f"{container}/{name}.gz",
                            Body=gzip.compress(text.encode()))
        except Exception as error:  # the step's result stands; say where the logs are
            log.warning("cannot write the logs of step %s to %s: %s",
                        self.step_id, self.log_uri, error)
            return str(self.logdir / "stderr")
        scheme = self.log_uri.split("://", 1)[0]
        return f"{scheme}://{bucket}/{base}stderr.gz"

    @staticmethod
    def _ensure_bucket(s3, bucket):
        from botocore.exceptions import ClientError

        from cloudmesh.emr.local.model import DEFAULT_LOG_URI

        if split_s3(DEFAULT_LOG_URI)[0] != bucket:
            return
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError:
            s3.create_bucket(Bucket=bucket)

