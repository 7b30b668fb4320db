"""The processes we own: their state files lost or damaged, and pids that are not ours.

Real servers only: SecantusDB (``secantusd-py``, run as a separate process) for the
embedded database and the emulator daemon, each on 127.0.0.1 in a temporary folder.
A foreign process is a ``sleep`` this module starts itself; every test checks that it
still runs afterwards, and stops it by its pid. Records are read back with pymongo.
"""

import json
import os
import re
import signal
import subprocess
import sys
import uuid

import pytest
import yaml

from cloudmesh.emr import processes
from cloudmesh.emr.database import EmbeddedServer
from cloudmesh.emr.local import control
from emr_helpers import lean_moto, run_job_flow  # noqa: F401  lean_moto: autouse
from local_fixtures import wait_for

# damages under which a command through the Provider (list clusters) is run as well
AWS_TOO = ("deleted", "garbage", "foreign-pid", "pid-0")
WARNING = re.compile(r"^WARNING: .*state file", re.MULTILINE)


# ---- helpers -----------------------------------------------------------------------------


def gone(pid):
    """True once the process has ended (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def ended_pid():
    """The pid of a process that has exited (a stale pid)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def foreign():
    """A live process that is not ours; it must survive every test."""
    process = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield process
    alive = process.poll() is None
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    assert alive, "the foreign process was signalled"


# what each damage writes into a state file; None: delete it
DAMAGES = {
    "deleted": lambda foreign: None,
    "truncated": lambda foreign: "",
    "half": lambda foreign: '{"pid": 12',
    "garbage": lambda foreign: '"x"',
    "null-pid": lambda foreign: '{"pid": null, "host": "127.0.0.1", "port": 1}',
    "stale-pid": lambda foreign: json.dumps({"pid": ended_pid(), "host": "127.0.0.1", "port": 1}),
    "foreign-pid": lambda foreign: json.dumps({"pid": foreign.pid, "host": "127.0.0.1",
                                               "port": 1}),
    "pid-0": lambda foreign: '{"pid": 0, "host": "127.0.0.1", "port": 1}',
    "pid-minus-1": lambda foreign: '{"pid": -1, "host": "127.0.0.1", "port": 1}',
}
# the right pid, but nothing about where the server listens (a file from a bad editor)
NO_ADDRESS = "no-address"


def damage(path, how, foreign, pid=None):
    if how == NO_ADDRESS:
        path.write_text(json.dumps({"pid": pid, "port": "x"}))
        return
    text = DAMAGES[how](foreign)
    if text is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(text)


def write_config(folder, mongo, dbname):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cloudmesh.yaml").write_text(yaml.safe_dump({"cloudmesh": {
        "data": {"mongo": {**mongo, "MONGO_DBNAME": dbname}}}}))


# ---- the module itself -----------------------------------------------------------------------


def test_state_files_are_written_whole_and_private(tmp_path):
    path = tmp_path / "server.json"
    processes.write_json(path, {"pid": 1234, "port": 5})
    assert json.loads(path.read_text()) == {"pid": 1234, "port": 5}
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["server.json"]  # no partial file left


@pytest.mark.parametrize("how", sorted(DAMAGES))
def test_a_damaged_state_file_is_read_as_none_with_a_reason(tmp_path, how, foreign):
    path = tmp_path / "server.json"
    damage(path, how, foreign)
    data, problem = processes.read_json(path)
    if how in ("stale-pid", "foreign-pid"):  # well-formed: the process table decides
        assert data["pid"] >= 2 and problem is None
    else:
        assert data is None
        assert (problem is None) == (how == "deleted")


