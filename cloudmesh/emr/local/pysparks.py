"""Which pyspark a step runs on: the Spark of its cluster's release.

EMR runs a step on the Spark its release ships (emr-7.x: Spark 3.5, emr-5.29.0:
Spark 2.4.4), and Spark versions differ in ways a job notices (Spark 4 turns ANSI
SQL on by default). The emulator runs a step on a pyspark of the same major.minor:

* the installed pyspark, when it is of that line (the ``local`` extra pins the line
  of the default release: 3.5 for emr-7.x);
* otherwise a pyspark of that line installed with pip, on first use, into a venv
  cached under the emulator's folder (``<state>/pyspark/<line>``); the step's
  controller log says so and how long it took;
* when none can be had (no pyspark of that line runs on this Python or this Java, or
  pip fails, e.g. without network), the installed pyspark, and the step's stderr
  begins with a WARNING naming both versions.

The rules (which Python and Java each Spark line runs on) are data, below.
"""

import importlib.metadata
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PIP_TIMEOUT = 900  # seconds for creating a venv and installing pyspark into it

# Spark line -> (lowest Java, highest Java, highest Python (major, minor)) it runs on
SPARK_RUNS_ON = {
    "2.4": (8, 8, (3, 7)),
    "3.0": (8, 11, (3, 9)),
    "3.1": (8, 11, (3, 9)),
    "3.2": (8, 11, (3, 10)),
    "3.3": (8, 17, (3, 10)),
    "3.4": (8, 17, (3, 11)),
    "3.5": (8, 17, (3, 12)),
    "4.0": (17, 21, (3, 13)),
    "4.1": (17, 21, (3, 13)),
}
DEFAULT_RUNS_ON = (17, 25, (3, 14))  # a line newer than the table


def installed_version():
    """The version of the pyspark installed beside the emulator, or None."""
    try:
        return importlib.metadata.version("pyspark")
    except importlib.metadata.PackageNotFoundError:
        return None


def line_of(version):
    """"3.5.6" -> "3.5"."""
    return ".".join(str(version).split(".")[:2]) if version else None


@dataclass
class Choice:
    """The pyspark a step runs on: its spark-submit, home, python, and what to tell."""

    program: str = None  # spark-submit; None: the installed pyspark's
    home: str = None  # SPARK_HOME
    python: str = None  # PYSPARK_PYTHON; None: the emulator's own
    version: str = None
    note: str = None  # a line for the controller log
    warning: str = None  # the WARNING that begins the step's stderr


class PysparkCache:
    """pyspark venvs by Spark line under ``root``, made once, shared by the steps."""

    def __init__(self, root, java_version=None):
        self.root = Path(root)
        self.java_version = java_version  # () -> the major version of the java in use
        self._locks = {}
        self._lock = threading.Lock()
        self._failed = {}  # line -> why no pyspark of it can be had (this daemon's run)

    def _line_lock(self, line):
        with self._lock:
            return self._locks.setdefault(line, threading.Lock())

    def choose(self, wanted_line, release):
        """The Choice for a step of ``release`` whose Spark line is ``wanted_line``."""
        installed = installed_version()
        if not wanted_line or line_of(installed) == wanted_line:
            return Choice(version=installed)
        with self._line_lock(wanted_line):
            reason = self._failed.get(wanted_line) or self._cannot_run(wanted_line)
            if reason is None:
                try:
                    return self._venv(wanted_line)
                except (OSError, subprocess.SubprocessError, RuntimeError) as error:
                    reason = f"pip could not install pyspark {wanted_line}: {error}"
                    self._failed[wanted_line] = reason
        return Choice(
            version=installed,
            warning=(f"WARNING: {release} ships Spark {wanted_line}; this step runs on the "
                     f"installed pyspark {installed} instead ({reason})"),
        )

    def _cannot_run(self, line):
        """Why no pyspark of ``line`` runs here (Python or Java), or None."""
        low_java, high_java, high_python = SPARK_RUNS_ON.get(line, DEFAULT_RUNS_ON)
        if sys.version_info[:2] > high_python:
            return (f"pyspark {line} does not run on Python "
                    f"{sys.version_info[0]}.{sys.version_info[1]}")
        java = self.java_version() if self.java_version else None
        if java and not low_java <= java <= high_java:
            return f"Spark {line} needs Java {low_java}..{high_java}, not Java {java}"
        return None

    def _venv(self, line):
        folder = self.root / line
        python = folder / "bin" / "python"
        ready = folder / "ready"
        if ready.is_file():
            version = ready.read_text().strip()
            return self._choice(folder, python, version,
                                f"using pyspark {version} for Spark {line} from {folder}")
        started = time.monotonic()
        if folder.exists():
            import shutil

            shutil.rmtree(folder)  # a half-made venv of an earlier attempt
        folder.parent.mkdir(parents=True, exist_ok=True)
        log.info("installing pyspark %s into %s", line, folder)
        self._run([sys.executable, "-m", "venv", str(folder)])
        self._run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                   f"pyspark=={line}.*"])
        if line in ("3.5",) and sys.version_info >= (3, 12):
            self._run([str(python), "-m", "pip", "install", "--quiet", "setuptools"])
        done = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('pyspark'))"],
            capture_output=True, text=True, timeout=120, check=True)
        version = done.stdout.strip()
        ready.write_text(version + "\n")
        seconds = time.monotonic() - started
        log.info("installed pyspark %s into %s in %.0f s", version, folder, seconds)
        return self._choice(folder, python, version,
                            f"installed pyspark {version} for Spark {line} with pip into "
                            f"{folder} in {seconds:.0f} s (first use; cached for later steps)")

    @staticmethod
    def _run(command):
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"{Path(command[0]).name} {' '.join(command[1:3])}... exited "
                               f"with {done.returncode}: {last[0]}")

    @staticmethod
    def _choice(folder, python, version, note):
        site = next((folder / "lib").glob("python*/site-packages/pyspark"), None)
        if site is None or not (site / "bin" / "spark-submit").is_file():
            raise RuntimeError(f"the venv {folder} has no pyspark/bin/spark-submit")
        return Choice(program=str(site / "bin" / "spark-submit"), home=str(site),
                      python=str(python), version=version, note=note)


def java_major(env=None):
    """The major version of the java a step would run, or None (see steps.java_version)."""
    from cloudmesh.emr.local import steps

    env = os.environ if env is None else env
    home = env.get("JAVA_HOME")
    program = os.path.join(home, "bin", "java") if home else None
    if not program or not os.access(program, os.X_OK):
        import shutil

        program = shutil.which("java", path=env.get("PATH"))
    return steps.java_version(program) if program else None
