"""The emulator's state folder: ``daemon.json`` and the checks around it.

``daemon.json`` says where a running daemon listens: {pid, host, port, endpoint,
started, delay, state_dir, log}. The daemon writes it (atomically) once it serves and
removes it when it stops. It is trusted only while its pid is a daemon of ours
serving this folder (``cloudmesh.emr.processes``: the process table decides); a lost
or wrong file is rebuilt from the daemon found in the process table, or removed with
a warning when none runs. Standard library only at module level.
"""

from datetime import datetime, timezone
from pathlib import Path

from cloudmesh.emr import processes

LOOPBACK = processes.LOOPBACK
STATE_FILE = "daemon.json"
LOG_FILE = "daemon.log"
DAEMON_MODULE = "cloudmesh.emr.local.daemon"


def runs_daemon(cmdline):
    """Whether a command line runs the emulator's daemon (``python -m MODULE ...``)."""
    return any(
        word == "-m" and index + 1 < len(cmdline) and cmdline[index + 1] == DAEMON_MODULE
        for index, word in enumerate(cmdline)
    )


def server(state_dir):
    """The daemon of ``state_dir`` as a ``processes.Server`` (find, check, stop)."""
    state_dir = Path(state_dir).absolute()

    def rebuild(process):
        cmdline = process.cmdline()
        addresses = processes.listening(process)
        host, port = addresses[0] if addresses else (LOOPBACK, None)
        try:
            delay = float(processes.option(cmdline, "--delay"))
        except (TypeError, ValueError):
            delay = None
        started = datetime.fromtimestamp(processes.created(process), timezone.utc)
        return {
            "pid": process.pid, "host": host, "port": port,
            "endpoint": f"http://{host}:{port}" if port else None,
            "started": started.isoformat(), "delay": delay,
            "state_dir": str(state_dir), "log": str(state_dir / LOG_FILE),
        }

    from cloudmesh.emr.config import config_dir

    def default(environ):  # a daemon without --state-dir serves its own environment's folder
        return config_dir(environ) / "emr" / "local"

    return processes.Server(
        "the local emulator", state_dir, state_dir / STATE_FILE, state_dir / LOG_FILE,
        runs_daemon, "--state-dir", rebuild, default_folder=default,
    )


def read(state_dir):
    """The daemon.json of ``state_dir`` as a dict (with a usable pid), or None."""
    data, _ = processes.read_json(Path(state_dir) / STATE_FILE)
    return data


def write(state_dir, data):
    """Write daemon.json atomically (readers never see half a file)."""
    processes.write_json(Path(state_dir) / STATE_FILE, data)


def remove(state_dir, pid=None):
    """Remove daemon.json; with ``pid``, only when it is that daemon's."""
    try:
        server(state_dir).remove_state(pid)
    except OSError:
        pass


def port_answers(port, host=LOOPBACK, timeout=0.5):
    """Whether something accepts connections on ``host:port``."""
    return processes.answers(host, port, timeout)


def running(state_dir, warnings=None):
    """daemon.json of a live daemon of ours that answers, else None. A lost or wrong
    daemon.json is rebuilt from the process table or removed; ``warnings`` (a list)
    receives what was done about it."""
    found = server(state_dir)
    try:
        data, _ = found.locate()
    except OSError:
        data = None
    if warnings is not None:
        warnings.extend(found.warnings)
    if not data or not port_answers(data.get("port"), data.get("host") or LOOPBACK):
        return None
    return data
