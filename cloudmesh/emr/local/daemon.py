"""The emulator's daemon: EMR and S3 on 127.0.0.1, with the lifecycle engine beside them.

    python -m cloudmesh.emr.local.daemon [--host 127.0.0.1] [--port PORT]
                                         [--state-dir DIR] [--delay SECONDS]
                                         [--time-scale FACTOR]

One process serves the EMR and S3 wire APIs with moto's ThreadedMotoServer (any
AWS client works against it: boto3, the AWS CLI, ``cms emr --cloud=local``), runs
the lifecycle engine in a thread, and runs steps as child processes. ``--port 0``
(the default) takes a free port. It listens on 127.0.0.1 only and refuses any other
host. Once it serves, it writes ``<state dir>/daemon.json`` ({pid, host, port,
endpoint, started, delay, state_dir, log}); on SIGTERM or SIGINT it stops the step
processes it started, stops serving, saves its S3 objects and its clusters and steps
in the state folder (``persist.py``; active clusters are ended as the stop ends them)
and removes that file. The next daemon of that folder starts with them.

Only its user gets in: at start it makes (or reuses) its own access key id and
secret in ``<state dir>/credentials.json`` (mode 0600), and answers only requests
signed with them, for Host 127.0.0.1:PORT or localhost:PORT, without any CORS
header (``guard.py``). ``cms emr local env`` prints them for other clients.

Environment: CLOUDMESH_EMR_LOCAL_SPARK_SUBMIT names a spark-submit to use instead of
pyspark's own (read when a step starts); JAVA_HOME / PATH locate java;
CLOUDMESH_EMR_LOCAL_TIME_SCALE (or --time-scale) speeds up the policy clocks: an idle
timeout of 60 s ends a cluster after 60/FACTOR seconds, metrics are put every 60/FACTOR
seconds (default 1: real time).
"""

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

from cloudmesh.emr import processes
from cloudmesh.emr.local import state
from cloudmesh.emr.local.state import LOG_FILE, LOOPBACK

log = logging.getLogger("cloudmesh.emr.local")
SERVE_LOCK = "serve.lock"  # held by the daemon that serves the folder, for its whole life
TIME_SCALE_ENV = "CLOUDMESH_EMR_LOCAL_TIME_SCALE"


def parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m cloudmesh.emr.local.daemon",
        description="The cloudmesh-emr local EMR emulator (EMR and S3 on 127.0.0.1).",
    )
    parser.add_argument("--host", default=LOOPBACK, help="must be 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port")
    parser.add_argument("--state-dir", help="default: ~/.cloudmesh/emr/local")
    parser.add_argument("--delay", type=float, help="seconds per lifecycle transition")
    parser.add_argument("--time-scale", type=float,
                        help="speed-up of idle timeouts and metrics (default 1)")
    args = parser.parse_args(argv)
    if args.host != LOOPBACK:
        parser.exit(2, f"ERROR: the local emulator listens on {LOOPBACK} only, not {args.host}\n")
    if not 0 <= args.port <= 65535:
        parser.exit(2, f"ERROR: --port {args.port} is not a port (0..65535; 0: a free one)\n")
    if args.delay is not None and args.delay < 0:
        parser.exit(2, f"ERROR: --delay {args.delay} must not be negative\n")
    if args.time_scale is None:
        try:
            args.time_scale = float(os.environ.get(TIME_SCALE_ENV) or 1.0)
        except ValueError:
            parser.exit(2, f"ERROR: {TIME_SCALE_ENV} must be a number\n")
    if args.time_scale <= 0:
        parser.exit(2, f"ERROR: --time-scale {args.time_scale} must be more than 0\n")
    return args


def warm_up(runner):
    """Answer one EMR and one S3 request before announcing the endpoint.

    moto loads its service models on first use, which takes longer than a
    lifecycle transition; a client's first RunJobFlow would never see STARTING.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    runner.s3(DEFAULT_ACCOUNT_ID).list_buckets()
    runner.client("emr", DEFAULT_ACCOUNT_ID).list_clusters()
    ec2_backends[DEFAULT_ACCOUNT_ID][runner.region]  # moto's EC2 holds the instances


def start_server(host, port):
    """moto's ThreadedMotoServer on ``host:port``, started: (server, None) or (None, error).

    ThreadedMotoServer binds in its thread and its start() waits for an event that
    is never set when binding fails (port taken): the daemon would hang. The entry
    point is wrapped to report the error and release the wait.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    failure = []
    entry = server._server_entry

    def guarded_entry():
        try:
            entry()
        except BaseException as error:  # werkzeug exits (SystemExit) when the port is taken
            failure.append(error if str(error) not in ("", "1") else "the port is in use")
            server._server_ready_event.set()

    server._server_entry = guarded_entry
    server.start()
    if failure:
        return None, failure[0]
    return server, None


