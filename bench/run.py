"""`make bench`: cms emr measured side by side with the tools a user would pick instead.

One run starts a moto server and the embedded database on 127.0.0.1 (free ports, stopped
by their PID), then measures each row as ours against its anchor, alternately (A B A B
...), and reports each one's median and the median of the pairwise ratios, so a ratio
holds on any machine. A ratio past its target is flagged; nothing here is a test.

Rows:
  cli-list      `cms emr list clusters`, 100 clusters, whole process, against
                `aws emr list-clusters` (the AWS CLI from PyPI, in .venv-awscli), as a
                user has it by default: the first command starts the agent, the
                measured ones use it
  cli-list-cold the same with the agent off (CLOUDMESH_EMR_AGENT=off): every command
                starts its interpreter and imports afresh (informational, no target)
  list-5000     Provider.list_clusters of 5,000 clusters, a repeat listing with its
                database write, against a raw boto3 paginator
  rewritten     documents rewritten by that repeat listing of unchanged clusters
  list-memory   peak Python memory (tracemalloc) of the 5,000-cluster listing, against
                the raw paginator's
  per-cluster   time per cluster of the repeat listing at 100, 1,000, 5,000 clusters
  upload        `cms emr upload` of 256 MiB, whole process (through the agent),
                against `aws s3 cp` (throughput ratio), and each one's peak RSS (ours
                with the agent off: through the agent, the work is not the measured
                process's own)
  rest          REST GET /clusters with 100 clusters, 4 client threads (requests/s)
  emulator      add a word-count step on the local emulator until COMPLETED, against
                a bare spark-submit of the same program

Options: --only ROW[,ROW...] runs some rows; --quick halves the repetitions; --markdown
prints the saved results as a Markdown table.
Results go to bench/results.json as well as the screen.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results.json"
AWS = ROOT / ".venv-awscli" / "bin" / "aws"
PYTHON = sys.executable
SIZES = (100, 1000, 5000)
UPLOAD_MIB = 256
REST_THREADS = 4
REST_SECONDS = 3.0
SPARK_SUBMIT_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"

# row -> (how ours compares with the anchor, target); "lower": ours/anchor <= target,
# "higher": the figure >= target, "equal": the figure == target
TARGETS = {
    "cli-list": ("lower", 0.5),
    "cli-list-cold": ("lower", None),  # informational: the agent off
    "list-5000": ("lower", 1.25),
    "rewritten": ("equal", 0),
    "list-memory": ("lower", 1.5),
    "per-cluster": ("lower", 1.25),
    "upload": ("higher", 1.0),
    "upload-rss": ("lower", 200.0),
    "rest": ("higher", 200.0),
    "emulator": ("lower", 1.2),
}


# ---- plumbing ---------------------------------------------------------------------------


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


def answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop(process, wait=15):
    """End a process we started, by its PID: SIGTERM, then SIGKILL."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


def timed(job):
    start = time.perf_counter()
    job()
    return time.perf_counter() - start


