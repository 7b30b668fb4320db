"""The cms emr agent (cloudmesh/emr/agent.py): real `cms` processes, a real agent.

Each test has its own runtime folder (XDG_RUNTIME_DIR, short, under /tmp) and its own
cloudmesh.yaml, so its own agent; every agent a test starts is stopped by its PID at the
end (conftest turns the agent off for every other test). The commands run against the
session's moto server and database, and what they did is read back with boto3.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from local_fixtures import wait_for

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32",
                                reason="the agent needs fork and AF_UNIX sockets")


@pytest.fixture(autouse=True)
def _terminal_signals_reach_commands():
    """Commands these tests start get Ctrl-C, Ctrl-\\ and Ctrl-Z as from a terminal: where
    the test run itself was started in the background by a shell without job control,
    SIGINT and SIGQUIT are ignored, and every child would inherit that (and, rightly, keep
    ignoring them)."""
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGQUIT: signal.SIG_DFL,
                signal.SIGTSTP: signal.SIG_DFL}
    kept = {number: signal.getsignal(number) for number in defaults}
    for number, handler in defaults.items():
        if kept[number] == signal.SIG_IGN:
            signal.signal(number, handler)
    yield
    for number, handler in kept.items():
        signal.signal(number, handler)


class World:
    """`cms` processes with the agent on, in a runtime folder of this test's own."""

    def __init__(self, cm, endpoint):
        self.cm = cm
        self.endpoint = endpoint
        self.runtime = Path(tempfile.mkdtemp(prefix="cmsag-", dir="/tmp"))
        os.chmod(self.runtime, 0o700)
        self.env = {**os.environ, "CLOUDMESH_EMR_AGENT": "on",
                    "XDG_RUNTIME_DIR": str(self.runtime), "PYTHONPATH": self.pythonpath()}
        self.folder = self.runtime / "cloudmesh-emr"

    @staticmethod
    def pythonpath():
        root = str(Path(__file__).resolve().parents[1])
        rest = os.environ.get("PYTHONPATH")
        return root if not rest else f"{root}{os.pathsep}{rest}"

    def command(self, *args):
        return [sys.executable, "-m", "cloudmesh.emr", *map(str, args)]

    def cms(self, *args, env=None, input=None, timeout=120, cwd=None):
        done = subprocess.run(self.command(*args), capture_output=True, text=True, cwd=cwd,
                              input=input, timeout=timeout, env={**self.env, **(env or {})})
        return done

    def paths(self):
        """The agent's files, as agent.py names them for this test's environment."""
        if not hasattr(self, "_key"):
            code = "from cloudmesh.emr import agent; print(agent.key())"
            self._key = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                       text=True, env=self.env, check=True).stdout.strip()
        return {"folder": str(self.folder),
                **{kind: str(self.folder / f"{self._key}.{kind}")
                   for kind in ("socket", "pid", "lock", "log")}}

    def status(self):
        done = self.cms("agent", "status", "--format=json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def start(self):
        done = self.cms("agent", "start", "--format=json")
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        assert info["Agent"] in ("started", "already running")
        return info["Pid"]

    def agents(self):
        """psutil processes of agents serving this test's socket (a warming one included)."""
        import psutil

        socket = self.paths()["socket"]
        found = []
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            if "--socket" in cmdline and cmdline[cmdline.index("--socket") + 1:][:1] == [socket]:
                found.append(process)
        return found

    def close(self):
        import psutil

        self.cms("agent", "stop")
        left = self.agents()
        for process in left:  # a warming one the stop could not find yet: by its pid
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=15)
        shutil.rmtree(self.runtime, ignore_errors=True)


@pytest.fixture
def world(moto_cloud, cm):
    world = World(cm, moto_cloud)
    yield world
    world.close()


def boto(endpoint, service):
    import boto3

    return boto3.session.Session().client(service, endpoint_url=endpoint, region_name="us-east-1",
                                          aws_access_key_id="testing",
                                          aws_secret_access_key="testing")


