"""The emulator's state folder: ``daemon.json`` and the checks around it (stdlib only).

``daemon.json`` says where a running daemon listens: {pid, host, port, endpoint,
started, delay, state_dir, log}. The daemon writes it once it serves and removes it
when it stops; ``control`` reads it, and trusts it only while that PID is alive,
runs the daemon, and the port answers.
"""

import json
import os
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"
STATE_FILE = "daemon.json"
LOG_FILE = "daemon.log"
DAEMON_MODULE = "cloudmesh.emr.local.daemon"


def read(state_dir):
    """The daemon.json of ``state_dir`` as a dict, or None."""
    try:
        data = json.loads((Path(state_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write(state_dir, data):
    """Write daemon.json atomically (readers never see half a file)."""
    path = Path(state_dir) / STATE_FILE
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)


def remove(state_dir, pid=None):
    """Remove daemon.json; with ``pid``, only when it is that daemon's."""
    data = read(state_dir)
    if data is None or (pid is not None and data.get("pid") != pid):
        return
    try:
        (Path(state_dir) / STATE_FILE).unlink()
    except OSError:
        pass


def pid_alive(pid):
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


def is_daemon(pid):
    """Whether ``pid`` runs the emulator's daemon (not a recycled pid); True if unknown."""
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as cmdline:
            return DAEMON_MODULE.encode() in cmdline.read()
    except (OSError, ValueError, TypeError):
        return True


def port_answers(port, host=LOOPBACK, timeout=0.5):
    """Whether something accepts connections on ``host:port``."""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, TypeError, ValueError):
        return False


def running(state_dir):
    """daemon.json of a live daemon that answers, else None."""
    data = read(state_dir)
    if not data:
        return None
    pid = data.get("pid")
    if not (pid_alive(pid) and is_daemon(pid) and port_answers(data.get("port"))):
        return None
    return data
