"""The cms emr agent: a warm per-user process that runs ``cms emr`` commands for the shell.

A command line pays for a fresh interpreter, for importing botocore, pymongo and our own
modules, and for reading botocore's service models, before it sends its first request:
about a quarter of a second, several times what the AWS call itself takes. The agent
pays those costs once, then forks a child per command (the pattern of ssh's
ControlPersist and gpg-agent):

- the client (``cms emr ...``, through :func:`run`) connects to an AF_UNIX socket in a
  private folder and sends its argv, environment, working folder and umask;
- the agent checks that the peer is its own user and that the client runs the same code
  (:func:`fingerprint`), and forks; the child sends its pid, and the client answers
  "go" with its own stdin, stdout and stderr (the descriptors themselves, SCM_RIGHTS);
- the child takes the client's environment, folder and descriptors and runs the command
  exactly as the client would have (``shell.run_here``), sends its exit code and ends
  with ``os._exit``; meanwhile the client forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT
  to it (not those it ignores), and stops and continues it with itself on SIGTSTP.

The client runs a command itself only when it never said go to a child (no agent, or
none answered within 10 s), and a child runs it only after that go, so a command is
never run twice. The agent ends itself after an idle time (cloudmesh.emr.agent.idle,
15 minutes), when its code is not the client's (an upgraded install), when
cloudmesh.emr.agent is off, or on SIGTERM. ``CLOUDMESH_EMR_AGENT=off`` turns it off.

This module is the client's fast path: at the top it imports only what the standard
library starts with; the server part imports the rest inside its functions.
"""

import os
import sys

ENVIRONMENT = "CLOUDMESH_EMR_AGENT"
OFF = ("off", "0", "no", "false", "disabled")
# verbs that start, stop or are long-lived servers of their own: always run in the command
IN_PROCESS = ("local", "agent", "server", "db")
DEFAULT_IDLE = 900  # seconds without a command before the agent ends itself
PROTOCOL = 1
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on the BSDs and macOS
REQUEST_TIMEOUT = 5.0  # seconds a client has to send its whole request
FIRST_ANSWER = 10.0  # seconds a client waits for the agent to take its command
RESTART_PAUSE = 5.0  # seconds after a command started an agent before another may
START_TIMEOUT = 60.0  # `cms emr agent start` waits this long for the agent to answer
NAME = "cloudmesh.emr.agent"


class AgentError(Exception):
    """The agent cannot be used or controlled; ``message`` says why."""

    def __init__(self, message, missing=False):
        super().__init__(message)
        self.message = message
        self.missing = missing  # the agent's folder is not there (yet)


# ---- where: the private folder, the socket, the pid file -------------------------------


def supported():
    """Whether this platform has what the agent needs (fork, AF_UNIX, SCM_RIGHTS)."""
    if not hasattr(os, "fork") or not hasattr(os, "getuid"):
        return False
    import socket

    return hasattr(socket, "AF_UNIX") and hasattr(socket, "send_fds")


def off_by_environment(environ=None):
    value = (os.environ if environ is None else environ).get(ENVIRONMENT, "")
    return value.strip().lower() in OFF


def eligible(argv):
    """Whether ``cms ARGV`` may go to the agent: an emr command that is not one of those
    that start, stop or are long-lived servers (those always run in the command)."""
    return len(argv) >= 2 and argv[0] == "emr" and argv[1] not in IN_PROCESS


def config_folder(environ=None):
    """The folder of cloudmesh.yaml, as config.config_dir finds it, absolute."""
    environ = os.environ if environ is None else environ
    folder = environ.get("CLOUDMESH_CONFIG_DIR")
    if not folder:
        home = environ.get("HOME") or os.path.expanduser("~")
        folder = os.path.join(home, ".cloudmesh")
    return os.path.abspath(folder)


def package_folder():
    return os.path.dirname(os.path.abspath(__file__))


def _interpreter():
    """What must be alike for a child of the agent to behave as this process would: the
    interpreter, its options and PYTHON* variables, our package's folder."""
    flags = tuple(getattr(sys.flags, name) for name in dir(sys.flags)
                  if not name.startswith("_") and isinstance(getattr(sys.flags, name), int)
                  and name not in ("n_fields", "n_sequence_fields", "n_unnamed_fields"))
    python = sorted((k, v) for k, v in os.environ.items() if k.startswith("PYTHON"))
    return [sys.executable, sys.version, package_folder(), list(flags), python,
            *_identity()]


def _identity():
    """Who and where this process is beyond its user: group, groups, file-name encoding
    and, on Linux, its mount, network, user and pid namespaces (a command in another
    group set or container is not served by an agent outside it)."""
    spaces = []
    for kind in ("mnt", "net", "user", "pid"):
        try:
            spaces.append(os.stat(f"/proc/self/ns/{kind}").st_ino)
        except OSError:
            spaces.append(None)
    return [os.getgid(), sorted(os.getgroups()), sys.getfilesystemencoding(), spaces]


