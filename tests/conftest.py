"""Shared fixtures.

One SecantusDB server and one moto server serve the whole session, both on
127.0.0.1 at a free port and stopped by their own PID or handle. Each test gets
its own cloudmesh.yaml and its own database name, so tests never see each
other's records.
"""

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from emr_helpers import make_default_roles, moto_iam, reset_moto
from local_fixtures import *  # noqa: F401,F403  the local EMR emulator (tests/local_fixtures.py)

AWS_ENVIRONMENT = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE",
                   "AWS_SHARED_CREDENTIALS_FILE", "AWS_SESSION_TOKEN")


@pytest.fixture(scope="session", autouse=True)
def _no_user_state(tmp_path_factory):
    """Keep the user's ~/.cloudmesh and ~/.aws out of every test."""
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("HOME", "CLOUDMESH_CONFIG_DIR",
                                             "CLOUDMESH_EMR_AGENT", *AWS_ENVIRONMENT)}
    os.environ["HOME"] = str(home)
    os.environ["CLOUDMESH_CONFIG_DIR"] = str(home / ".cloudmesh")
    # no test leaves an agent behind: tests/test_agent.py turns it on, for itself only
    os.environ["CLOUDMESH_EMR_AGENT"] = "off"
    for key in AWS_ENVIRONMENT:
        os.environ.pop(key, None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _quick_unreachable_database(monkeypatch):
    """An unreachable database is found out in 1 s, not the product's 3 s: pymongo waits
    the whole server-selection timeout even for a refused connection, and a dozen tests
    aim at a closed port on purpose. (Tests that need another timeout set their own.)"""
    from cloudmesh.emr import database

    monkeypatch.setattr(database, "TIMEOUT_MS", 1000)


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    """A real SecantusDB server, through the same code that runs the embedded database."""
    from cloudmesh.emr.database import EmbeddedServer

    server = EmbeddedServer(tmp_path_factory.mktemp("mongo"))
    state, _ = server.start()
    yield state
    server.stop(wait=3)  # throwaway data: no need to wait for connections this process holds


@dataclass
class Cloudmesh:
    """A test's cloudmesh.yaml: its folder, its database name, and pymongo on that database."""

    folder: Path
    dbname: str
    mongo: dict

    def write(self, clouds=None, emr=None, mongo=None):
        data = {"cloudmesh": {
            "cloud": clouds or {},
            "data": {"mongo": {"MODE": "native", "MONGO_HOST": self.mongo["host"],
                               "MONGO_PORT": self.mongo["port"], "MONGO_DBNAME": self.dbname,
                               **(mongo or {})}},
            "emr": emr or {},
        }}
        (self.folder / "cloudmesh.yaml").write_text(yaml.safe_dump(data))

    @property
    def db(self):
        import pymongo

        if not hasattr(self, "_client"):
            self._client = pymongo.MongoClient(self.mongo["host"], self.mongo["port"],
                                               tz_aware=True, serverSelectionTimeoutMS=5000)
        return self._client[self.dbname]

    def docs(self, cloud, kind):
        return list(self.db[f"{cloud}-emr-{kind}"].find())


@pytest.fixture
def cm(tmp_path, monkeypatch, mongo_server):
    """A fresh cloudmesh.yaml with MODE native on the session's server and a unique database."""
    folder = tmp_path / "cloudmesh"
    folder.mkdir()
    config = Cloudmesh(folder, f"test_{uuid.uuid4().hex[:12]}", mongo_server)
    config.write()
    monkeypatch.setenv("CLOUDMESH_CONFIG_DIR", str(folder))
    yield config
    if hasattr(config, "_client"):
        config._client.drop_database(config.dbname)
        config._client.close()


@pytest.fixture
def aws(monkeypatch, cm):
    """moto in this process: boto3's own chain finds the test credentials (cloud 'aws')."""
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        make_default_roles(moto_iam(), policies=False)  # as after `cms emr doctor --fix`
        yield


@pytest.fixture(scope="session")
def moto_server():
    """moto's server on 127.0.0.1 at a free port, for tests through the real `cms` process."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto_cloud(cm, moto_server):
    """A cloudmesh.yaml whose default cloud 'moto' is an endpoint profile on the moto server."""
    reset_moto(moto_server)
    cm.write(clouds={"moto": {"credentials": {
        "EC2_ACCESS_ID": "testing", "EC2_SECRET_KEY": "testing-secret-never-shown",
        "region": "us-east-1", "endpoint": moto_server}}},
        emr={"default": {"cloud": "moto"}})
    return moto_server


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cms(capsys):
    """Run `cms emr ARGS` in this process (so in-process moto applies); return code, out, err."""
    from cloudmesh.emr.command.emr import EmrCommand

    def run(*args):
        capsys.readouterr()
        code = EmrCommand().run([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def cms_process():
    """Run the real `cms` console script in a child process; return code, out, err."""
    executable = Path(sys.executable).parent / "cms"

    def run(*args, timeout=120, env=None):
        command = [str(executable)] if executable.exists() else [sys.executable, "-m",
                                                                 "cloudmesh.emr.shell"]
        done = subprocess.run([*command, *[str(a) for a in args]], capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, **(env or {})})
        return Result(done.returncode, done.stdout, done.stderr)

    return run