# A small launcher runs each measured command: Linux counts into a child's peak RSS the
# memory of the process it was forked from, so the bench itself must not be the parent.
LAUNCHER = """
import os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def run_measured(command, env):
    """Run a command to its end; (seconds, its own peak RSS in MB). Exit != 0 ends the bench."""
    done = subprocess.run([PYTHON, "-S", "-c", LAUNCHER, *map(str, command)], env=env,
                          capture_output=True, text=True)
    try:
        seconds, peak, code = done.stdout.split()
    except ValueError:
        code = done.returncode
    if int(code):
        raise SystemExit(f"bench: {' '.join(map(str, command))} exited with {code}: "
                         f"{done.stderr[-800:]}")
    return float(seconds), int(peak) / 1024  # ru_maxrss is in KiB on Linux


def pairs(count, ours, anchor):
    """Run ours and the anchor alternately ``count`` times; ([ours], [anchor])."""
    a, b = [], []
    for index in range(count):
        if index % 2:  # who goes first alternates too
            b.append(anchor())
            a.append(ours())
        else:
            a.append(ours())
            b.append(anchor())
    return a, b


def row(name, measure, unit, ours, anchor=None, anchor_name="", ratios=None, note=""):
    how, target = TARGETS[name]
    ours_median = statistics.median(ours)
    anchor_median = statistics.median(anchor) if anchor else None
    if ratios is None:
        ratio = ours_median
    else:
        ratio = statistics.median(ratios)
    if target is None:  # informational: no target to meet
        met, shown = True, "(none)"
    else:
        met = {"lower": ratio <= target, "higher": ratio >= target,
               "equal": ratio == target}[how]
        shown = {"lower": "<= ", "higher": ">= ", "equal": "= "}[how] + f"{target:g}"
    return {"row": name, "measure": measure, "unit": unit, "ours": ours_median,
            "anchor": anchor_median, "anchor_name": anchor_name,
            "ratio": ratio if ratios is not None else None,
            "figure": ratio, "target": shown, "met": met,
            "samples": {"ours": ours, "anchor": anchor}, "note": note}


# ---- the world: moto server, database, clusters -------------------------------------------


class Moto:
    """A moto server on 127.0.0.1 at a free port, stopped by its PID."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [str(Path(PYTHON).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: answers(self.port), 30, "the moto server")


class World:
    """One moto server per listing size (moto keeps EMR clusters per account, whatever the
    region). The 100-cluster one also serves the whole-process, upload and REST rows; the
    others are apart because a moto server holding thousands of clusters answers every
    request slower (its garbage collector walks them all)."""

    def __init__(self, folder):
        self.folder = folder
        self.servers = {count: Moto() for count in SIZES}
        self.endpoint = self.servers[100].endpoint
        clouds = {f"bench{n}": {"credentials": {
            "EC2_ACCESS_ID": "bench", "EC2_SECRET_KEY": "bench", "region": "us-east-1",
            "endpoint": server.endpoint}} for n, server in self.servers.items()}
        clouds["bench"] = clouds["bench100"]
        (folder / "cloudmesh.yaml").write_text(json.dumps({"cloudmesh": {
            "cloud": clouds, "data": {"mongo": {"MODE": "embedded"}}}}))
        from cloudmesh.emr.database import EmbeddedServer

        self.database_server = EmbeddedServer()
        self.database_server.start()
        # the agent is off unless a row turns it on (agent_env): a row measures it on purpose
        self.env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_PAGER": "", "PYTHONPATH": str(ROOT), "CLOUDMESH_EMR_AGENT": "off"}
        self.agent_env = {**self.env, "CLOUDMESH_EMR_AGENT": "on"}
        self.agent_pid = None

    def agent_status(self):
        done = subprocess.run(cms("agent", "status", "--format=json"), env=self.agent_env,
                              capture_output=True, text=True)
        info = json.loads(done.stdout) if done.returncode == 0 else {}
        return info if info.get("Agent") == "running" else None

    def warm_agent(self):
        """Wait until the agent that a command with agent_env started answers; its pid."""
        self.agent_pid = wait_until(lambda: (self.agent_status() or {}).get("Pid"), 60,
                                    "the cms emr agent")
        return self.agent_pid

    def served(self):
        """How many commands the agent has run (0 when none runs)."""
        return (self.agent_status() or {}).get("Commands", 0)

    def agent_socket(self):
        """The socket of the bench's agent, as agent.py names it for agent_env (or None)."""
        code = ("from cloudmesh.emr import agent\n"
                "try:\n    print(agent.paths()['socket'])\nexcept agent.AgentError:\n    pass")
        done = subprocess.run([sys.executable, "-c", code], env=self.agent_env,
                              capture_output=True, text=True)
        return done.stdout.strip() or None

    def stop_agent(self):
        """Stop the bench's agent by its PID (`cms emr agent stop` checks it is ours), and
        any agent process still serving the bench's socket (one that was warming, or whose
        warm-up failed), whether or not a row saw it answer."""
        import psutil

        done = subprocess.run(cms("agent", "stop"), env=self.agent_env, capture_output=True,
                              text=True)
        if done.returncode:
            print(f"bench: cms emr agent stop: {done.stderr}", file=sys.stderr)
        self.agent_pid = None
        where = self.agent_socket()
        if where is None:
            return
        left = []
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            if "--socket" in cmdline and cmdline[cmdline.index("--socket") + 1:][:1] == [where]:
                left.append(process)
        for process in left:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=15)

    def close(self):
        try:
            self.stop_agent()
        finally:
            for server in self.servers.values():
                stop(server.process)
            self.database_server.stop()

    def boto(self, service, endpoint=None):
        import boto3

        return boto3.session.Session().client(
            service, endpoint_url=endpoint or self.endpoint, region_name="us-east-1",
            aws_access_key_id="bench", aws_secret_access_key="bench")

    def make_clusters(self, sizes):
        for count in sizes:
            server = self.servers[count]
            emr = self.boto("emr", server.endpoint)

            def one(index, emr=emr):
                emr.run_job_flow(
                    Name=f"bench-{index}", ReleaseLabel="emr-7.12.0",
                    Instances={"MasterInstanceType": "m5.xlarge",
                               "SlaveInstanceType": "m5.xlarge", "InstanceCount": 3,
                               "KeepJobFlowAliveWhenNoSteps": True},
                    JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole")

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(one, range(count)))