def key(environ=None):
    """A short name for the agent that serves this interpreter, package and config folder."""
    import hashlib
    import json

    text = json.dumps([*_interpreter(), config_folder(environ)], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _owned_private(path):
    """Whether ``path`` is a real folder (not a symlink) of ours that only we can enter."""
    import stat

    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
            and not info.st_mode & 0o077)


def runtime_folder(environ=None, create=False):
    """The private folder of this user's agents: $XDG_RUNTIME_DIR/cloudmesh-emr when that
    is set (and short enough), else <tmp>/cloudmesh-emr-<uid>. With ``create`` it is made
    (0700); it must be a folder of ours, not a symlink, that nobody else may enter, or
    AgentError says why."""
    environ = os.environ if environ is None else environ
    uid = os.getuid()
    runtime = environ.get("XDG_RUNTIME_DIR")
    candidates = []
    if runtime and os.path.isabs(runtime) and _owned_private(runtime):
        candidates.append(os.path.join(runtime, "cloudmesh-emr"))
    tmp = environ.get("TMPDIR") if environ.get("TMPDIR", "").startswith("/") else "/tmp"
    candidates.append(os.path.join(tmp, f"cloudmesh-emr-{uid}"))
    if tmp != "/tmp":
        candidates.append(f"/tmp/cloudmesh-emr-{uid}")
    # <folder>/<16 hex>.sock must fit in sun_path
    fits = [c for c in candidates if len(os.fsencode(c)) + 22 <= MAX_SOCKET_PATH]
    if not fits:
        raise AgentError("no folder for the agent's socket is short enough "
                         f"(tried {', '.join(candidates)})")
    folder = fits[0]
    if create:
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        except OSError as error:
            raise AgentError(f"cannot make {folder} ({error.strerror or error})") from None
    if not _owned_private(folder):
        if not os.path.lexists(folder):
            raise AgentError(f"{folder} does not exist", missing=True)
        raise AgentError(f"{folder} is not a private folder of this user (it must be a "
                         "folder, not a symlink, owned by you, mode 0700); remove it or "
                         "fix its owner and mode")
    return folder


def paths(environ=None, create=False):
    """{folder, socket, pid, lock, log} of the agent for ``environ`` (this process's)."""
    folder = runtime_folder(environ, create=create)
    name = key(environ)
    return {"folder": folder, "key": name,
            **{kind: os.path.join(folder, f"{name}.{kind}")
               for kind in ("socket", "pid", "lock", "log")}}


def fingerprint():
    """The version of the package and the size and time of each of its files (code and
    data): what a client compares with its agent's, so an upgraded install is not served
    old code."""
    from cloudmesh.emr import __version__

    root = package_folder()
    found = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name == "__pycache__" or entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            else:
                try:
                    info = entry.stat()
                except OSError:
                    continue
                found.append(f"{entry.path[len(root):]}:{info.st_size}:{info.st_mtime_ns}")
    import zlib

    text = "\n".join(sorted(found) + _dependencies())
    return f"{__version__}-{len(found)}-{zlib.crc32(text.encode('utf-8', 'surrogateescape')):08x}"


DEPENDENCIES = ("botocore", "boto3", "pymongo", "docopt")


def _dependencies():
    """What an upgrade of the libraries the commands run on changes, found without
    importing them (importlib.metadata is slow): for each, its main file's size and time
    and the names of the *.dist-info / *.egg-info folders (their versions) beside it."""
    import importlib.util

    found, listed = [], {}
    for name in DEPENDENCIES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin:
            found.append(f"{name}:missing")
            continue
        try:
            info = os.stat(spec.origin)
            found.append(f"{name}:{info.st_size}:{info.st_mtime_ns}")
        except OSError:
            found.append(f"{name}:{spec.origin}")
        where = os.path.dirname(spec.origin)
        if spec.submodule_search_locations is not None:  # a package: its folder's folder
            where = os.path.dirname(where)
        if where not in listed:
            try:
                listed[where] = [entry for entry in os.listdir(where)
                                 if entry.endswith((".dist-info", ".egg-info"))]
            except OSError:
                listed[where] = []
        prefix = name.lower() + "-"
        found.extend(sorted(entry for entry in listed[where]
                            if entry.lower().replace("_", "-").startswith(prefix)))
    return found


# ---- the client ------------------------------------------------------------------------


class Outcome:
    """What :func:`run` found: the exit ``code`` of a command an agent ran, or None and
    ``start`` (whether an agent should be started after the command runs here)."""

    def __init__(self, code=None, start=False, why=""):
        self.code = code
        self.start = start
        self.why = why


def _peer_uid(sock):
    """The user id of the process at the other end of a connected AF_UNIX socket, or None
    where the platform does not say (then the folder's mode is what keeps others out)."""
    import socket

    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    import struct

    size = struct.calcsize("3i")
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, size))
    return uid