def secure(state_dir):
    """The daemon's credentials, and every moto server it starts behind the guard.

    A valid pair already kept in the state folder is reused (so that shells set up
    with ``cms emr local env`` keep working after a restart); else a new one is
    made. The secret is never logged.
    """
    from cloudmesh.emr.local import credentials, guard

    pair, reused = credentials.ensure(state_dir)
    guard.install(pair)
    log.info("%s access key %s (kept in %s); every request must be signed with it",
             "reusing the" if reused else "made the new", pair.access_key_id,
             credentials.path(state_dir))
    return pair


def serve(host, port, state_dir, delay, time_scale=1.0):
    """Run until SIGTERM/SIGINT; return the exit code."""
    state_dir = processes.private_folder(state_dir)
    # another daemon serving this folder (the process table decides, not daemon.json;
    # the serve lock, held for the daemon's life, settles two that start at once)
    others = state.server(state_dir).find(exclude=(os.getpid(),))
    serving = None if others else processes.try_lock(state_dir / SERVE_LOCK)
    if serving is None:
        which = f" (pid {others[0].pid})" if others else ""
        print(
            f"ERROR: an emulator already runs for {state_dir}{which}: "
            "stop it first with 'cms emr local stop'",
            file=sys.stderr,
        )
        return 1
    # the master folders of earlier clusters are stale: those clusters have ended
    shutil.rmtree(state_dir / "clusters", ignore_errors=True)

    # settings that make the boto3 clients inside the daemon talk to it directly
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        os.environ.pop(name, None)
    no_proxy = [p for p in os.environ.get("NO_PROXY", "").split(",") if p]
    os.environ["NO_PROXY"] = ",".join(no_proxy + [LOOPBACK, "localhost"])
    os.environ["no_proxy"] = os.environ["NO_PROXY"]
    # IAM knows AWS's managed policies, so that `doctor --fix` can attach EMR's (as on AWS);
    # no role exists until someone makes it, as on a new account
    os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    pair = secure(state_dir)

    from cloudmesh.emr.local import model
    from cloudmesh.emr.local.engine import Engine
    from cloudmesh.emr.local.steps import Runner

    runner = Runner(None, state_dir, credentials=pair)
    from cloudmesh.emr.local.bootstrap import BootstrapRun

    engine = Engine(delay, runner.launch, time_scale=time_scale,
                    bootstrap=lambda cluster: BootstrapRun(runner, cluster))
    model.register(engine)  # before the first request
    from cloudmesh.emr.local import pricing

    pricing.register()  # the Price List API, answered from the shipped (dated) table
    from cloudmesh.emr.local import quotas

    quotas.register()  # EC2's vCPU quotas in Service Quotas, from an emulated table
    from cloudmesh.emr.local import persist

    try:
        persist.load(state_dir)  # what the last daemon of this folder kept
    except Exception:  # a defect: serve anyway, and say what was not restored
        log.exception("cannot restore the saved S3 objects and clusters")

    server, failure = start_server(host, port)
    if failure:
        print(f"ERROR: cannot listen on {host}:{port}: {failure}", file=sys.stderr)
        return 1
    bound_host, bound_port = server.get_host_and_port()
    endpoint = f"http://{bound_host}:{bound_port}"

    runner.endpoint = endpoint
    engine.start()

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %s: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        warm_up(runner)
    except Exception as error:
        print(f"ERROR: the server on {endpoint} does not answer: {error}", file=sys.stderr)
        engine.stop()
        server.stop()
        return 1
    started = datetime.now(timezone.utc)
    state.write(
        state_dir,
        {
            "pid": os.getpid(),
            "host": bound_host,
            "port": bound_port,
            "endpoint": endpoint,
            "started": started.isoformat(),
            "delay": delay,
            "state_dir": str(state_dir),
            "log": str(state_dir / LOG_FILE),
        },
    )
    log.info("serving EMR and S3 on %s (pid %s, %s s per transition)", endpoint, os.getpid(), delay)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("stopping the step processes")
        engine.stop()
        server.stop()
        try:
            persist.save(state_dir)
        except Exception:  # a defect: the daemon still stops; the last saved copy stays
            log.exception("cannot save the S3 objects and clusters")
        state.remove(state_dir, os.getpid())
        log.info("stopped")
    return 0


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from cloudmesh.emr.config import Settings, state_dir

    try:
        delay = args.delay if args.delay is not None else Settings.load().local_delay()
    except Exception as error:  # a bad cloudmesh.yaml: say so, exit as usage error
        print(f"ERROR: {getattr(error, 'message', error)}", file=sys.stderr)
        return 2
    return serve(args.host, args.port, args.state_dir or state_dir("local"), delay,
                 time_scale=args.time_scale)


if __name__ == "__main__":
    sys.exit(main())