def cms(*words):
    return [PYTHON, "-m", "cloudmesh.emr", *map(str, words)]


# ---- the rows -------------------------------------------------------------------------------


def cli_list(world, repeat):
    ours_cmd = cms("list", "clusters", "--cloud=bench")
    anchor_cmd = [str(AWS), "emr", "list-clusters", "--endpoint-url", world.endpoint]
    # the first listing writes, and starts the agent in the background; the rest repeat it
    run_measured(ours_cmd, world.agent_env)
    world.warm_agent()
    run_measured(anchor_cmd, world.env)
    before = world.served()
    ours, anchor = pairs(repeat, lambda: run_measured(ours_cmd, world.agent_env)[0],
                         lambda: run_measured(anchor_cmd, world.env)[0])
    through = world.served() - before
    cold, cold_anchor = pairs(repeat, lambda: run_measured(ours_cmd, world.env)[0],
                              lambda: run_measured(anchor_cmd, world.env)[0])
    return [row("cli-list", "list clusters, 100 clusters, whole process (agent on, the "
                "default)", "s", ours, anchor, "aws emr list-clusters",
                [a / b for a, b in zip(ours, anchor)],
                note=f"{through} of {repeat} measured commands ran in the agent"),
            row("cli-list-cold", "list clusters, 100 clusters, whole process (agent off)",
                "s", cold, cold_anchor, "aws emr list-clusters",
                [a / b for a, b in zip(cold, cold_anchor)])]