def _streams():
    """How this process's stdin, stdout and stderr encode text, so the child makes its own
    alike: [[encoding, errors, line_buffering, write_through], ...] (write_through is
    what python -u and PYTHONUNBUFFERED give)."""
    found = []
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        found.append([getattr(stream, "encoding", None) or "utf-8",
                      getattr(stream, "errors", None) or "strict",
                      bool(getattr(stream, "line_buffering", False)),
                      bool(getattr(stream, "write_through", False))])
    return found


def _send(sock, message):
    """One request: 4 bytes of length, then JSON."""
    import json
    import struct

    body = json.dumps(message).encode()
    sock.sendall(struct.pack("!I", len(body)) + body)


class Reader:
    """Messages from a stream socket: each a line of JSON."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def next(self):
        """The next message (a dict), or None when the other end has closed."""
        import json

        while b"\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


def _line(sock, message, fds=()):
    """One message as a line of JSON; ``fds`` ride along with its first byte."""
    import json

    data = json.dumps(message).encode() + b"\n"
    if fds:
        import socket

        data = data[socket.send_fds(sock, [data], list(fds)):]
    if data:
        sock.sendall(data)


def connect(where, timeout=None):
    """A socket connected to the agent at ``where`` (from :func:`paths`) whose peer is our
    own user, or OSError."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if timeout is not None:
            sock.settimeout(timeout)
        sock.connect(where["socket"])
        uid = _peer_uid(sock)
        if uid is not None and uid != os.getuid():
            raise PermissionError(f"the agent's socket is served by user {uid}")
        return sock
    except BaseException:
        sock.close()
        raise


def run(argv):
    """Run ``cms ARGV`` through this user's agent; an Outcome (its ``code`` None when no
    agent took the command: then the caller runs it, and may start one afterwards)."""
    if not eligible(argv) or off_by_environment() or not supported():
        return Outcome(why="not for the agent")
    try:
        for fd in (0, 1, 2):  # a closed stdin, stdout or stderr: nothing to pass
            os.fstat(fd)
        cwd = os.getcwd()
    except OSError:
        return Outcome(why="no stdin, stdout, stderr or working folder")
    try:
        where = paths()
    except AgentError as error:  # not made yet (the starter makes it, or says no)
        return Outcome(start=True, why=error.message)
    if not os.path.exists(where["socket"]):
        return Outcome(start=True, why="not running")
    try:
        sock = connect(where, timeout=FIRST_ANSWER)  # a hung agent's full queue: not forever
    except OSError:
        return Outcome(start=True, why="not answering")
    umask = os.umask(0o077)
    os.umask(umask)
    request = {"protocol": PROTOCOL, "argv": list(argv), "sys_argv": list(sys.argv),
               "env": dict(os.environ), "cwd": cwd, "umask": umask,
               "fingerprint": fingerprint(), "streams": _streams(), "ignored": _ignored()}
    try:
        _send(sock, request)
        reader = Reader(sock)
        sock.settimeout(FIRST_ANSWER)  # a stopped or stuck agent: run it here instead
        first = reader.next()
        if not isinstance(first, dict) or not isinstance(first.get("pid"), int):
            sock.close()
            why = first.get("declined", "") if isinstance(first, dict) else ""
            # an agent of other code, or one that was switched off, ends itself: start afresh
            return Outcome(start=why == "stale", why=f"declined: {why or 'closed'}")
        sock.settimeout(None)
    except (OSError, ValueError):
        sock.close()
        return Outcome(start=True, why="request not taken")
    pid = first["pid"]
    forwarded, kept = _forward_signals(pid)  # from the go on, a Ctrl-C is the child's
    try:
        # the child runs the command only once it has this, with our stdin, stdout and
        # stderr: a child that never gets it (we gave up, or this send fails) ends without
        # running anything, and no descriptor of ours waits in a socket nobody reads
        _line(sock, {"go": True}, fds=(0, 1, 2))
    except OSError:
        sock.close()
        _restore_signals(kept)
        return Outcome(start=True, why="request not taken")
    # from here on the command is the child's: it is never run here as well
    return Outcome(code=_follow(sock, reader, pid, forwarded, kept), why="agent")


FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")


def _ignored():
    """The names of the forwarded signals this process ignores (nohup, a background job):
    the child ignores them too, as this process would have."""
    import signal

    found = []
    for name in FORWARDED:
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) == signal.SIG_IGN:
            found.append(name)
    return found


