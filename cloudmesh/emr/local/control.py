"""Start, inspect and stop the local emulator: ``cms emr local start|status|stop``.

Imported on the CLI's start-up path and by ``config.py``: only the standard library
at module level (boto3 is imported inside the functions that query the emulator).
Each function returns a plain dict for the printer. ``state`` (optional everywhere)
is the emulator's state folder; the default is ``state_dir("local")``, i.e.
``$CLOUDMESH_CONFIG_DIR/emr/local`` or ``~/.cloudmesh/emr/local``.
"""

import socket
import sys
from datetime import datetime
from pathlib import Path

from cloudmesh.emr import processes
from cloudmesh.emr.errors import AwsError, Conflict, EmrError, UsageError
from cloudmesh.emr.local.state import (
    DAEMON_MODULE,
    LOG_FILE,
    LOOPBACK,
    port_answers,
    read,
    server,
)

ACTIVE_STATES = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING", "TERMINATING"]
START_TIMEOUT = 60.0  # seconds for a new daemon to serve
STOP_TIMEOUT = 20.0  # seconds between SIGTERM and SIGKILL
PORT_HINT = "give a port 1..65535, or 0 (or no --port) for a free one"
NOT_RUNNING = "the local emulator is not running: start it with 'cms emr local start'"
EVERYTHING = "its clusters, steps and S3 objects"
ENDS_ACTIVE = ("stopping it ends them (they come back TERMINATED, their unfinished steps "
               "CANCELLED)")

# what was done about a lost or wrong daemon.json (rebuilt, or removed): the command
# shows these as WARNING lines (take_warnings)
warnings = []


def take_warnings():
    """The warnings collected since the last call, once each."""
    taken = list(warnings)
    del warnings[:]
    return taken


def running(state):
    """daemon.json of a live daemon of ours serving ``state`` that answers, or None."""
    from cloudmesh.emr.local.state import running as found

    return found(state, warnings)


def _state(state=None):
    if state is not None:
        return Path(state)
    from cloudmesh.emr.config import state_dir

    return state_dir("local")


def _started(data):
    try:
        return datetime.fromisoformat(data["started"])
    except (KeyError, TypeError, ValueError):
        return None


def _client(service, endpoint, state=None):
    """A boto3 client of the emulator at ``endpoint``, signing with its credentials."""
    import boto3
    from botocore.config import Config

    from cloudmesh.emr.local import credentials

    pair = credentials.read(_state(state))
    if pair is None:
        raise EmrError(f"the local emulator's credentials are missing from {_state(state)}: "
                       "restart it with 'cms emr local stop --force' and 'cms emr local start'")
    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint,
        region_name=credentials.REGION,
        **pair.boto(),
        config=Config(
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            s3={"addressing_style": "path"},
        ),
    )


def _port(port):
    if port is None or port == "":
        return 0
    try:
        number = int(str(port).strip())
    except ValueError:
        raise UsageError(f"--port '{port}' is not a number: {PORT_HINT}") from None
    if not 0 <= number <= 65535:
        raise UsageError(f"--port {number} is out of range: {PORT_HINT}")
    return number


def _port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _info(data, state, already):
    return {
        "Endpoint": data.get("endpoint"),
        "Pid": data.get("pid"),
        "Port": data.get("port"),
        "StateDir": str(state),
        "Log": data.get("log") or str(state / LOG_FILE),
        "Delay": data.get("delay"),
        "Started": _started(data),
        "AlreadyRunning": already,
    }


# ---- the public functions ----------------------------------------------------------


def endpoint(state=None):
    """The running emulator's endpoint URL (``http://127.0.0.1:PORT``), or None."""
    data = running(_state(state))
    return data.get("endpoint") if data else None


def require_endpoint(state=None):
    """The running emulator's endpoint; EmrError saying how to start it otherwise."""
    url = endpoint(state)
    if not url:
        raise EmrError(NOT_RUNNING)
    return url


def env(state=None):
    """What another client needs to use the running emulator: the AWS_* variables.

    {AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION};
    EmrError when the emulator is not running. The one place the secret is handed
    out, because the user asks for it.
    """
    from cloudmesh.emr.local import credentials

    state = _state(state)
    url = require_endpoint(state)
    pair = credentials.read(state)
    if pair is None:
        raise EmrError(f"the local emulator at {url} keeps no valid credentials in {state}: "
                       "restart it with 'cms emr local stop --force' and 'cms emr local start'")
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": pair.access_key_id,
        "AWS_SECRET_ACCESS_KEY": pair.secret_access_key,
        "AWS_DEFAULT_REGION": credentials.REGION,
    }