def clusters(endpoint, count):
    emr = boto(endpoint, "emr")
    return [emr.run_job_flow(
        Name=f"agent-{index}", ReleaseLabel="emr-7.12.0",
        Instances={"MasterInstanceType": "m5.xlarge", "SlaveInstanceType": "m5.xlarge",
                   "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole")["JobFlowId"]
        for index in range(count)]


def served(world):
    return world.status()["Commands"]


def test_list_through_the_agent_is_the_in_process_output(world):
    made = clusters(world.endpoint, 3)
    world.start()
    for fmt in ([], ["--format=json"]):
        here = world.cms("list", "clusters", *fmt, env={"CLOUDMESH_EMR_AGENT": "off"})
        before = served(world)
        there = world.cms("list", "clusters", *fmt)
        assert served(world) == before + 1  # the agent ran it
        assert (there.returncode, there.stdout, there.stderr) == \
            (here.returncode, here.stdout, here.stderr)
        assert all(cluster in there.stdout for cluster in made)
    listed = json.loads(there.stdout)
    assert sorted(c["Id"] for c in listed) == sorted(made)


def test_the_installed_cms_script_starts_an_agent_that_serves_it(world):
    """As a user runs it: the console script of the install, with no PYTHONPATH; the first
    command starts the agent in the background, the next one is run by it."""
    script = Path(sys.executable).with_name("cms")
    env = {key: value for key, value in world.env.items() if key != "PYTHONPATH"}
    installed = subprocess.run([sys.executable, "-c", "import cloudmesh.emr.agent"], env=env,
                               capture_output=True)
    if not script.exists() or installed.returncode:
        pytest.skip("cloudmesh-emr is not installed in this interpreter (make install)")
    made = clusters(world.endpoint, 1)

    def cms(*args):
        done = subprocess.run([str(script), "emr", *args], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def status():  # this environment's agent (PYTHON* variables are part of its key)
        return json.loads(cms("agent", "status", "--format=json"))

    try:
        assert made[0] in cms("list", "clusters")  # runs here, starts the agent
        wait_for(lambda: status().get("Agent") == "running", 60,
                 what="the agent the first command started")
        before = status()["Commands"]
        assert made[0] in cms("list", "clusters")
        assert status()["Commands"] == before + 1
    finally:
        cms("agent", "stop")
    assert status()["Agent"] == "not running"


def test_bad_input_exit_2_one_error_line(world):
    world.start()
    done = world.cms("list", "clusters", "--format=bogus")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: --format"), done.stderr
    assert served(world) == 1
    nothing = world.cms("no", "such", "command")
    assert nothing.returncode == 2 and nothing.stderr.startswith("ERROR: 'emr no such command'")


def test_a_command_reads_the_clients_stdin(world):
    world.start()
    config = "Tags:\n  - {Key: came-from, Value: stdin}\n"
    done = world.cms("start", "fromstdin", "--config=/dev/stdin", "--no-check", input=config)
    assert done.returncode == 0, done.stderr
    cluster = done.stdout.strip()
    assert served(world) == 1
    tags = boto(world.endpoint, "emr").describe_cluster(ClusterId=cluster)["Cluster"]["Tags"]
    assert {"Key": "came-from", "Value": "stdin"} in tags


def test_the_clients_environment_reaches_the_command(world):
    """cloud aws takes its endpoint and keys from the environment of each command."""
    world.cm.write(clouds={}, emr={"retry": {"attempts": 1}})
    made = clusters(world.endpoint, 1)
    world.start()
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}
    found = world.cms("list", "clusters", "--cloud=aws",
                      env={**keys, "AWS_ENDPOINT_URL": world.endpoint})
    assert found.returncode == 0, found.stderr
    assert made[0] in found.stdout
    closed = world.cms("list", "clusters", "--cloud=aws",
                       env={**keys, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert closed.returncode == 1
    assert closed.stderr.startswith("ERROR:") and made[0] not in closed.stdout
    assert served(world) == 2


def test_ctrl_c_ends_the_command_in_the_agent(world):
    import psutil

    cluster = clusters(world.endpoint, 1)[0]
    agent = psutil.Process(world.start())
    client = subprocess.Popen(world.command("wait", cluster, "--until=terminated", "--delay=1"),
                              env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        first = client.stderr.readline()  # the command is running in the agent's child
        assert first.startswith(f"{cluster}: WAITING"), first
        children = agent.children()
        assert len(children) == 1
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 130
    assert err.strip().endswith("ERROR: interrupted")
    psutil.wait_procs(children, timeout=30)
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE
                   for child in children)
    assert agent.is_running()  # the agent itself serves on


def test_stale_code_runs_in_process_and_the_old_agent_ends(world):
    import psutil

    import cloudmesh.emr

    made = clusters(world.endpoint, 1)
    agent = psutil.Process(world.start())
    code = Path(cloudmesh.emr.__file__)
    before = code.stat()
    try:  # an upgraded install: one of the package's files is newer than the agent
        os.utime(code, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        done = world.cms("list", "clusters")
    finally:
        os.utime(code, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert done.returncode == 0, done.stderr
    assert made[0] in done.stdout
    psutil.wait_procs([agent], timeout=30)
    assert not agent.is_running()


def test_idle_agent_ends_and_leaves_no_socket(world):
    import psutil

    world.cm.write(clouds={}, emr={"agent": {"idle": "2s"}})
    paths = world.paths()
    agent = psutil.Process(world.start())
    assert Path(paths["socket"]).exists()
    psutil.wait_procs([agent], timeout=60)
    assert not agent.is_running()
    assert not Path(paths["socket"]).exists() and not Path(paths["pid"]).exists()
    assert world.status()["Agent"] == "not running"


def test_folder_socket_and_files_are_private(world):
    import stat

    world.start()
    paths = world.paths()
    folder = os.lstat(paths["folder"])
    assert stat.S_ISDIR(folder.st_mode) and stat.S_IMODE(folder.st_mode) == 0o700
    assert folder.st_uid == os.getuid()
    sock = os.lstat(paths["socket"])
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600
    for kind in ("pid", "log", "lock"):
        assert stat.S_IMODE(os.lstat(paths[kind]).st_mode) == 0o600, kind
    assert len(os.fsencode(paths["socket"])) < 104


def test_an_unsafe_folder_is_not_used(world):
    """The agent's folder can be entered by others: no agent is started or used there,
    and commands still run."""
    world.folder.mkdir(mode=0o755)
    os.chmod(world.folder, 0o755)
    done = world.cms("list", "clusters")
    assert done.returncode == 0, done.stderr
    start = world.cms("agent", "start")
    assert start.returncode == 1 and start.stderr.startswith("ERROR: ") \
        and "private" in start.stderr
    assert not list(world.folder.iterdir())
    assert world.agents() == []


def test_stop_signals_only_our_agent_by_its_pid(world):
    import psutil

    pid = world.start()
    paths = world.paths()
    done = world.cms("agent", "stop")
    assert done.returncode == 0 and f"pid {pid}" in done.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # a pid file naming another process: that process is left alone
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        Path(paths["pid"]).write_text(json.dumps({"pid": other.pid, "socket": paths["socket"]}))
        done = world.cms("agent", "stop")
        assert done.returncode == 0 and "not running" in done.stdout
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_off_is_off(world):
    world.start()
    off = world.cms("agent", "start", env={"CLOUDMESH_EMR_AGENT": "off"})
    assert off.returncode == 2 and off.stderr.startswith("ERROR: CLOUDMESH_EMR_AGENT is off")
    world.cms("list", "clusters", env={"CLOUDMESH_EMR_AGENT": "off"})
    assert served(world) == 0
    world.cm.write(clouds={"moto": {"credentials": {
        "EC2_ACCESS_ID": "testing", "EC2_SECRET_KEY": "testing", "region": "us-east-1",
        "endpoint": world.endpoint}}}, emr={"default": {"cloud": "moto"}, "agent": "off"})
    agent = world.agents()[0]
    done = world.cms("list", "clusters")  # the agent declines and ends; the command runs here
    assert done.returncode == 0, done.stderr
    agent.wait(30)
    assert world.agents() == []


def _waiting_for_the_agent(pid):
    """Whether the client sleeps in the kernel on its socket (its only wait there)."""
    try:
        where = Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False
    return where.startswith(("unix_stream", "poll_schedule", "do_sys_poll", "do_select"))


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs Linux /proc")
def test_a_request_the_agent_never_took_runs_once_in_process(world):
    """The agent dies with the request unread: the client runs the command itself, once."""
    import psutil

    cluster = clusters(world.endpoint, 1)[0]
    s3 = boto(world.endpoint, "s3")
    s3.create_bucket(Bucket="agent")
    s3.put_object(Bucket="agent", Key="job.py", Body=b"print(1)\n")
    pid = world.start()
    os.kill(pid, signal.SIGSTOP)  # it takes nothing from here on
    try:
        client = subprocess.Popen(world.command("run", cluster, "agent", "job.py"),
                                  env=world.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        wait_for(lambda: _waiting_for_the_agent(client.pid) or client.poll() is not None, 60,
                 interval=0.02, what="the client to wait for the agent's answer")
        assert client.poll() is None  # still waiting: the agent's death is what it sees
    finally:
        os.kill(pid, signal.SIGKILL)
    out, err = client.communicate(timeout=120)
    psutil.wait_procs([psutil.Process(pid)] if psutil.pid_exists(pid) else [], timeout=10)
    assert client.returncode == 0, err
    steps = boto(world.endpoint, "emr").list_steps(ClusterId=cluster)["Steps"]
    assert len(steps) == 1
    assert out.split() == [steps[0]["Id"]]


def test_a_command_the_agent_took_finishes_after_the_agent_dies(world):
    """Killed after its child began: the command ends once, by the child, with its code."""
    cluster = clusters(world.endpoint, 1)[0]
    pid = world.start()
    client = subprocess.Popen(world.command("wait", cluster, "--until=terminated", "--delay=1"),
                              env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        first = client.stderr.readline()
        assert first.startswith(f"{cluster}: WAITING"), first
        os.kill(pid, signal.SIGKILL)
        boto(world.endpoint, "emr").terminate_job_flows(JobFlowIds=[cluster])
        out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, err
    assert out.splitlines() == [f"{cluster} TERMINATED"]


def test_a_client_that_gave_up_waiting_is_not_run_again_by_the_agent(world):
    """A stopped agent: the client waits its while, then runs the command itself; when the
    agent goes on and takes the old request, its child does not run it a second time."""
    import psutil

    cluster = clusters(world.endpoint, 1)[0]
    s3 = boto(world.endpoint, "s3")
    s3.create_bucket(Bucket="agent")
    s3.put_object(Bucket="agent", Key="job.py", Body=b"print(1)\n")
    agent = psutil.Process(world.start())
    agent.suspend()
    try:
        done = world.cms("run", cluster, "agent", "job.py")  # waits, then runs here
    finally:
        agent.resume()
    assert done.returncode == 0, done.stderr
    wait_for(lambda: served(world) == 1, 30, what="the agent to take the old request")
    wait_for(lambda: not agent.children(), 30, what="the agent's child to end")
    steps = boto(world.endpoint, "emr").list_steps(ClusterId=cluster)["Steps"]
    assert [step["Id"] for step in steps] == done.stdout.split()


def _ignore_sighup():
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def test_a_signal_the_client_ignores_is_ignored_by_the_command(world):
    """Under nohup (SIGHUP ignored) a command survives a hangup, as it does in-process."""
    cluster = clusters(world.endpoint, 1)[0]
    world.start()
    client = subprocess.Popen(world.command("wait", cluster, "--until=terminated", "--delay=1"),
                              env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, preexec_fn=_ignore_sighup)
    try:
        first = client.stderr.readline()  # running in the agent's child
        assert first.startswith(f"{cluster}: WAITING"), first
        assert served(world) == 1
        client.send_signal(signal.SIGHUP)
        (child,) = [process for agent in world.agents() for process in agent.children()]
        child.send_signal(signal.SIGHUP)  # the hangup of a closing terminal reaches both
        boto(world.endpoint, "emr").terminate_job_flows(JobFlowIds=[cluster])
        out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, err
    assert out.splitlines() == [f"{cluster} TERMINATED"]


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs Linux /proc")
def test_a_folder_the_agent_cannot_enter_runs_the_command_in_process(world, tmp_path):
    """The client's working folder is gone from its path by the time the agent's child
    would enter it: the child declines before anything runs, the client runs it itself."""
    made = clusters(world.endpoint, 1)
    work = tmp_path / "here"
    work.mkdir()
    here = world.cms("list", "clusters", env={"CLOUDMESH_EMR_AGENT": "off"}, cwd=work)
    pid = world.start()
    os.kill(pid, signal.SIGSTOP)
    try:
        client = subprocess.Popen(world.command("list", "clusters"), env=world.env, cwd=work,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: _waiting_for_the_agent(client.pid) or client.poll() is not None, 60,
                 interval=0.02, what="the client to wait for the agent's answer")
        work.rename(tmp_path / "moved")  # the client's folder, under another name
    finally:
        os.kill(pid, signal.SIGCONT)
    out, err = client.communicate(timeout=120)
    assert (client.returncode, out, err) == (here.returncode, here.stdout, here.stderr)
    assert made[0] in out
    assert "declined a command (cannot enter" in Path(world.paths()["log"]).read_text()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_the_agent_keeps_no_credential_of_the_command_that_started_it(world):
    world.cm.write(clouds={}, emr={"retry": {"attempts": 1}})
    made = clusters(world.endpoint, 1)
    marker = "agent-secret-0123456789"
    start = world.cms("agent", "start", "--format=json",
                      env={"AWS_SECRET_ACCESS_KEY": marker, "AWS_SESSION_TOKEN": marker})
    assert start.returncode == 0, start.stderr
    pid = json.loads(start.stdout)["Pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert marker.encode() not in environ and b"AWS_" not in environ
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": world.endpoint}
    found = world.cms("list", "clusters", "--cloud=aws", env=keys)
    assert found.returncode == 0, found.stderr
    assert made[0] in found.stdout
    assert served(world) == 1


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs Linux /proc")
def test_ctrl_c_while_waiting_for_the_agent_runs_nothing(world):
    pid = world.start()
    os.kill(pid, signal.SIGSTOP)
    try:
        client = subprocess.Popen(world.command("list", "clusters"), env=world.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: _waiting_for_the_agent(client.pid) or client.poll() is not None, 60,
                 interval=0.02, what="the client to wait for the agent's answer")
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=60)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert client.returncode == 130
    assert (out, err) == ("", "ERROR: interrupted\n")


def test_a_relative_config_folder_is_served_by_the_agent(world):
    config = Path(os.environ["CLOUDMESH_CONFIG_DIR"])
    made = clusters(world.endpoint, 1)
    env = {"CLOUDMESH_CONFIG_DIR": config.name}

    def status():
        done = world.cms("agent", "status", "--format=json", env=env, cwd=config.parent)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    first = world.cms("list", "clusters", env=env, cwd=config.parent)  # starts the agent
    assert first.returncode == 0, first.stderr
    wait_for(lambda: status().get("Agent") == "running", 60,
             what="the agent the first command started")
    second = world.cms("list", "clusters", env=env, cwd=config.parent)
    assert (second.returncode, second.stdout) == (0, first.stdout)
    assert made[0] in second.stdout
    assert status()["Commands"] == 1


@pytest.mark.skipif(not hasattr(os, "setgroups") or os.geteuid() != 0,
                    reason="changing a process's groups needs root")
def test_a_client_in_other_groups_has_another_agent(world):
    code = "from cloudmesh.emr import agent; print(agent.key())"

    def key(groups):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=world.env, check=True,
                              preexec_fn=lambda: os.setgroups(groups)).stdout.strip()

    assert key([]) != key([4242])
    assert key([4242]) == key([4242])


def test_start_says_when_the_running_agent_runs_other_code(world):
    import cloudmesh.emr

    pid = world.start()
    code = Path(cloudmesh.emr.__file__)
    before = code.stat()
    try:  # an upgraded install since the agent started
        os.utime(code, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        done = world.cms("agent", "start")
    finally:
        os.utime(code, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert done.returncode == 0, done.stderr
    assert f"already running (pid {pid})" in done.stdout and "other code" in done.stdout
    same = world.cms("agent", "start")
    assert "other code" not in same.stdout


def test_ctrl_z_stops_the_command_in_the_agent_and_fg_continues_it(world):
    import psutil

    cluster = clusters(world.endpoint, 1)[0]
    world.start()
    # its own process group in this session, as a shell's job: Ctrl-Z stops a job only
    # where a shell could continue it (the kernel drops SIGTSTP in an orphaned group)
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    client = subprocess.Popen(world.command("wait", cluster, "--until=terminated", "--delay=1"),
                              env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, **group)
    try:
        first = client.stderr.readline()
        assert first.startswith(f"{cluster}: WAITING"), first
        (child,) = [process for agent in world.agents() for process in agent.children()]
        me = psutil.Process(client.pid)
        client.send_signal(signal.SIGTSTP)
        wait_for(lambda: child.status() == psutil.STATUS_STOPPED
                 and me.status() == psutil.STATUS_STOPPED, 30,
                 what="the command and its client to stop")
        client.send_signal(signal.SIGCONT)  # fg
        wait_for(lambda: child.status() != psutil.STATUS_STOPPED, 30,
                 what="the command to go on")
        boto(world.endpoint, "emr").terminate_job_flows(JobFlowIds=[cluster])
        out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, err
    assert out.splitlines() == [f"{cluster} TERMINATED"]


def test_ctrl_z_in_an_orphaned_group_stops_nothing_as_in_process(world):
    """With no shell to continue it (an orphaned process group, as under a new session),
    Ctrl-Z stops no command by itself; through the agent the command is not left stopped
    either, and finishes."""
    import psutil

    cluster = clusters(world.endpoint, 1)[0]
    world.start()
    client = subprocess.Popen(world.command("wait", cluster, "--until=terminated", "--delay=1"),
                              env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        first = client.stderr.readline()
        assert first.startswith(f"{cluster}: WAITING"), first
        (child,) = [process for agent in world.agents() for process in agent.children()]
        client.send_signal(signal.SIGTSTP)
        wait_for(lambda: client.poll() is None and child.status() != psutil.STATUS_STOPPED
                 and psutil.Process(client.pid).status() != psutil.STATUS_STOPPED, 10,
                 what="the command to go on")
        boto(world.endpoint, "emr").terminate_job_flows(JobFlowIds=[cluster])
        out, err = client.communicate(timeout=60)  # a command left stopped never ends
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, err
    assert out.splitlines() == [f"{cluster} TERMINATED"]


def test_commands_do_not_restart_an_agent_whose_start_just_failed(world):
    """The log ends in a failed start: a command runs by itself and starts no agent;
    `agent start` still tries (and here succeeds)."""
    made = clusters(world.endpoint, 1)
    paths = world.paths()
    world.folder.mkdir(mode=0o700)
    Path(paths["log"]).write_text("ERROR: the agent could not start\n")
    done = world.cms("list", "clusters")
    assert done.returncode == 0, done.stderr
    assert made[0] in done.stdout
    assert not Path(paths["log"][:-len("log")] + "started").exists()  # no start was tried
    assert world.agents() == []
    world.start()
    assert world.cms("list", "clusters").stdout == done.stdout
    assert served(world) == 1
