"""The processes we own: started detached, found again, checked, and stopped.

The embedded database (SecantusDB's ``secantusd-py``) and the emulator daemon
(``python -m cloudmesh.emr.local.daemon``) are both a server we start in its own
session, that outlives the command which started it, and that later commands find
again through a small JSON state file. A state file can be lost, cut short or point
at a pid that some other program now holds, so it is never trusted on its own:

- identity comes from the process table (psutil): a process is ours when it runs
  our program, belongs to our user, and its command line names our folder;
- a pid below 2 is never a process of ours (0 and -1 would signal a process group);
- a state file that is gone or wrong is rebuilt from the process that serves our
  folder, or, when there is none, removed with a warning;
- every state file is written atomically (write, fsync, rename);
- starts are serialised with a file lock (filelock), so two commands at once start
  one server, and a start never touches the files of a server that runs;
- one routine spawns a server and waits until it is ready, or reports its last log
  line and leaves nothing half-started behind.

psutil and filelock are imported inside the functions that need them, so the
command line's start-up (``cms emr --help``) does not pay for them.
"""

import json
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

LOOPBACK = "127.0.0.1"
LOCK_TIMEOUT = 120.0  # seconds to wait for another command's start to finish
STOP_TIMEOUT = 15.0  # seconds between SIGTERM and SIGKILL


class ProcessError(Exception):
    """A server of ours could not be started, found or stopped; ``message`` says why."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


# ---- state files ---------------------------------------------------------------------


def write_json(path, data, mode=0o600):
    """Write ``data`` as JSON to ``path`` atomically: readers see the old or the new file,
    never half of one, and a crash right after leaves the new one on disk."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:  # a leftover of a crash: start afresh, so the mode below holds
        partial.unlink()
    except FileNotFoundError:
        pass
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(data, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        try:
            partial.unlink()
        except OSError:
            pass
        raise
    try:  # the rename itself survives a crash once the folder is synced
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


def read_json(path):
    """(data, problem): the state file as a dict, or None and a few words on what is wrong
    with it (None when there is no file at all)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None, None
    except OSError as error:
        return None, f"cannot be read ({error.strerror or error})"
    try:
        data = json.loads(text)
    except ValueError:
        return None, "is empty" if not text.strip() else "is not valid JSON"
    if not isinstance(data, dict):
        return None, "does not hold a JSON object"
    pid = data.get("pid")
    if not valid_pid(pid):
        return None, f"holds no usable pid ({pid!r})"
    return data, None


def valid_pid(pid):
    """Whether ``pid`` could be a server of ours: an int of 2 or more (never 0, -1, None)."""
    return isinstance(pid, int) and not isinstance(pid, bool) and pid >= 2


def valid_port(port):
    return isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536


def private_folder(path):
    """Make ``path`` (and its parents) and keep it to its owner (0700): the emulator's S3
    objects, credentials and clusters, and the database's data, are nobody else's."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(path, 0o700)
    except OSError:  # not ours to change (a folder the user pointed us at): leave it
        pass
    return path


# ---- locks ---------------------------------------------------------------------------


@contextmanager
def lock(path, timeout=LOCK_TIMEOUT, what="start"):
    """Hold the file lock ``path`` (filelock: fcntl on POSIX, msvcrt on Windows)."""
    import filelock

    held = filelock.FileLock(str(path), timeout=timeout)
    try:
        held.acquire()
    except filelock.Timeout:
        raise ProcessError(
            f"another command has held {path} for {timeout:.0f} s; wait for it to "
            f"finish, then {what} again"
        ) from None
    try:
        yield
    finally:
        held.release()


def try_lock(path):
    """The file lock ``path`` if free right now (release it when done), else None."""
    import filelock

    held = filelock.FileLock(str(path), timeout=0)
    try:
        held.acquire()
    except filelock.Timeout:
        return None
    return held


# ---- process identity ----------------------------------------------------------------


def option(cmdline, name):
    """The value of ``--name VALUE`` or ``--name=VALUE`` in a command line, else None."""
    for index, word in enumerate(cmdline):
        if word == name and index + 1 < len(cmdline):
            return cmdline[index + 1]
        if word.startswith(name + "="):
            return word[len(name) + 1:]
    return None


def _same_folder(value, folder, cwd):
    if value is None:
        return False
    path = Path(value)
    if not path.is_absolute():
        if cwd is None:
            return False
        path = Path(cwd) / path
    return os.path.realpath(path) == os.path.realpath(folder)


def listening(process):
    """[(host, port)] the process listens on over TCP, IPv4 loopback first."""
    import psutil

    try:
        connections = process.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return []
    found = sorted(
        {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN},
        key=lambda address: (address[0] != LOOPBACK, address[1]),
    )
    return found


def answers(host, port, timeout=1.0):
    """Whether something accepts a TCP connection on host:port."""
    import socket

    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, TypeError, ValueError):
        return False