def test_a_failed_start_reports_its_last_line_and_leaves_nothing(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("an earlier run\n")
    command = [sys.executable, "-c", "print('starting'); print('port taken', flush=True); "
               "raise SystemExit(3)"]
    with pytest.raises(processes.ProcessError) as caught:
        processes.spawn(command, log, lambda process, out: None, 30, "the test server")
    assert "port taken" in caught.value.message and "exit 3" in caught.value.message
    assert log.read_text().startswith("an earlier run\n")  # appended, never truncated


def test_a_start_that_never_gets_ready_is_stopped(tmp_path):
    seen = []

    def ready(process, output):
        seen.append(process.pid)
        return None

    with pytest.raises(processes.ProcessError, match="did not start within"):
        processes.spawn(["sleep", "600"], tmp_path / "log", ready, 0.5, "the test server")
    assert seen and gone(seen[0])


# ---- the embedded database ------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A config folder in MODE embedded whose SecantusDB server runs (module-wide)."""
    folder = tmp_path_factory.mktemp("embedded")
    write_config(folder, {"MODE": "embedded"}, f"test_{uuid.uuid4().hex[:12]}")
    server = EmbeddedServer(folder / "emr" / "db")
    state, _ = server.start()
    yield folder, server, state
    server.stop(wait=3)


@pytest.fixture
def in_embedded(embedded, monkeypatch):
    folder, server, state = embedded
    monkeypatch.setenv("CLOUDMESH_CONFIG_DIR", str(folder))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert server.running()["pid"] == state["pid"], "the module's server must run"
    return embedded


@pytest.mark.parametrize("how", [*sorted(DAMAGES), NO_ADDRESS])
def test_db_commands_work_while_the_state_file_is_damaged(in_embedded, cms, how, foreign):
    """The server runs; its server.json is damaged. Status tells the truth, the file is
    written again from the process table, a command records its results, start does not
    start a second server nor touch the running one's log."""
    import boto3
    import pymongo
    from moto import mock_aws

    folder, server, state = in_embedded
    log_before = server.log.read_text()
    damage(server.state_file, how, foreign, state["pid"])

    status = cms("db", "status", "--format=json")
    assert status.code == 0, status.err
    info = json.loads(status.out)
    assert info["Running"] is True and info["Pid"] == state["pid"]
    assert info["Address"] == f"127.0.0.1:{state['port']}"
    assert WARNING.search(status.err), status.err
    assert "ERROR" not in status.err
    assert json.loads(server.state_file.read_text())["pid"] == state["pid"]

    damage(server.state_file, how, foreign, state["pid"])
    again = cms("db", "start")
    assert again.code == 0, again.err
    assert f"already running at 127.0.0.1:{state['port']} (pid {state['pid']})" in again.out
    assert server.log.read_text().startswith(log_before)  # the running server's log kept
    assert [p.pid for p in server._server.find()] == [state["pid"]]  # one server, ours

    if how not in AWS_TOO:
        return
    damage(server.state_file, how, foreign, state["pid"])
    with mock_aws():
        cid = run_job_flow(boto3.client("emr", region_name="us-east-1"), f"damaged-{how}")
        listed = cms("list", "clusters", "--format=json")
    assert listed.code == 0, listed.err
    assert cid in listed.out and WARNING.search(listed.err), listed.err
    client = pymongo.MongoClient("127.0.0.1", state["port"], serverSelectionTimeoutMS=5000)
    try:
        dbname = yaml.safe_load((folder / "cloudmesh.yaml").read_text())[
            "cloudmesh"]["data"]["mongo"]["MONGO_DBNAME"]
        assert client[dbname]["aws-emr-cluster"].find_one({"_id": f"aws/cluster/{cid}"})
    finally:
        client.close()



def test_db_stop_never_signals_another_folders_server(in_embedded, cms, mongo_server):
    """A SecantusDB server of another folder (the session's) is not ours: its pid in
    our server.json is neither trusted nor signalled."""
    folder, server, state = in_embedded
    other = mongo_server["pid"]
    server.state_file.write_text(json.dumps({**state, "pid": other}))
    status = json.loads(cms("db", "status", "--format=json").out)
    assert status["Pid"] == state["pid"]
    assert not gone(other) and not gone(state["pid"])


@pytest.mark.parametrize("how", ["deleted", "foreign-pid"])
def test_db_start_over_a_stale_file_then_stop_without_the_state_file(
        tmp_path, monkeypatch, cms, how, foreign):
    """db start removes a stale server.json and starts our own server; with its state
    file lost afterwards, db stop still finds and stops it, and only it."""
    folder = tmp_path / "config"
    write_config(folder, {"MODE": "embedded"}, "test_stop")
    monkeypatch.setenv("CLOUDMESH_CONFIG_DIR", str(folder))
    server = EmbeddedServer(folder / "emr" / "db")
    server.folder.mkdir(parents=True)
    damage(server.state_file, "foreign-pid", foreign)
    started = cms("db", "start")
    pid = json.loads(server.state_file.read_text())["pid"]
    try:
        assert started.code == 0, started.err
        assert "database started at 127.0.0.1:" in started.out and f"(pid {pid})" in started.out
        assert pid != foreign.pid and not gone(pid)
        assert "WARNING: removed the stale state file" in started.err

        damage(server.state_file, how, foreign)
        stopped = cms("db", "stop")
        assert stopped.code == 0, stopped.err
        assert f"database stopped (pid {pid})" in stopped.out
        assert WARNING.search(stopped.err), stopped.err
        assert gone(pid) and not server.state_file.exists()
        assert json.loads(cms("db", "status", "--format=json").out)["Running"] is False
        assert "was not running" in cms("db", "stop").out
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["truncated", "garbage", "null-pid", "stale-pid", "foreign-pid",
                                 "pid-0", "pid-minus-1"])