def _forward_signals(pid):
    """Pass SIGINT, SIGTERM, SIGHUP and SIGQUIT on to ``pid``, those this process does not
    ignore, and stop and continue it with this process (SIGTSTP, then SIGCONT):
    ([signals passed], {kept handlers})."""
    import signal

    forwarded = []

    def forward(signum, frame):
        forwarded.append(signum)
        try:
            os.kill(pid, signum)
        except OSError:
            pass

    def suspend(signum, frame):
        # Ctrl-Z: stop the child (SIGSTOP: it is in the agent's orphaned process group,
        # where the kernel drops SIGTSTP), then this process; on fg/bg, go on, both
        try:
            os.kill(pid, signal.SIGSTOP)
        except OSError:
            pass
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # stopped here until SIGCONT
        signal.signal(signal.SIGTSTP, suspend)
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass

    kept = {}
    for name in FORWARDED:
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) != signal.SIG_IGN:
            kept[number] = signal.signal(number, forward)
    number = getattr(signal, "SIGTSTP", None)
    if number is not None and signal.getsignal(number) != signal.SIG_IGN:
        kept[number] = signal.signal(number, suspend)
    return forwarded, kept


def _restore_signals(kept):
    import signal

    for number, handler in kept.items():
        signal.signal(number, handler)


def _follow(sock, reader, pid, forwarded, kept):
    """Wait for the child ``pid``'s exit code, our signals passed on to it."""
    import signal

    try:
        message = None
        while True:
            try:
                message = reader.next()
            except (OSError, ValueError):
                message = None
            if message is None or "exit" in message:
                break
    finally:
        sock.close()
        _restore_signals(kept)
    if message is not None and isinstance(message.get("exit"), int):
        return message["exit"]
    if forwarded:  # the child ended by the signal we passed on: end by it too, as it did
        signal.signal(forwarded[-1], signal.SIG_DFL)
        os.kill(os.getpid(), forwarded[-1])
    print(f"ERROR: the command ran in the cms emr agent (pid {pid}), which ended without "
          "an exit code; it may have done part of its work: check with cms emr list clusters "
          "or cms emr list steps before running it again (CLOUDMESH_EMR_AGENT=off runs it "
          "without the agent)",
          file=sys.stderr, flush=True)
    return 1


# ---- starting, finding, stopping (for the shell and `cms emr agent`) ----------------------


def setting(settings):
    """(on, idle seconds) from cloudmesh.emr.agent of a config.Settings: off (or false),
    on (or true), or a mapping {idle: DURATION, enabled: true|false}."""
    from cloudmesh.emr import durations
    from cloudmesh.emr.errors import UsageError, shorten

    value = settings.get("emr", "agent")
    where = "cloudmesh.emr.agent"
    if value is None:
        return True, DEFAULT_IDLE
    if isinstance(value, bool):
        return value, DEFAULT_IDLE
    if isinstance(value, str) and value.strip().lower() in (*OFF, "on", "yes", "true"):
        return value.strip().lower() not in OFF, DEFAULT_IDLE
    if not isinstance(value, dict):
        raise UsageError(f"{where} '{shorten(value)}' must be on, off or a mapping "
                         "such as {idle: 15m}")
    unknown = [str(k) for k in value if k not in ("idle", "enabled")]
    if unknown:
        raise UsageError(f"{where}.{shorten(unknown[0], 40)} is not a setting of the agent "
                         "(idle, enabled)")
    enabled = value.get("enabled", True)
    if isinstance(enabled, str):
        enabled = enabled.strip().lower() not in OFF
    idle = value.get("idle")
    idle = DEFAULT_IDLE if idle is None else durations.seconds(idle, f"{where}.idle",
                                                               minimum=1, maximum=7 * 86400)
    return bool(enabled), idle


def enabled(settings=None):
    """Whether the agent is on: not CLOUDMESH_EMR_AGENT=off, not cloudmesh.emr.agent: off,
    and this platform has what it needs."""
    if off_by_environment() or not supported():
        return False
    if settings is None:
        from cloudmesh.emr.config import Settings

        settings = Settings.load()
    return setting(settings)[0]


# the agent's start: the client's own module search path first, so it runs the same code
# (a checkout's, say), whatever folder it was started from
BOOT = ("import json, os, sys; "
        "sys.path[:] = json.loads(os.environ.pop('CLOUDMESH_EMR_AGENT_PATH')); "
        "from cloudmesh.emr.agent import main; sys.exit(main())")


def _command(where):
    return [sys.executable, *_interpreter_options(), "-c", BOOT, "--socket", where["socket"]]


def _environment():
    import json

    cwd = os.getcwd()
    # '' and relative folders are this folder's; other entries stay as they are (an
    # editable install's path hook, for one, is a name, not a folder)
    search = [cwd if entry == "" else os.path.join(cwd, entry)
              if not os.path.isabs(entry) and os.path.isdir(os.path.join(cwd, entry))
              else entry for entry in sys.path]
    return {**_kept_environment(), "CLOUDMESH_EMR_AGENT_PATH": json.dumps(search)}


# what the agent process itself keeps of its starter's environment: where things are and
# how the interpreter runs, never a credential (each command brings its own environment)
KEPT = ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "XDG_RUNTIME_DIR", "LANG", "TZ",
        "VIRTUAL_ENV", "LD_LIBRARY_PATH", "CLOUDMESH_EMR_AGENT")
KEPT_PREFIXES = ("LC_", "PYTHON")