class Server:
    """One kind of server we own, serving one folder.

    ``program(cmdline)`` says whether a command line runs our program; the folder it
    serves is the value of ``folder_option`` on that command line, or, when the option is
    not there, ``default_folder(environment)`` of the process's own environment (another
    user's or another session's server is never taken for ours because our own default
    happens to match). ``rebuild(process)``
    makes the state-file contents of a running server from the process alone (used when
    the state file is lost). Warnings for the user collect in ``self.warnings``.
    """

    def __init__(self, name, folder, state_file, log, program, folder_option, rebuild,
                 default_folder=None):
        self.name = name
        self.folder = Path(folder)
        self.state_file = Path(state_file)
        self.log = Path(log)
        self.lock_file = self.state_file.with_name("start.lock")
        self.program = program
        self.folder_option = folder_option
        self.default_folder = default_folder  # environ -> what it serves without the option
        self._rebuild = rebuild
        self._holding = False
        self.warnings = []

    @contextmanager
    def start_lock(self, what="start"):
        """Hold our start lock: one start (or stop) at a time per folder. Without the
        folder there is nothing to lock (nor any file of ours to protect)."""
        if not self.lock_file.parent.is_dir():
            yield
            return
        with lock(self.lock_file, what=what):
            self._holding = True
            try:
                yield
            finally:
                self._holding = False

    # -- identity

    def is_ours(self, process):
        """Whether the psutil ``process`` is our server serving our folder."""
        import psutil

        try:
            if process.pid < 2 or process.status() == psutil.STATUS_ZOMBIE:
                return False
            if hasattr(os, "getuid") and process.uids().real != os.getuid():
                return False
            cmdline = process.cmdline()
            if not self.program(cmdline):
                return False
            value = option(cmdline, self.folder_option)
            if value is None and self.default_folder is not None:
                value = str(self.default_folder(process.environ()))
            cwd = None
            if value is not None and not os.path.isabs(value):
                cwd = process.cwd()
            return _same_folder(value, self.folder, cwd)
        except (psutil.Error, OSError):
            return False

    def process(self, pid):
        """The psutil Process of ``pid`` if it is our server serving our folder, else None."""
        if not valid_pid(pid):
            return None
        import psutil

        try:
            process = psutil.Process(pid)
        except (psutil.Error, OSError):
            return None
        return process if self.is_ours(process) else None

    def find(self, exclude=()):
        """Every process serving our folder with our program, oldest first."""
        import psutil

        found = []
        for process in psutil.process_iter():
            if process.pid in exclude or process.pid == os.getpid():
                continue
            if self.is_ours(process):
                found.append(process)
        return sorted(found, key=created)

    # -- the state file

    def locate(self, save=True):
        """(state, process) of our running server, or (None, None).

        The state file is trusted only when its pid is our server serving our folder.
        Otherwise the process table decides: a server found there gets its state file
        rebuilt (written again when ``save``); with none, a state file that is there is
        removed. Both say so in ``self.warnings``.
        """
        state, problem = read_json(self.state_file)
        if state is not None:
            process = self.process(state["pid"])
            if process is not None:
                if not state.get("host") or not valid_port(state.get("port")):
                    # our server, but the file lost where it listens: the sockets tell
                    rebuilt = self._rebuild(process)
                    state = {**rebuilt, **{k: v for k, v in state.items() if v is not None},
                             "host": rebuilt["host"], "port": rebuilt["port"]}
                    if save and self._save_if_idle(state):
                        self.warnings.append(
                            f"the state file {self.state_file} did not say where {self.name} "
                            f"(pid {process.pid}) listens; read it from the process table "
                            "and wrote the file again"
                        )
                return state, process
            problem = f"names pid {state['pid']}, which is not {self.name} serving {self.folder}"
        found = self.find()
        if found:
            process = found[0]
            state = self._rebuild(process)
            why = problem or "was missing"
            if not save:
                self.warnings.append(
                    f"the state file {self.state_file} {why}; found {self.name} "
                    f"(pid {process.pid}) in the process table"
                )
            elif self._save_if_idle(state):
                self.warnings.append(
                    f"the state file {self.state_file} {why}; found {self.name} "
                    f"(pid {process.pid}) in the process table and wrote it again"
                )
            return state, process
        if problem is not None:
            self._remove_if_idle(problem)
        return None, None

    def _save_if_idle(self, state):
        """Write the rebuilt state unless a start holds the lock (it writes its own)."""
        held = None if self._holding else self._try_lock()
        if held is None and not self._holding:
            return False
        try:
            write_json(self.state_file, state)
        except OSError:
            return False
        finally:
            if held is not None:
                held.release()
        return True

    def _remove_if_idle(self, problem):
        held = None if self._holding else self._try_lock()
        if held is None and not self._holding:  # a start is under way and writes the file
            return
        try:
            self.state_file.unlink(missing_ok=True)
            self.warnings.append(
                f"removed the stale state file {self.state_file}: it {problem}; "
                f"{self.name} is not running"
            )
        except OSError as error:
            self.warnings.append(
                f"the state file {self.state_file} is stale (it {problem}) but cannot be "
                f"removed ({error.strerror or error}); remove it by hand"
            )
        finally:
            if held is not None:
                held.release()

    def _try_lock(self):
        try:
            return try_lock(self.lock_file)
        except OSError:  # the folder is read-only or gone: no lock, no write either
            return None

    def remove_state(self, pid=None):
        """Remove the state file; with ``pid``, only while it names that pid."""
        state, _ = read_json(self.state_file)
        if pid is not None and (state is None or state.get("pid") != pid):
            return
        self.state_file.unlink(missing_ok=True)

    # -- stop

    def stop(self, timeout=STOP_TIMEOUT):
        """Stop every process of ours serving our folder: SIGTERM, then SIGKILL after
        ``timeout``; return (state, [pids]) of what ran. Only processes that pass
        ``is_ours`` are signalled; the state file is removed afterwards."""
        with self.start_lock(what="stop"):
            state, process = self.locate(save=False)
            processes = [process] if process is not None else []
            processes += [p for p in self.find() if process is None or p.pid != process.pid]
            pids = terminate(processes, timeout)
            if pids:
                self.remove_state()
        return state, pids