def provider_lists(world, repeat):
    """list-5000, rewritten, per-cluster and list-memory: Provider.list_clusters in-process."""
    from cloudmesh.emr.api.provider import Provider

    rows, per_cluster, per_cluster_raw = [], {}, {}
    for count in SIZES:
        provider = Provider(cloud=f"bench{count}")
        raw = world.boto("emr", world.servers[count].endpoint)

        def anchor(raw=raw):
            pages = raw.get_paginator("list_clusters").paginate()
            return [c for page in pages for c in page["Clusters"]]

        def ours(provider=provider):
            clusters = provider.list_clusters()
            if provider.database_error:
                raise SystemExit(f"bench: {provider.database_error.message}")
            return clusters

        listed = (len(ours()), len(anchor()))  # the first listing writes
        assert listed == (count, count), (listed, count)
        collection = provider.database.collection(provider.cloud, "cluster")
        before = {d["_id"]: d["cm"]["modified"] for d in collection.find({}, {"cm.modified": 1})}
        # the 5,000 row has a target: more pairs, so one slow moment of a busy machine
        # does not decide its median
        times = pairs(repeat if count == 5000 else max(2, repeat // 2),
                      lambda: timed(ours), lambda: timed(anchor))
        per_cluster[count] = statistics.median(times[0]) / count
        per_cluster_raw[count] = statistics.median(times[1]) / count
        if count == 5000:
            after = {d["_id"]: d["cm"]["modified"] for d in collection.find({}, {"cm.modified": 1})}
            changed = sum(1 for key, stamp in after.items() if before.get(key) != stamp)
            rows.append(row("list-5000", "Provider.list_clusters, 5,000 clusters, repeat "
                            "listing", "s", times[0], times[1], "raw boto3 paginator",
                            [a / b for a, b in zip(*times)]))
            rows.append(row("rewritten", "documents rewritten by a repeat listing of 5,000 "
                            "unchanged clusters", "docs", [changed],
                            note=f"over {len(times[0])} repeat listings"))

            def peak(job):
                tracemalloc.start()
                job()
                high = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                return high / 2**20

            memory = pairs(1, lambda: peak(ours), lambda: peak(anchor))  # the same every time
            rows.append(row("list-memory", "peak Python memory, listing 5,000 clusters", "MB",
                            memory[0], memory[1], "raw boto3 paginator",
                            [a / b for a, b in zip(*memory)]))
        provider.database.close()
    # moto's ListClusters itself slows down per cluster as they grow (each page walks
    # them all), so the anchor's growth is divided out: what is left is our own
    growth = (per_cluster[5000] / per_cluster[100]) / (per_cluster_raw[5000] / per_cluster_raw[100])
    rows.append(row(
        "per-cluster", "time per cluster, repeat listing at 100 / 1,000 / 5,000", "ms",
        [per_cluster[5000] * 1000], [per_cluster_raw[5000] * 1000], "raw paginator", [growth],
        note="ms per cluster: " + " / ".join(f"{per_cluster[n] * 1000:.3f}" for n in SIZES)
        + " (raw paginator " + " / ".join(f"{per_cluster_raw[n] * 1000:.3f}" for n in SIZES)
        + "); ratio = our growth from 100 to 5,000 over the paginator's"))
    return rows


def upload(world, repeat):
    s3 = world.boto("s3")
    s3.create_bucket(Bucket="bench")
    path = world.folder / "upload.bin"
    with open(path, "wb") as handle:
        block = os.urandom(1024 * 1024)
        for _ in range(UPLOAD_MIB):
            handle.write(block)
    ours_cmd = cms("upload", path, "bench", "ours.bin", "--cloud=bench")
    anchor_cmd = [str(AWS), "s3", "cp", "--quiet", str(path), "s3://bench/anchor.bin",
                  "--endpoint-url", world.endpoint]
    rss = {"ours": [], "anchor": []}

    def measure(command, who, env):
        seconds, peak = run_measured(command, env)
        rss[who].append(peak)
        return seconds

    if world.agent_pid is None:  # the first upload starts the agent, as a user's would
        run_measured(ours_cmd, world.agent_env)
        world.warm_agent()
    before = world.served()
    ours, anchor = pairs(max(3, repeat // 2), lambda: run_measured(ours_cmd, world.agent_env)[0],
                         lambda: measure(anchor_cmd, "anchor", world.env))
    through = world.served() - before
    # peak RSS of our upload in its own process (agent off): through the agent the
    # measured process only waits while the agent's child uploads
    for _ in range(max(3, repeat // 2)):
        measure(ours_cmd, "ours", world.env)
    size = s3.head_object(Bucket="bench", Key="ours.bin")["ContentLength"]
    assert size == UPLOAD_MIB * 2**20, size
    path.unlink()
    mib = UPLOAD_MIB
    return [
        row("upload", f"upload {mib} MiB, whole process (MiB/s)", "MiB/s",
            [mib / t for t in ours], [mib / t for t in anchor], "aws s3 cp",
            [b / a for a, b in zip(ours, anchor)],
            note=f"{through} of {len(ours)} measured uploads ran in the agent"),
        row("upload-rss", f"upload {mib} MiB, peak RSS (agent off)", "MB", rss["ours"],
            rss["anchor"], "aws s3 cp", None),
    ]


def rest(world, repeat):
    port = free_port()
    log = open(world.folder / "rest.log", "wb")
    server = subprocess.Popen(
        cms("server", "start", "--port", port, "--cloud=bench"), env=world.env,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: answers(port) or server.poll() is not None, 60, "the REST service")
        if server.poll() is not None:
            raise SystemExit(f"bench: the REST service exited: {(world.folder / 'rest.log').read_text()}")

        def get(connection):
            connection.request("GET", "/clusters")
            answer = connection.getresponse()
            body = answer.read()
            if answer.status != 200:
                raise SystemExit(f"bench: GET /clusters answered {answer.status}: {body[:300]}")
            return body

        first = json.loads(get(http.client.HTTPConnection("127.0.0.1", port, timeout=60)))
        assert len(first) == 100, len(first)

        def load(seconds):
            done = [0] * REST_THREADS
            deadline = time.monotonic() + seconds

            def client(index):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                while time.monotonic() < deadline:
                    get(connection)
                    done[index] += 1
                connection.close()

            threads = [threading.Thread(target=client, args=(i,)) for i in range(REST_THREADS)]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return sum(done) / (time.perf_counter() - start)

        rates = [load(REST_SECONDS) for _ in range(max(2, repeat // 2))]
    finally:
        stop(server)
        log.close()
    return [row("rest", f"REST GET /clusters, 100 clusters, {REST_THREADS} client threads",
                "req/s", rates)]


def emulator(world, repeat):
    from cloudmesh.emr.api.provider import Provider

    state = world.folder / "emr" / "local"
    state.mkdir(parents=True, exist_ok=True)
    env = {**world.env, "SPARK_SUBMIT_OPTS": SPARK_SUBMIT_OPTS}
    daemon = subprocess.Popen(
        [PYTHON, "-m", "cloudmesh.emr.local.daemon", "--host", "127.0.0.1", "--port", "0",
         "--state-dir", str(state), "--delay", "0.2"],
        env=env, stdout=open(state / "daemon.bench.log", "wb"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def served():
            if daemon.poll() is not None:
                raise SystemExit(f"bench: the emulator exited with {daemon.returncode}")
            try:
                return json.loads((state / "daemon.json").read_text()).get("pid") == daemon.pid
            except (OSError, ValueError):
                return False

        wait_until(served, 60, "the emulator")
        provider = Provider(cloud="local")
        emr, s3 = provider.client("emr"), provider.client("s3")
        s3.create_bucket(Bucket="bench")
        program = ROOT / "examples" / "wordcount.py"
        sample = ROOT / "examples" / "data" / "sample.txt"
        provider.upload(program, "bench", "wordcount.py")
        provider.upload(sample, "bench", "input/sample.txt")
        provider.doctor(fix=True)  # EMR's default roles, which every start checks for
        cluster = provider.start("bench", count=1)["Target"]
        wait_until(lambda: emr.describe_cluster(ClusterId=cluster)["Cluster"]["Status"]["State"]
                   == "WAITING", 60, "the emulator's cluster")
        runs = [0]

        def ours():
            runs[0] += 1
            start = time.perf_counter()
            step = provider.run(cluster, "bench", "wordcount.py",
                                ["s3://bench/input/sample.txt", f"s3://bench/out-{runs[0]}"])
            state_of = lambda: emr.describe_step(  # noqa: E731
                ClusterId=cluster, StepId=step["Target"])["Step"]["Status"]["State"]
            final = wait_until(lambda: state_of() in ("COMPLETED", "FAILED", "CANCELLED")
                               and state_of(), 300, "the step")
            if final != "COMPLETED":
                raise SystemExit(f"bench: the emulator's word count ended {final}")
            return time.perf_counter() - start

        import pyspark

        home = Path(pyspark.__file__).parent  # the spark-submit the emulator runs
        bare = {**env, "SPARK_HOME": str(home), "PYSPARK_PYTHON": PYTHON,
                "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOCAL_HOSTNAME": "localhost"}

        def anchor():
            runs[0] += 1
            out = world.folder / f"spark-out-{runs[0]}"
            command = [str(home / "bin" / "spark-submit"), str(program), str(sample), str(out)]
            return run_measured(command, bare)[0]

        count = 2  # a Spark run takes seconds: two pairs
        times = pairs(count, ours, anchor)
        provider.stop([cluster])
    finally:
        stop(daemon, wait=30)
    return [row("emulator", "emulator: add-step to COMPLETED, word count", "s", times[0],
                times[1], "bare spark-submit", [a / b for a, b in zip(*times)])]


ROWS = {"cli-list": cli_list, "list": provider_lists, "upload": upload, "rest": rest,
        "emulator": emulator}


# ---- the table ---------------------------------------------------------------------------------


def show(rows):
    def fmt(value):
        if value is None:
            return ""
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    header = ("measure", "unit", "cms emr", "anchor", "ratio / figure", "target", "")
    lines = [header]
    for r in rows:
        anchor = f"{r['anchor_name']} {fmt(r['anchor'])}".strip() if r["anchor"] is not None \
            else ""
        lines.append((r["measure"], r["unit"], fmt(r["ours"]), anchor, fmt(r["figure"]),
                      r["target"], "" if r["met"] else "PAST TARGET"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    for r in rows:
        if r["note"]:
            print(f"  {r['row']}: {r['note']}")


def markdown(results):
    """The saved results as a Markdown table (for the README)."""
    def fmt(value):
        return "" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| measure | cms emr | anchor | ratio or figure | target | met |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results["rows"]:
        anchor = f"{r['anchor_name']} {fmt(r['anchor'])} {r['unit']}" if r["anchor"] is not None \
            else ""
        lines.append(f"| {r['measure']} | {fmt(r['ours'])} {r['unit']} | {anchor} | "
                     f"{fmt(r['figure'])} | {r['target']} | {'yes' if r['met'] else 'no'} |")
    notes = [f"- {r['row']}: {r['note']}" for r in results["rows"] if r["note"]]
    return "\n".join(lines + [""] + notes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(ROWS), help="rows: " + ", ".join(ROWS))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--markdown", action="store_true",
                        help="print the saved results as a Markdown table, and run nothing")
    options = parser.parse_args()
    if options.markdown:
        print(markdown(json.loads(RESULTS.read_text())))
        return
    chosen = [name.strip() for name in options.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in ROWS]
    if unknown:
        parser.error(f"unknown rows: {', '.join(unknown)}")
    if not AWS.exists() and {"cli-list", "upload"} & set(chosen):
        raise SystemExit("bench: the AWS CLI is missing: run 'make .venv-awscli' first")
    repeat = 3 if options.quick else 6

    folder = Path(tempfile.mkdtemp(prefix="cloudmesh-emr-bench-"))
    os.environ["CLOUDMESH_CONFIG_DIR"] = str(folder)
    os.environ["HOME"] = str(folder)  # neither ~/.aws nor ~/.cloudmesh of the user
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE",
                "AWS_SHARED_CREDENTIALS_FILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(key, None)
    started = time.monotonic()
    world = World(folder)
    rows = []
    try:
        sizes = SIZES if "list" in chosen else (100,)  # only the listings need the others
        world.make_clusters(sizes)
        print(f"(set up in {time.monotonic() - started:.1f} s: moto servers, "
              f"{sum(sizes)} clusters)", flush=True)
        for name in chosen:
            began = time.monotonic()
            rows.extend(ROWS[name](world, repeat))
            print(f"({name}: {time.monotonic() - began:.1f} s)", flush=True)
    finally:
        world.close()
        shutil.rmtree(folder, ignore_errors=True)
    show(rows)
    RESULTS.write_text(json.dumps({
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "repeat": repeat,
        "rows": rows}, indent=2))
    over = [r["row"] for r in rows if not r["met"]]
    print(f"results in {RESULTS.relative_to(ROOT)}; whole run {time.monotonic() - started:.0f} s")
    if over:
        print("past target: " + ", ".join(over))


if __name__ == "__main__":
    main()
