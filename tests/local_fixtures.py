"""Fixtures of the local EMR emulator (written by the emulator's tests).

``emulator`` (session scope) starts the real daemon, ``python -m
cloudmesh.emr.local.daemon``, on 127.0.0.1 at a free port with a 0.2 s transition
delay and its own state folder (through ``cloudmesh.emr.processes.spawn``, as ``cms emr
local start`` does), and stops it by its PID at the end. ``emr`` and ``s3`` (session
scope) are boto3 clients on it; test modules on moto define their own ``emr``/``s3``,
which take their place there. Use ``emulator.client(SERVICE)`` for other services, and
``emulator.profile()`` for the ``cloudmesh.cloud`` block of a cloudmesh.yaml whose
cloud ``local`` points at it. Both sign with the daemon's own credentials
(``emulator.credentials``, read from its state folder): it refuses anything else.
"""

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from emr_helpers import make_default_roles

__all__ = ["EMULATOR_DELAY", "EMULATOR_TIME_SCALE", "Emulator", "emr", "emulator", "s3",
           "start_emulator", "stop_emulator", "wait_for"]

EMULATOR_DELAY = 0.2  # seconds per lifecycle transition in tests
EMULATOR_TIME_SCALE = 30  # policy clocks run this much faster: a 60 s idle timeout takes 2 s
STARTUP_TIMEOUT = 60.0
SPARK_SUBMIT_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def wait_for(check, timeout, interval=0.1, what="the condition"):
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Emulator:
    """A running emulator daemon: where it listens, where it keeps state, its PID."""

    endpoint: str
    state_dir: Path
    config_dir: Path
    pid: int
    log: Path
    process: subprocess.Popen = field(repr=False, default=None)

    @property
    def credentials(self):
        """The daemon's own access key id and secret (from its state folder)."""
        from cloudmesh.emr.local import credentials

        pair = credentials.read(self.state_dir)
        assert pair is not None, f"no credentials in {self.state_dir}"
        return pair

    def client(self, service, **config):
        import boto3
        from botocore.config import Config

        options = {"retries": {"max_attempts": 2, "mode": "standard"},
                   "connect_timeout": 5, "read_timeout": 60,
                   "s3": {"addressing_style": "path"}}
        options.update(config)
        return boto3.session.Session().client(
            service, endpoint_url=self.endpoint, region_name="us-east-1",
            **self.credentials.boto(), config=Config(**options))

    def profile(self, name="local"):
        """The ``cloudmesh.cloud`` entries of a cloudmesh.yaml pointing at this emulator."""
        pair = self.credentials
        return {name: {"credentials": {"EC2_ACCESS_ID": pair.access_key_id,
                                       "EC2_SECRET_KEY": pair.secret_access_key,
                                       "region": "us-east-1", "endpoint": self.endpoint}}}

    def env(self):
        """Environment in which ``cms emr --cloud=local`` finds this emulator by itself."""
        return {**os.environ, "CLOUDMESH_CONFIG_DIR": str(self.config_dir)}

    def master(self, cluster_id):
        """The folder that stands for the cluster's master node."""
        return self.state_dir / "clusters" / cluster_id

    def transitions(self, cluster_id):
        """The cluster's changes of state as the daemon logged them: [(from, to, reason)]."""
        pattern = re.compile(rf"cluster {re.escape(cluster_id)}: (\w+) -> (\w+)(?: \((.*)\))?$")
        found = (pattern.search(line) for line in self.log.read_text().splitlines())
        return [match.groups() for match in found if match]

    def cluster_state(self, cluster_id):
        emr = self.client("emr")
        return emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]

    def wait_cluster(self, cluster_id, states, timeout=30):
        """Wait until the cluster is in one of ``states``; return its description."""
        emr = self.client("emr")

        def check():
            cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
            return cluster if cluster["Status"]["State"] in states else None

        return wait_for(check, timeout, what=f"cluster {cluster_id} in {states}")

    def wait_step(self, cluster_id, step_id, states, timeout=60):
        """Wait until the step is in one of ``states``; return its description."""
        emr = self.client("emr")

        def check():
            step = emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]
            return step if step["Status"]["State"] in states else None

        return wait_for(check, timeout, what=f"step {step_id} in {states}")


def start_emulator(config_dir, delay=EMULATOR_DELAY, env=None):
    """Start a daemon in ``config_dir``/emr/local; return an Emulator once it serves."""
    state = Path(config_dir) / "emr" / "local"
    state.mkdir(parents=True, exist_ok=True)
    log = state / "daemon.log"
    environment = dict(os.environ) if env is None else dict(env)
    if env is None:  # the real spark-submit, unless a test asks otherwise
        environment.pop("CLOUDMESH_EMR_LOCAL_SPARK_SUBMIT", None)
    # the tests' Spark runs are tiny: a JVM that compiles less starts them sooner
    environment.setdefault("SPARK_SUBMIT_OPTS", SPARK_SUBMIT_OPTS)
    environment.setdefault("CLOUDMESH_EMR_LOCAL_TIME_SCALE", str(EMULATOR_TIME_SCALE))
    from cloudmesh.emr.processes import read_json, spawn

    def served(process, _output):  # the daemon writes daemon.json once it serves
        data, _ = read_json(state / "daemon.json")
        return data if data and data.get("pid") == process.pid else None

    process, data = spawn(
        [sys.executable, "-m", "cloudmesh.emr.local.daemon", "--host", "127.0.0.1",
         "--port", "0", "--state-dir", str(state), "--delay", str(delay)],
        log, served, STARTUP_TIMEOUT, "the emulator", env=environment)
    return Emulator(data["endpoint"], state, Path(config_dir), process.pid, log, process)


def stop_emulator(emulator, timeout=30):
    """Stop the daemon by its PID: SIGTERM, then SIGKILL if it does not end in time."""
    process = emulator.process
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """The local EMR emulator daemon, shared by the session, with EMR's default roles (it
    starts without them, as a new AWS account; a test that needs them missing removes them
    and makes them again)."""
    running = start_emulator(tmp_path_factory.mktemp("emulator"))
    make_default_roles(running.client("iam"))
    yield running
    stop_emulator(running)


@pytest.fixture(scope="session")
def emr(emulator):
    """boto3 EMR on the session's emulator (a module on moto defines its own ``emr``)."""
    return emulator.client("emr")


@pytest.fixture(scope="session")
def s3(emulator):
    """boto3 S3 on the session's emulator (a module on moto defines its own ``s3``)."""
    return emulator.client("s3")