def moto_api(path, method="POST", body=b"", state=None, timeout=60):
    """Call moto's own ``/moto-api/...`` on the running emulator, signed with its credentials.

    For test harnesses (``moto_api("/moto-api/reset")`` empties every backend); the
    daemon refuses unsigned calls like any other. Returns (HTTP status, body bytes).
    """
    import urllib.error
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from cloudmesh.emr.local import credentials

    state = _state(state)
    url = require_endpoint(state) + "/" + path.lstrip("/")
    pair = credentials.read(state)
    if pair is None:
        raise EmrError(f"the local emulator keeps no valid credentials in {state}")
    request = AWSRequest(method=method, url=url, data=body)
    SigV4Auth(Credentials(pair.access_key_id, pair.secret_access_key), "s3",
              credentials.REGION).add_auth(request)
    prepared = urllib.request.Request(url, data=body or None, method=method,
                                      headers=dict(request.headers.items()))
    try:
        with urllib.request.urlopen(prepared, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def start(port=None, delay=None, state=None):
    """Start the daemon detached (or find the running one) and wait until it serves.

    Returns {Endpoint, Pid, Port, StateDir, Log, Delay, Started, AlreadyRunning}.
    """
    port = _port(port)
    state = processes.private_folder(_state(state))
    daemon = server(state)
    try:
        with daemon.start_lock(what="start the emulator"):
            try:
                return _start(port, delay, state, daemon)
            finally:
                warnings.extend(daemon.warnings)
    except processes.ProcessError as error:
        raise EmrError(error.message) from None


def _start(port, delay, state, daemon):
    found, process = daemon.locate()
    if found:
        if port_answers(found.get("port")):
            return _info(found, state, True)
        raise EmrError(
            f"the local emulator (pid {process.pid}) runs for {state} but does not answer; "
            f"see {state / LOG_FILE}, or stop it with 'cms emr local stop --force'"
        )
    if delay is None:
        from cloudmesh.emr.config import Settings

        delay = Settings.load().local_delay()
    try:
        delay = float(delay)
    except (TypeError, ValueError):
        raise UsageError(f"the emulator delay '{delay}' is not a number of seconds") from None
    if delay < 0:
        raise UsageError(f"the emulator delay '{delay}' must not be negative")
    if port and not _port_free(port):
        raise EmrError(
            f"port {port} on {LOOPBACK} is in use: choose another with --port, "
            "or leave --port out to take a free one"
        )
    command = [
        sys.executable, "-m", DAEMON_MODULE,
        "--host", LOOPBACK, "--port", str(port), "--state-dir", str(state), "--delay", str(delay),
    ]

    def ready(process, _output):  # the daemon writes daemon.json once it serves
        data = read(state)
        if data and data.get("pid") == process.pid and port_answers(data.get("port")):
            return data
        return None

    try:
        _, data = processes.spawn(
            command, state / LOG_FILE, ready, START_TIMEOUT, "the local emulator", cwd=state)
    except processes.ProcessError as error:
        raise EmrError(error.message) from None
    return _info(data, state, False)


def status(state=None):
    """{Running, Endpoint, Pid, Port, Started, StateDir, Log, Delay, Clusters, StepsRunning}."""
    state = _state(state)
    daemon = server(state)
    try:
        data, process = daemon.locate()
    finally:
        warnings.extend(daemon.warnings)
    if process is not None and not port_answers(data.get("port")):
        raise AwsError(
            f"the local emulator (pid {process.pid}) runs for {state} but does not answer; "
            f"see {state / LOG_FILE}, or restart it with 'cms emr local stop --force'"
        )
    result = {
        "Running": bool(data),
        "Endpoint": None,
        "Pid": None,
        "Port": None,
        "Started": None,
        "StateDir": str(state),
        "Log": str(state / LOG_FILE),
        "Delay": None,
        "Clusters": {},
        "StepsRunning": 0,
    }
    if not data:
        return result
    result.update(
        Endpoint=data.get("endpoint"),
        Pid=data.get("pid"),
        Port=data.get("port"),
        Started=_started(data),
        Delay=data.get("delay"),
    )
    try:
        clusters = _clusters(data["endpoint"], state)
        emr = _client("emr", data["endpoint"], state)
        steps_running = sum(
            len(_steps(emr, cluster["Id"], ["RUNNING"]))
            for cluster in clusters
            if cluster["Status"]["State"] in ACTIVE_STATES
        )
    except Exception as error:  # botocore's errors, without importing botocore here
        raise AwsError(
            f"the local emulator at {data['endpoint']} did not answer ({error}); "
            f"see {result['Log']}, or restart it with 'cms emr local stop --force'"
        ) from None
    counts = {}
    for cluster in clusters:
        state_name = cluster["Status"]["State"]
        counts[state_name] = counts.get(state_name, 0) + 1
    result["Clusters"] = dict(sorted(counts.items()))
    result["StepsRunning"] = steps_running
    return result


def stop(force=False, state=None):
    """Stop the daemon; refuse (Conflict) while clusters are active unless ``force``.

    The daemon saves its clusters, steps and S3 objects in its folder as it stops and
    puts them back at the next start. Returns {Stopped, Pid, Endpoint, Kept};
    {Stopped: False, ...} when none runs.
    """
    state = _state(state)
    daemon = server(state)
    try:
        with daemon.start_lock(what="stop the emulator"):
            return _stop(force, state, daemon)
    except processes.ProcessError as error:
        raise EmrError(error.message) from None
    finally:
        warnings.extend(daemon.warnings)


def _stop(force, state, daemon):
    data, process = daemon.locate(save=False)
    if process is None:
        return {"Stopped": False, "Pid": None, "Endpoint": None,
                "Kept": "nothing to keep: the local emulator is not running"}
    url = data.get("endpoint")
    kept = f"kept {EVERYTHING} in {state} for the next 'cms emr local start'"
    if url and port_answers(data.get("port")):
        try:
            clusters = _clusters(url, state)
        except Exception as error:  # botocore's errors, without importing botocore here
            if not force:
                raise AwsError(
                    f"the local emulator at {url} did not answer ({error}); "
                    f"'cms emr local stop --force' stops it anyway"
                ) from None
            clusters = None
        if clusters is not None:
            active = [c["Id"] for c in clusters if c["Status"]["State"] in ACTIVE_STATES]
            if active and not force:
                raise Conflict(
                    f"the local emulator has {len(active)} active cluster(s): "
                    f"{', '.join(sorted(active))}; {ENDS_ACTIVE}: stop them with "
                    f"'cms emr stop CLUSTERID', or use 'cms emr local stop --force'"
                )
            kept = (f"kept {_kept(url, clusters, state)} in {state} "
                    "for the next 'cms emr local start'")
            if active:
                kept += f"; its {len(active)} active cluster(s) come back TERMINATED"
    processes.terminate([process], STOP_TIMEOUT)  # checked to be ours by locate()
    daemon.remove_state()  # ours, or stale: no daemon serves this folder any more
    return {"Stopped": True, "Pid": process.pid, "Endpoint": url, "Kept": kept}


# ---- helpers of status and stop ------------------------------------------------------


def _clusters(url, state=None):
    emr = _client("emr", url, state)
    return [c for page in emr.get_paginator("list_clusters").paginate() for c in page["Clusters"]]


def _steps(emr, cluster_id, states=None):
    kwargs = {"ClusterId": cluster_id}
    if states:
        kwargs["StepStates"] = states
    return [s for page in emr.get_paginator("list_steps").paginate(**kwargs) for s in page["Steps"]]


def _kept(url, clusters, state=None):
    """What the daemon keeps as it stops, counted: clusters, steps, buckets and objects."""
    try:
        emr = _client("emr", url, state)
        steps = sum(len(_steps(emr, c["Id"])) for c in clusters)
        s3 = _client("s3", url, state)
        buckets = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
        objects = 0
        for bucket in buckets:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                objects += page.get("KeyCount", 0)
    except Exception:  # counting is a courtesy; the daemon still stops
        return EVERYTHING
    return (
        f"{len(clusters)} cluster(s), {steps} step(s) and {objects} S3 object(s) in "
        f"{len(buckets)} bucket(s)"
    )