def created(process):
    try:
        return process.create_time()
    except Exception:  # psutil.Error: the process just ended
        return 0.0


def terminate(processes, timeout=STOP_TIMEOUT):
    """SIGTERM each psutil process, wait up to ``timeout``, SIGKILL what is left, wait
    until it is gone; a child of ours is reaped. Returns the pids signalled.

    psutil checks that a pid was not reused (by its start time) before signalling."""
    import psutil

    signalled = []
    for process in processes:
        if process.pid < 2:
            continue
        try:
            process.terminate()
            signalled.append(process)
        except psutil.NoSuchProcess:
            continue
    _, left = psutil.wait_procs(signalled, timeout=timeout)
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=5)
    return [process.pid for process in signalled]


# ---- start ----------------------------------------------------------------------------


def spawn(command, log, ready, timeout, name, cwd=None, env=None):
    """Start ``command`` detached (its own session, stdin closed, output appended to
    ``log``) and wait until ``ready(process, new_output)`` returns something true,
    which is returned with the Popen object: (process, value).

    If the process exits first, or ``timeout`` seconds pass, or this wait is
    interrupted, the process is stopped (nothing half-started stays behind) and
    ProcessError names the last line it logged.
    """
    log = Path(log)
    with open(log, "ab") as output:
        offset = output.tell()
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            cwd=cwd, env=env, start_new_session=True, close_fds=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            text = _since(log, offset)
            value = ready(process, text)
            if value:
                return process, value
            code = process.poll()
            if code is not None:
                last = _last_line(_since(log, offset)) or "no output"
                raise ProcessError(f"{name} did not start (exit {code}: {last}); see {log}")
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
    except BaseException:
        _end(process)
        raise
    _end(process)
    last = _last_line(_since(log, offset))
    said = f" (last said: {last})" if last else ""
    raise ProcessError(f"{name} did not start within {timeout:.0f} s{said}; see {log}")


def _end(process):
    """Stop a process spawn() started and reap it."""
    if process.poll() is not None:
        return
    try:
        process.terminate()
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    except OSError:
        pass


def _since(log, offset):
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _last_line(text):
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