def _kept_environment():
    """The agent's environment: the allow-listed variables of this one, and the config
    folder made absolute (the agent runs in /, and names its socket after that folder)."""
    env = {name: value for name, value in os.environ.items()
           if name in KEPT or name.startswith(KEPT_PREFIXES)}
    if os.environ.get("CLOUDMESH_CONFIG_DIR"):
        env["CLOUDMESH_CONFIG_DIR"] = config_folder()
    return env


def _interpreter_options():
    """The options this interpreter was started with (-X dev, -O, ...), so the agent runs
    as this process does."""
    argv = list(getattr(sys, "orig_argv", []))[1:]
    options, index = [], 0
    while index < len(argv):
        word = argv[index]
        if word in ("-m", "-c", "-") or not word.startswith("-"):
            break
        options.append(word)
        if word in ("-X", "-W") and index + 1 < len(argv):
            options.append(argv[index + 1])
            index += 1
        index += 1
    return options


def start_detached(where=None):
    """Start an agent in the background and return at once (the Popen, or None when the
    folder is not usable or one was started moments ago); it gives up by itself if
    another is starting or running."""
    import subprocess
    import time

    try:
        where = where or paths(create=True)
        stamp = where["log"][:-len("log")] + "started"
        try:  # at most one start per few seconds: commands at once, or an agent that
            # cannot start (its log says why), do not each start another
            if time.time() - os.stat(stamp).st_mtime < RESTART_PAUSE:
                return None
        except FileNotFoundError:
            pass
        if _failed_recently(where):
            return None
        os.close(os.open(stamp, os.O_WRONLY | os.O_CREAT, 0o600))
        os.utime(stamp)
        log = os.fdopen(os.open(where["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
                        "ab")
    except (OSError, AgentError):
        return None
    with log:
        return subprocess.Popen(_command(where), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd="/", env=_environment(),
                                start_new_session=True, close_fds=True)


def _failed_recently(where):
    """Whether the last agent started for ``where`` failed (its log ends in a line that is
    not one of the agent's own: an ERROR or a traceback) less than DEFAULT_IDLE ago: then
    commands do not start another each time (`cms emr agent start` still does, and says
    why it fails)."""
    import re
    import time

    try:
        with open(where["log"], "rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - 4096))
            tail = log.read().decode("utf-8", "replace").rstrip("\n")
            changed = os.fstat(log.fileno()).st_mtime
    except OSError:
        return False
    if not tail or time.time() - changed > DEFAULT_IDLE:
        return False
    last = tail.rsplit("\n", 1)[-1]
    return not re.match(r"\d{4}-\d\d-\d\dT\S+ agent \d+: ", last)


def _existing(where):
    """``where``, or this process's paths; None when their folder is not there (no agent
    ever ran); AgentError when it is not a private folder of ours."""
    if where is not None:
        return where
    try:
        return paths()
    except AgentError as error:
        if error.missing:
            return None
        raise


def status(where=None, timeout=5.0):
    """The running agent's own account of itself (a dict), or None when none answers."""
    where = _existing(where)
    if where is None:
        return None
    try:
        sock = connect(where, timeout=timeout)
    except OSError:
        return None
    try:
        _send(sock, {"protocol": PROTOCOL, "status": True})
        return Reader(sock).next()
    except (OSError, ValueError):
        return None
    finally:
        sock.close()


def _ours(pid, where):
    """The psutil Process of ``pid`` when it is our agent serving ``where``, else None."""
    from cloudmesh.emr import processes

    if not processes.valid_pid(pid):
        return None
    import psutil

    try:
        process = psutil.Process(pid)
        if process.uids().real != os.getuid() or process.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = process.cmdline()
    except (psutil.Error, OSError):
        return None
    # python [options] -c <a boot line that runs cloudmesh.emr.agent> --socket <ours>
    code = cmdline[cmdline.index("-c") + 1:][:1] if "-c" in cmdline else []
    runs_us = bool(code) and NAME in code[0]
    serves = processes.option(cmdline, "--socket") == where["socket"]
    return process if runs_us and serves else None


def find(where=None):
    """(pid file's data, psutil Process) of our running agent, or (data or None, None)."""
    from cloudmesh.emr import processes

    where = _existing(where)
    if where is None:
        return None, None
    data, _ = processes.read_json(where["pid"])
    process = _ours(data.get("pid"), where) if data else None
    return data, process


def start(where=None):
    """Start an agent and wait until it answers; (status, fresh)."""
    from cloudmesh.emr import processes

    where = where or paths(create=True)
    running = status(where)
    if running is not None:
        return running, False

    def ready(process, output):
        return status(where, timeout=1.0) if os.path.exists(where["socket"]) else None

    try:  # the log is the user's alone, as everything in the folder
        os.close(os.open(where["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    except OSError:
        pass

    try:
        process, answer = processes.spawn(_command(where), where["log"], ready, START_TIMEOUT,
                                          "the cms emr agent", cwd="/", env=_environment())
    except processes.ProcessError as error:
        raise AgentError(error.message) from None
    # another command's start may have won the race: ours then ends by itself
    return answer, answer.get("pid") == process.pid


def stop(where=None):
    """Stop our agent by its pid (checked to be our agent serving our socket first);
    the pid stopped, or None when none ran."""
    where = _existing(where)
    if where is None:
        return None
    data, process = find(where)
    if process is None:
        answer = status(where, timeout=2.0)  # the pid file lost: the agent says who it is
        if answer is not None:
            process = _ours(answer.get("pid"), where)
    if process is None:
        return None
    from cloudmesh.emr import processes

    pids = processes.terminate([process], timeout=10)
    return pids[0] if pids else None


# ---- the agent ---------------------------------------------------------------------------


def warm():
    """Import what commands use and read botocore's service models once, so a forked
    child starts with them in memory. No thread is started and no socket opened."""
    import importlib

    for name in ("botocore.session", "botocore.client", "botocore.config",
                 "botocore.exceptions", "botocore.parsers", "boto3", "boto3.s3.transfer",
                 "yaml", "docopt", "tabulate", "psutil", "filelock",
                 "cloudmesh.emr.command.emr", "cloudmesh.emr.api.provider",
                 "cloudmesh.emr.api.jobflow", "cloudmesh.emr.api.vocabulary",
                 "cloudmesh.emr.api.waiting", "cloudmesh.emr.api.cost",
                 "cloudmesh.emr.api.diagnosis", "cloudmesh.emr.api.history",
                 "cloudmesh.emr.printer", "cloudmesh.emr.database", "cloudmesh.emr.journal",
                 "cloudmesh.emr.durations", "cloudmesh.emr.redaction", "cloudmesh.emr.processes",
                 "cloudmesh.emr.shell"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    from cloudmesh.emr.database import import_pymongo

    import_pymongo()
    import bson.errors  # noqa: F401
    import pymongo.errors  # noqa: F401

    try:  # the usage grammar, parsed once here (command/emr.py keeps it) for every child
        from cloudmesh.emr.command.emr import EmrCommand

        EmrCommand.parse(["--version"])
    except Exception:  # a parser that keeps nothing: each command parses, as by itself
        pass
    from cloudmesh.emr.api.provider import botocore_session

    session = botocore_session()  # the process's shared loader of service models
    loader = session.get_component("data_loader")
    for service in ("emr", "s3", "ec2", "sts", "iam", "cloudwatch", "pricing",
                    "service-quotas"):
        try:  # explicit keys: no credential chain (and no instance metadata call) here
            session.create_client(service, region_name="us-east-1",
                                  aws_access_key_id="warm", aws_secret_access_key="warm")
            for kind in ("paginators-1", "waiters-2"):
                try:
                    loader.load_service_model(service, kind)
                except Exception:  # botocore's DataNotFoundError: the service has none
                    pass
        except Exception:  # a service this botocore lacks: its commands load it themselves
            pass
    import gc
    import threading

    if threading.active_count() > 1:  # a fork copies only the thread that forks
        raise AgentError(f"an import started {threading.active_count() - 1} threads; "
                         "forking commands from this process would not be safe")
    gc.collect()
    gc.freeze()  # what is loaded now stays in pages the children share


class _Stop(Exception):
    """Raised by the agent's handler of SIGTERM while it waits for a connection."""


class Agent:
    """The listening process: one child per command."""

    def __init__(self, where):
        self.where = where
        self.listener = None
        self.lock = None
        self.code = fingerprint()
        self.started = None
        self.last = None
        self.served = 0
        self.children = set()
        self.config_stamp = None
        self.on, self.idle = True, DEFAULT_IDLE
        self.stopping = False
        self.accepting = False

    def log(self, text):
        import time

        print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} agent {os.getpid()}: "
              f"{text}", flush=True)

    # -- life

    def take_lock(self, wait=10.0):
        """Hold the agent's lock for its whole life: one agent per socket. fcntl directly
        rather than filelock, because every forked child must close this descriptor."""
        import fcntl
        import time

        self.lock = os.open(self.where["lock"], os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if status(self.where, timeout=1.0) is not None or time.monotonic() > deadline:
                    os.close(self.lock)
                    self.lock = None
                    return False
                time.sleep(0.1)

    def listen(self):
        import socket
        import stat

        path = self.where["socket"]
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            info = None
        if info is not None:  # we hold the lock: a socket left here is a dead agent's
            if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
                raise AgentError(f"{path} is in the way and is not a socket of ours")
            os.unlink(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mask = os.umask(0o177)
        try:
            self.listener.bind(path)
        finally:
            os.umask(mask)
        os.chmod(path, 0o600)
        self.listener.listen(64)

    def read_settings(self):
        """cloudmesh.emr.agent, read again whenever cloudmesh.yaml changed."""
        from cloudmesh.emr.config import Settings, config_dir

        try:
            info = os.stat(config_dir() / "cloudmesh.yaml")
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        except OSError:
            stamp = None
        if stamp == self.config_stamp and self.started is not None:
            return
        self.config_stamp = stamp
        try:
            self.on, self.idle = setting(Settings.load())
        except Exception as error:  # a broken file is the command's to report
            self.log(f"cloudmesh.yaml not usable for the agent ({type(error).__name__})")

    def serve(self):
        import signal
        import socket
        import time

        if self.where["socket"] != paths()["socket"]:
            raise AgentError("this agent's interpreter or settings are not those of the "
                             "command that started it")
        os.umask(0o077)
        if not self.take_lock():
            self.log("another agent serves this socket; not starting")
            return 0
        try:
            self.write_pid()  # now, so `agent stop` finds an agent that is still warming
            self.read_settings()
            if not self.on:
                self.log("cloudmesh.emr.agent is off; not starting")
                return 0
            warm()
            self.listen()
            self.started = time.time()
            self.last = time.monotonic()
            signal.signal(signal.SIGCHLD, self.reap)
            for name in ("SIGTERM", "SIGHUP", "SIGINT"):
                signal.signal(getattr(signal, name), self.end)
            self.write_pid()
            self.log(f"serving {self.where['socket']} (idle exit after {self.idle} s)")
            while not self.stopping:
                left = self.idle - (time.monotonic() - self.last)
                if left <= 0:
                    self.log(f"idle for {self.idle} s; ending")
                    break
                self.listener.settimeout(left)
                try:
                    self.accepting = True
                    if self.stopping:
                        break
                    conn, _ = self.listener.accept()
                except (socket.timeout, InterruptedError):
                    continue
                except _Stop:
                    break
                finally:
                    self.accepting = False
                try:
                    if self.handle(conn) == "end":
                        break
                finally:
                    conn.close()
            return 0
        finally:
            self.cleanup()

    def write_pid(self):
        from cloudmesh.emr.processes import write_json

        write_json(self.where["pid"], {
            "pid": os.getpid(), "socket": self.where["socket"], "started": self.started,
            "fingerprint": self.code, "python": sys.executable,
            "package": package_folder(), "config": config_folder()})

    def end(self, signum, frame):
        self.stopping = True
        self.log(f"signal {signum}; ending")
        if self.accepting:  # waiting for a connection: stop waiting (elsewhere the loop
            raise _Stop()   # ends once the request at hand is answered)

    def reap(self, signum=None, frame=None):
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)

    def cleanup(self):
        from cloudmesh.emr.processes import read_json

        if self.listener is not None:
            self.listener.close()
            try:
                os.unlink(self.where["socket"])
            except OSError:
                pass
        if self.lock is not None:  # the pid file is ours only while we hold the lock
            data, _ = read_json(self.where["pid"])
            if data and data.get("pid") == os.getpid():
                try:
                    os.unlink(self.where["pid"])
                except OSError:
                    pass
            os.close(self.lock)
            self.lock = None

    # -- one connection

    def handle(self, conn):
        """Read one request; answer a status, decline, or fork the child that runs it."""
        import json
        import socket
        import struct
        import time

        try:
            uid = _peer_uid(conn)
            if uid is not None and uid != os.getuid():
                self.log(f"refused a connection of user {uid}")
                return None
            conn.settimeout(REQUEST_TIMEOUT)
            data = b""
            while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
                chunk = conn.recv(65536)
                if not chunk:
                    raise ValueError("cut short")
                data += chunk
            size = struct.unpack("!I", data[:4])[0]
            request = json.loads(data[4:4 + size])
            if not isinstance(request, dict):
                raise ValueError("not our protocol")
        except (OSError, ValueError, struct.error) as error:
            self.log(f"dropped a request ({type(error).__name__})")
            return None
        conn.settimeout(None)
        if request.get("status"):
            self.read_settings()
            _line(conn, self.describe())
            return None
        self.last = time.monotonic()
        self.read_settings()
        reason = None
        if request.get("protocol") != PROTOCOL or request.get("fingerprint") != self.code:
            reason = "stale"
        elif not self.on or off_by_environment(request.get("env") or {}):
            reason = "off"
        elif not isinstance(request.get("argv"), list):
            reason = "bad request"
        if reason is not None:
            try:
                _line(conn, {"declined": reason})
            except OSError:
                pass
            if reason in ("stale", "off"):
                self.log(f"declined a command ({reason}); ending")
                return "end"
            return None
        self.served += 1
        pid = os.fork()
        if pid == 0:  # the child: never returns
            child(self, conn, request)
        self.children.add(pid)
        return None

    def describe(self):
        import time

        now = time.monotonic()
        return {"pid": os.getpid(), "socket": self.where["socket"], "started": self.started,
                "last": time.time() - (now - self.last), "idle": self.idle,
                "exit": time.time() + max(0.0, self.idle - (now - self.last)),
                "served": self.served, "running": len(self.children),
                "fingerprint": self.code, "python": sys.executable,
                "package": package_folder(), "config": config_folder(), "on": self.on}


def _go(conn):
    """The client's go and its stdin, stdout and stderr: (message or None, [fds])."""
    import json
    import socket

    fds = []
    try:
        data, fds, _, _ = socket.recv_fds(conn, 4096, 3)
        while data and b"\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        if b"\n" not in data:
            return None, fds
        return json.loads(data.split(b"\n", 1)[0]), fds
    except (OSError, ValueError):
        return None, fds


def child(agent, conn, request):
    """Become the client's command: its descriptors, environment, folder and umask; run
    it as the shell would; send the exit code; end without the interpreter's exit."""
    import signal

    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # subprocess waits for its own
        for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(number, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        ignored = request.get("ignored")
        for name in ignored if isinstance(ignored, list) else ():
            if name in FORWARDED:  # ignored by the client (nohup): by the command too
                signal.signal(getattr(signal, name), signal.SIG_IGN)
        agent.listener.close()
        if agent.lock is not None:
            os.close(agent.lock)
        why = _prepare(request)
        if why is not None:  # nothing ran: the client runs the command itself
            agent.log(f"declined a command ({why})")
            try:
                _line(conn, {"declined": why})
            except OSError:
                pass
            os._exit(1)
        try:  # the command is ours only once the client has our pid and says go
            _line(conn, {"pid": os.getpid()})
            go, fds = _go(conn)
        except OSError:
            go, fds = None, []
        if not isinstance(go, dict) or not go.get("go") or len(fds) != 3:
            os._exit(1)  # the client gave up waiting and runs it itself; nor do we
        code = _become(conn, fds, request)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 0 if done.code is None else 1
    except BaseException:
        code = 1
    finally:
        try:
            _line(conn, {"exit": code})
        except BaseException:
            pass
        os._exit(code & 0xFF if isinstance(code, int) else 1)


def _prepare(request):
    """Take the client's environment and working folder, before the child says its pid;
    None, or why it cannot (then the client runs the command itself: nothing ran here)."""
    env = request.get("env") or {}
    try:
        if not isinstance(env, dict):
            raise ValueError("the environment is not a mapping")
        os.environ.clear()
        os.environ.update(env)
    except (TypeError, ValueError) as error:
        return f"environment not usable: {error}"
    cwd = request.get("cwd") or "/"
    try:
        os.chdir(cwd)
    except (OSError, TypeError, ValueError) as error:
        return f"cannot enter {cwd}: {getattr(error, 'strerror', None) or error}"
    return None


def _become(conn, fds, request):
    for stream in (sys.stdout, sys.stderr):  # the agent's own: nothing of it to the client
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        _take_over(fds, request)
    except Exception as error:  # noqa: BLE001  one line to the client, never a traceback
        text = (f"ERROR: the cms emr agent could not set up the command "
                f"({type(error).__name__}: {error}); nothing ran; run it again with "
                "CLOUDMESH_EMR_AGENT=off\n")
        try:
            os.write(2, text.encode("utf-8", "replace"))
        except OSError:
            pass
        return 1
    return _execute(request)


def _take_over(fds, request):
    """The client's descriptors, umask, time zone, locale and stream encodings."""
    import io
    import locale
    import time

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.umask(int(request.get("umask", 0o022)))
    if hasattr(time, "tzset"):
        time.tzset()
    try:
        locale.setlocale(locale.LC_CTYPE, "")
    except locale.Error:
        pass
    import tempfile

    tempfile.tempdir = None  # found again from TMPDIR of the client's environment
    streams = request.get("streams") or [["utf-8", "strict", False, False]] * 3
    made = []
    for fd, (encoding, errors, line_buffering, *rest) in enumerate(streams):
        mode = "r" if fd == 0 else "w"
        raw = io.FileIO(fd, mode, closefd=False)
        buffered = io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw)
        made.append(io.TextIOWrapper(buffered, encoding=encoding, errors=errors,
                                     line_buffering=bool(line_buffering) or fd == 2,
                                     write_through=bool(rest and rest[0])))
    sys.stdin, sys.stdout, sys.stderr = made
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = made
    sys.argv = list(request.get("sys_argv") or ["cms", *request["argv"]])


def _execute(request):
    code = 1
    try:
        from cloudmesh.emr import shell

        code = shell.run_here(list(request["argv"]))
    except SystemExit as done:
        if isinstance(done.code, int) or done.code is None:
            code = done.code or 0
        else:
            print(done.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code


def main(argv=None):
    """``python -m cloudmesh.emr.agent --socket PATH``: serve until idle."""
    import argparse

    parser = argparse.ArgumentParser(prog=NAME, description="the cms emr agent")
    parser.add_argument("--socket", required=True)
    options = parser.parse_args(argv)
    try:
        where = paths(create=True)
        agent = Agent({**where, "socket": options.socket})
        return agent.serve()
    except AgentError as error:
        print(f"ERROR: {error.message}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