def test_db_with_no_server_removes_a_stale_state_file_and_signals_nothing(
        tmp_path, monkeypatch, cms, how, foreign):
    folder = tmp_path / "config"
    write_config(folder, {"MODE": "embedded"}, "test_stale")
    monkeypatch.setenv("CLOUDMESH_CONFIG_DIR", str(folder))
    state_file = folder / "emr" / "db" / "server.json"
    state_file.parent.mkdir(parents=True)

    damage(state_file, how, foreign)
    status = cms("db", "status", "--format=json")
    assert status.code == 0, status.err
    assert json.loads(status.out)["Running"] is False
    assert "WARNING: removed the stale state file" in status.err, status.err
    assert not state_file.exists()

    damage(state_file, how, foreign)
    stopped = cms("db", "stop")
    assert stopped.code == 0, stopped.err
    assert "database was not running" in stopped.out
    assert "WARNING: removed the stale state file" in stopped.err
    # the foreign process is checked alive by the fixture


# ---- the emulator daemon --------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, mongo_server):
    """A config folder whose emulator daemon runs (module-wide); results go to the
    session's database. The daemon is started by hand, without --state-dir, as a user
    may: it serves the default folder of its configuration, and is found there."""
    folder = tmp_path_factory.mktemp("emulated")
    write_config(folder, {"MODE": "native", "MONGO_HOST": mongo_server["host"],
                          "MONGO_PORT": mongo_server["port"]}, f"test_{uuid.uuid4().hex[:12]}")
    state = folder / "emr" / "local"
    state.mkdir(parents=True)

    def ready(process, output):
        data, _ = processes.read_json(state / "daemon.json")
        return data if data and data["pid"] == process.pid else None

    process, data = processes.spawn(
        [sys.executable, "-m", "cloudmesh.emr.local.daemon", "--delay", "0.2"],
        state / "daemon.log", ready, 60, "the emulator",
        env={**os.environ, "CLOUDMESH_CONFIG_DIR": str(folder)})
    yield folder, state, {"Pid": process.pid, "Endpoint": data["endpoint"]}
    if process.poll() is None:
        process.terminate()
        process.wait(30)


@pytest.fixture
def in_daemon(daemon, monkeypatch):
    monkeypatch.setenv("CLOUDMESH_CONFIG_DIR", str(daemon[0]))
    control.take_warnings()
    return daemon


@pytest.mark.parametrize("how", ["deleted", "truncated", "garbage", "null-pid", "stale-pid",
                                 "foreign-pid", "pid-0", "pid-minus-1", NO_ADDRESS])
def test_local_status_and_cloud_local_while_daemon_json_is_damaged(in_daemon, cms, how,
                                                                   foreign):
    folder, state, info = in_daemon
    damage(state / "daemon.json", how, foreign, info["Pid"])
    status = cms("local", "status", "--format=json")
    assert status.code == 0, status.err
    found = json.loads(status.out)
    assert found["Running"] is True and found["Pid"] == info["Pid"]
    assert found["Endpoint"] == info["Endpoint"]
    assert WARNING.search(status.err), status.err
    rebuilt = json.loads((state / "daemon.json").read_text())
    assert rebuilt["pid"] == info["Pid"] and rebuilt["endpoint"] == info["Endpoint"]

    damage(state / "daemon.json", how, foreign, info["Pid"])
    listed = cms("list", "clusters", "--cloud=local", "--format=json")
    assert listed.code == 0, listed.err
    assert isinstance(json.loads(listed.out), list)
    assert WARNING.search(listed.err), listed.err
    again = cms("local", "start")
    assert again.code == 0 and "already running" in again.out
    assert f"(pid {info['Pid']})" in again.out


def test_a_second_daemon_on_the_same_folder_refuses_and_touches_nothing(in_daemon):
    folder, state, info = in_daemon
    before = (state / "daemon.json").read_bytes()
    marker = state / "clusters" / "still-here"
    marker.parent.mkdir(exist_ok=True)
    marker.write_text("a file of the running daemon")
    second = subprocess.run(
        [sys.executable, "-m", "cloudmesh.emr.local.daemon", "--state-dir", str(state),
         "--delay", "0.2"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    assert f"already runs for {state} (pid {info['Pid']})" in second.stderr
    assert (state / "daemon.json").read_bytes() == before and marker.exists()
    assert not gone(info["Pid"])


def test_a_daemon_starting_while_another_holds_the_serve_lock_refuses(tmp_path):
    """Two daemons started at once both miss each other in the process table; the one
    that does not get the serve lock refuses."""
    import filelock

    state = tmp_path / "local"
    state.mkdir()
    with filelock.FileLock(str(state / "serve.lock"), timeout=0):
        second = subprocess.run(
            [sys.executable, "-m", "cloudmesh.emr.local.daemon", "--state-dir", str(state)],
            capture_output=True, text=True, timeout=120)
    assert second.returncode == 1 and f"already runs for {state}" in second.stderr
    assert not (state / "daemon.json").exists()


def test_local_stop_finds_the_daemon_without_daemon_json(in_daemon, cms, foreign):
    folder, state, info = in_daemon
    damage(state / "daemon.json", "foreign-pid", foreign)
    stopped = cms("local", "stop", "--force")
    assert stopped.code == 0, stopped.err
    assert f"local EMR emulator stopped (pid {info['Pid']})" in stopped.out
    assert WARNING.search(stopped.err), stopped.err
    assert gone(info["Pid"]) and not (state / "daemon.json").exists()
    status = cms("local", "status", "--format=json")
    assert json.loads(status.out)["Running"] is False


@pytest.mark.parametrize("how", ["garbage", "stale-pid", "foreign-pid", "pid-0", "pid-minus-1"])
def test_local_with_no_daemon_removes_a_stale_daemon_json(tmp_path, monkeypatch, cms, how,
                                                          foreign):
    monkeypatch.setenv("CLOUDMESH_CONFIG_DIR", str(tmp_path))
    state = tmp_path / "emr" / "local"
    state.mkdir(parents=True)
    control.take_warnings()
    damage(state / "daemon.json", how, foreign)
    status = cms("local", "status", "--format=json")
    assert status.code == 0, status.err
    assert json.loads(status.out)["Running"] is False
    assert "WARNING: removed the stale state file" in status.err, status.err
    damage(state / "daemon.json", how, foreign)
    stopped = cms("local", "stop", "--force")
    assert stopped.code == 0 and "was not running" in stopped.out
    listed = cms("list", "clusters", "--cloud=local")
    assert listed.code == 1 and "cms emr local start" in listed.err


def test_a_daemon_without_state_dir_is_ours_only_when_its_own_environment_names_our_folder(
        tmp_path):
    """A daemon started without --state-dir serves the folder of ITS environment; another
    session's (another CLOUDMESH_CONFIG_DIR) is never taken for ours, so never signalled."""
    import psutil

    from cloudmesh.emr.local import state

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    env = {**os.environ, "CLOUDMESH_CONFIG_DIR": str(theirs)}
    # a stand-in whose command line reads as the daemon's: ... -m cloudmesh.emr.local.daemon
    stand_in = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "-m", state.DAEMON_MODULE],
        env=env, stdin=subprocess.DEVNULL)
    try:
        process = psutil.Process(stand_in.pid)
        # until the child has run exec, it is a copy of this process: wait for its own line
        wait_for(lambda: state.DAEMON_MODULE in process.cmdline(), 30, what="the stand-in")
        assert not state.server(ours / "emr" / "local").is_ours(process)
        assert state.server(theirs / "emr" / "local").is_ours(process)
    finally:
        stand_in.kill()
        stand_in.wait(10)


def test_the_folders_we_keep_data_in_are_private(tmp_path):
    """The emulator's S3 objects, credentials and clusters, and the database's data, are
    readable by their owner alone."""
    import stat as modes

    folder = processes.private_folder(tmp_path / "a" / "b")
    assert modes.S_IMODE(folder.stat().st_mode) == 0o700
    (tmp_path / "loose").mkdir(mode=0o755)
    assert modes.S_IMODE(processes.private_folder(tmp_path / "loose").stat().st_mode) == 0o700
