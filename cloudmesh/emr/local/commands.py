"""What a command-runner.jar step asks for, and how the emulator runs it on this machine.

Pure functions only (no I/O): they turn a step's arguments into a plan that the step
runner (``steps.py``) carries out. Two commands are supported, the two that
``cms emr run`` and ``cms emr copy`` submit:

* ``spark-submit [OPTIONS] APP [ARGS]``: rewritten to run pyspark's own spark-submit
  with ``--master local[*]`` on 127.0.0.1. Every ``s3://bucket/key`` in an argument
  becomes a path in a local mirror of the emulated S3, ``/home/hadoop/...``
  becomes a path in the cluster's master folder, and what EMR ships (``SHIPPED``,
  e.g. ``/usr/lib/spark/examples/...``) a path in the installed pyspark.
* ``aws s3 cp [--recursive] SOURCE DEST``: copies between the emulated S3 and the
  cluster's master folder (``/home/hadoop/`` maps into it).

Steps stay inside the emulated cluster: the application and the files of
``--py-files``, ``--files``, ``--jars``, ``--archives`` and ``--properties-file`` must
be S3 objects or paths the cluster has (above); any other local path (``~/x.py``,
``/etc/passwd``, ``file:///...``, ``../../x``) fails the step before anything runs,
because that file does not exist on the cluster.
"""

import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

HOME = "/home/hadoop"  # the master node's home folder, as steps name it
STEP_CWD = "/mnt/var/lib/hadoop/steps/step"  # where a step's relative paths start, as on EMR

# folders EMR ships on every node -> the installed Python package whose files stand
# for them (read only): /usr/lib/spark/examples/src/main/python/pi.py is pyspark's
SHIPPED = {"/usr/lib/spark": "pyspark"}

# URL schemes that name a local file (Spark's own local: too); others are not files here
LOCAL_SCHEMES = ("file://", "local://")

# s3://, s3a:// and s3n:// all name S3 on EMR; bucket names are DNS-like
S3_URI = re.compile(r"\bs3[an]?://([A-Za-z0-9][A-Za-z0-9._-]*)(/[^\s,;]*)?")
GLOB = re.compile(r"[*?\[{]")

# spark-submit options that take no value (all others take one)
SPARK_FLAGS = {"--verbose", "-v", "--supervise", "--help", "-h", "--version", "--usage-error"}

# spark-submit options whose value names files that must exist before Spark starts
SPARK_FILE_OPTIONS = {"--py-files", "--files", "--jars", "--archives", "--properties-file"}

# what the emulator adds to every spark-submit: Spark stays on 127.0.0.1, no web UI
SPARK_LOCAL_CONF = (
    "spark.ui.enabled=false",
    "spark.driver.host=127.0.0.1",
    "spark.driver.bindAddress=127.0.0.1",
)

S3_CP_FLAGS = {"--recursive", "--quiet", "--only-show-errors", "--no-progress"}


class StepFailure(Exception):
    """The step cannot run or did not succeed; becomes the step's FailureDetails."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class S3Ref:
    """One ``s3://bucket/key`` named by a step, and where its mirror lives locally."""

    uri: str
    bucket: str
    key: str  # may end with "/" (a prefix), be empty (the whole bucket) or hold wildcards
    root: Path  # the mirror of S3: root/bucket/key

    @property
    def local(self):
        """The local path that stands for the URI (wildcards kept, for Spark to expand)."""
        return mirror_path(self.root, self.bucket, self.key)

    @property
    def prefix(self):
        """The part of the key before any wildcard: what to download."""
        match = GLOB.search(self.key)
        if not match:
            return self.key
        return self.key[: self.key.rfind("/", 0, match.start()) + 1]

    @property
    def watch(self):
        """The local file or folder whose new files are uploaded after the step."""
        return mirror_path(self.root, self.bucket, self.prefix)


def mirror_path(root, bucket, key):
    """``root/bucket/key`` with the key normalised so that it cannot leave ``root``."""
    clean = posixpath.normpath("/" + key.strip("/")).lstrip("/") if key.strip("/") else ""
    path = Path(root) / bucket
    return path / clean if clean else path


def master_path(master, path):
    """The local file that stands for ``path`` on the master node (relative to HOME)."""
    emulated = posixpath.normpath(posixpath.join(HOME, path))
    return Path(master) / emulated.lstrip("/")


def cluster_path(path, master, shipped=None, cwd=STEP_CWD):
    """The local file that stands for ``path`` on the cluster, or None if it has none.

    ``path`` is absolute or relative to ``cwd`` (the step's folder on the master);
    under ``/home/hadoop`` it lies in the ``master`` folder, under a ``shipped``
    folder ({emulated prefix: local folder}) in that local folder; anywhere else the
    cluster has no such file.
    """
    emulated = posixpath.normpath(posixpath.join(cwd, path))
    if emulated == HOME or emulated.startswith(HOME + "/"):
        return Path(master) / emulated.lstrip("/")
    for prefix, folder in (shipped or {}).items():
        if folder and (emulated == prefix or emulated.startswith(prefix + "/")):
            return Path(folder) / posixpath.relpath(emulated, prefix)
    return None


def not_on_cluster(name):
    return StepFailure(
        "File not found",
        f"spark-submit cannot start: {name} does not exist on the cluster (a step can use "
        f"S3 objects, files under {HOME}/ and what EMR ships, such as "
        f"{', '.join(prefix + '/' for prefix in SHIPPED)})",
    )


def split_s3(uri):
    """``s3://bucket/key`` -> (bucket, key); None when ``uri`` is not an S3 URI."""
    match = S3_URI.fullmatch(uri)
    if not match:
        return None
    return match.group(1), (match.group(2) or "/")[1:]


@dataclass
class SparkPlan:
    """The spark-submit arguments to run (without the program) and the S3 data they use.

    ``needed`` lists what must exist before Spark starts (the application and the
    files of --py-files, --files, --jars, --archives, --properties-file), each as
    (the name the step used, the local Path that stands for it). ``mapped`` lists
    every (name, local Path) mapped into the master folder (they must stay in it).
    """

    args: list
    refs: list = field(default_factory=list)
    needed: list = field(default_factory=list)
    mapped: list = field(default_factory=list)


def spark_plan(args, mirror, master, shipped=None):
    """Rewrite the arguments of ``spark-submit`` for a local run.

    ``args`` are the step's arguments after ``spark-submit``; ``mirror`` is the folder
    that holds the local copy of S3 (``mirror/bucket/key``); ``master`` the cluster's
    master folder. ``--deploy-mode`` and any non-local ``--master`` are dropped,
    ``--master local[*]`` is used unless a local master was asked for, and the
    emulator's own settings come last so that they win. ``shipped``: {emulated
    folder: local folder} of what EMR ships (see ``SHIPPED``). A file the step needs
    that is a local path the cluster does not have raises StepFailure.
    """
    refs = {}
    needed = []
    mapped = []
    seen = []  # the refs of the token being rewritten

    def to_local(match):
        bucket, key = match.group(1), (match.group(2) or "/")[1:]
        ref = refs.setdefault((bucket, key), S3Ref(match.group(0), bucket, key, Path(mirror)))
        seen.append(ref)
        return str(ref.local) + ("/" if key.endswith("/") else "")

    def rewrite(token, files=False):
        """The local form of ``token``; with ``files``, what it names must exist.

        Each comma-separated part is mapped on its own (``--py-files a.py,b.zip``).
        """
        parts = []
        for part in token.split(","):
            if not part:
                parts.append(part)
                continue
            scheme = next((s for s in LOCAL_SCHEMES if part.startswith(s)), "")
            path = part[len(scheme):]
            local = None
            if files and not S3_URI.fullmatch(part) and (scheme or "://" not in part):
                local = cluster_path(path, master, shipped)
                if local is None:
                    raise not_on_cluster(part)
            elif path.startswith("/"):  # an argument: mapped when the cluster has it
                local = cluster_path(path, master, shipped)
            if local is not None:
                if files:
                    needed.append((path, local))
                if Path(master) in local.parents or local == Path(master):
                    mapped.append((path, local))
                parts.append(str(local))
                continue
            seen.clear()
            parts.append(S3_URI.sub(to_local, part))
            if files:
                needed.extend((ref.uri, ref.local) for ref in seen if not GLOB.search(ref.key))
        return ",".join(parts)

    options, rest, master_arg = [], [], None
    index = 0
    while index < len(args):
        token = args[index]
        name, has_value, value = token.partition("=")
        if name in ("--deploy-mode", "--master"):
            if not has_value:
                index += 1
                value = args[index] if index < len(args) else ""
            if name == "--master" and value.startswith("local"):
                master_arg = value
            index += 1
            continue
        files = name in SPARK_FILE_OPTIONS
        if token.startswith("-") and token not in SPARK_FLAGS and not has_value:
            value = rewrite(args[index + 1], files) if index + 1 < len(args) else ""
            options += [token, value]
            index += 2
            continue
        if token.startswith("-"):
            options.append(f"{name}={rewrite(value, files)}" if has_value else rewrite(token))
            index += 1
            continue
        rest = [rewrite(args[index], files=True)] + [rewrite(arg) for arg in args[index + 1 :]]
        break
    ours = ["--master", master_arg or "local[*]"]
    for setting in SPARK_LOCAL_CONF:
        ours += ["--conf", setting]
    return SparkPlan(options + ours + rest, list(refs.values()), needed, mapped)


@dataclass
class CopyPlan:
    """An ``aws s3 cp``: source and destination, each an S3 URI or an emulated path."""

    source: str
    dest: str
    recursive: bool = False


def s3_cp_plan(args):
    """Parse the arguments of ``aws s3 cp`` (after ``cp``)."""
    positional, recursive = [], False
    for arg in args:
        if arg.startswith("--"):
            if arg not in S3_CP_FLAGS:
                raise StepFailure(
                    "Unsupported option",
                    f"the local emulator's aws s3 cp does not support {arg}; "
                    f"it knows {', '.join(sorted(S3_CP_FLAGS))}",
                )
            recursive = recursive or arg == "--recursive"
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise StepFailure("Invalid command", "usage: aws s3 cp [--recursive] SOURCE DEST")
    source, dest = positional
    if not split_s3(source) and not split_s3(dest):
        raise StepFailure("Invalid command", "aws s3 cp needs an s3:// source or destination")
    return CopyPlan(source, dest, recursive)


# the last line of a failed program's stderr that names an error: a Python
# exception ("ValueError: ..."), a Java one ("java.io.IOException: ..."), or
# "Exception in thread ..."; Spark's own log lines are skipped
ERROR_LINE = re.compile(
    r"^(?:Exception in thread .*|[A-Za-z_][\w.$]*(?:Error|Exception|Exit|Interrupt|Failure)"
    r"(?::.*)?|Error: .*)$"
)
# py4j reports a Java exception as "Py4JJavaError: An error occurred while calling
# o29.x." followed by ": java.X: what went wrong": that next line says why
PY4J_ERROR = "py4j.protocol.Py4JJavaError"
JAVA_CAUSE = re.compile(r"^: ([A-Za-z_][\w.$]*(?:Error|Exception)(?::.*)?)$")
LOG_LINE = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d (?:INFO|WARN|DEBUG|TRACE) ")
NOISE = ("WARNING: Using incubator modules",)


def last_error_line(*texts):
    """The line that best says why a program failed, or None.

    ``texts`` in order of preference (stderr, then stdout): the last line that names
    an error in the first text that has one (for a Py4JJavaError, the Java exception
    behind it), else the last line that is not one of Spark's log lines.
    """
    outputs = [[line.rstrip() for line in text.splitlines() if line.strip()] for text in texts]
    for lines in outputs:
        for line in reversed(lines):
            if ERROR_LINE.match(line):
                if line.startswith(PY4J_ERROR):
                    causes = [JAVA_CAUSE.match(other) for other in lines]
                    causes = [cause.group(1) for cause in causes if cause]
                    if causes:
                        return causes[-1]
                return line
    for lines in outputs:
        for line in reversed(lines):
            if not LOG_LINE.match(line) and not line.startswith(NOISE) and not line[0].isspace():
                return line
    return None


# ---- the kinds of step the emulator runs, as tables ------------------------------------

# a step's jar (its file name) -> the kind of step it is; any other jar is a custom jar,
# which runs through spark-submit (a Spark application, or any Java main class)
JARS = {
    "command-runner.jar": "command",
    "script-runner.jar": "script",
}

# command-runner.jar: the program (its file name) -> the StepRun method that runs it
COMMANDS = {
    "spark-submit": "_spark",
    "spark-example": "_example",
    "run-example": "_example",  # /usr/lib/spark/bin/run-example
    "hadoop-streaming": "_streaming",
    "bash": "_bash",
    "aws": "_aws",
}

# aws CLI subcommands the emulator carries out itself (against the emulated S3)
AWS_COMMANDS = {("s3", "cp"): "_copy", ("s3", "sync"): "_sync"}

# Spark's example programs (their class names, as run-example takes them) -> the Python
# program of the same example that pyspark ships under examples/src/main/python/
EXAMPLES = {
    "SparkPi": "pi.py",
    "JavaSparkPi": "pi.py",
    "JavaWordCount": "wordcount.py",
    "SparkPageRank": "pagerank.py",
    "JavaPageRank": "pagerank.py",
    "SparkLR": "logistic_regression.py",
    "JavaLogisticRegression": "logistic_regression.py",
    "SparkKMeans": "kmeans.py",
    "SparkTC": "transitive_closure.py",
    "JavaTC": "transitive_closure.py",
    "SparkALS": "als.py",
    "JavaStatusTrackerDemo": "status_api_demo.py",
}
EXAMPLES_FOLDER = "/usr/lib/spark/examples/src/main/python"  # as the cluster names it
EXAMPLE_PREFIX = "org.apache.spark.examples."

# the bash options that take the script as the next argument
BASH_SCRIPT_OPTIONS = {"-c"}


# bash options that take a value (the value is not the script file)
BASH_VALUE_OPTIONS = {"-o", "+o", "-O", "+O", "--rcfile", "--init-file"}


def bash_script(args):
    """The script file that ``bash ARGS`` (after ``bash``) runs, or None when the script
    is inline (``-c``) or read from stdin."""
    index = 0
    while index < len(args):
        word = args[index]
        if word in BASH_SCRIPT_OPTIONS or (word.startswith("-") and not word.startswith("--")
                                           and "c" in word[1:]):
            return None  # bash -c SCRIPT (or -ec, -xc ...): the script is the text
        if word == "--":
            return args[index + 1] if index + 1 < len(args) else None
        if word in BASH_VALUE_OPTIONS:
            index += 2
            continue
        if word.startswith(("-", "+")) and word not in ("-", "+"):
            index += 1
            continue
        return word
    return None


def step_kind(jar):
    """The kind of a step with ``jar``: command, script or jar (a custom jar)."""
    return JARS.get(posixpath.basename(jar or ""), "jar")


def command_method(args):
    """The StepRun method for the command-runner.jar ``args``; StepFailure if none."""
    if not args:
        raise StepFailure("Unsupported step", "command-runner.jar needs a command, such as "
                          f"{', '.join(sorted(COMMANDS))}")
    program = posixpath.basename(args[0])
    if program not in COMMANDS:
        raise StepFailure(
            "Unsupported step",
            f"the local emulator runs these command-runner.jar commands: "
            f"{', '.join(sorted(COMMANDS))}; '{args[0]}' is not one of them",
        )
    return COMMANDS[program]


def aws_method(args):
    """The StepRun method for ``aws ARGS`` (after ``aws``); StepFailure if none."""
    for words, method in AWS_COMMANDS.items():
        if tuple(args[: len(words)]) == words:
            return method, args[len(words):]
    known = ", ".join("aws " + " ".join(words) for words in AWS_COMMANDS)
    raise StepFailure("Unsupported step",
                      f"the local emulator runs {known}; not 'aws {' '.join(args[:2])}'")


def example_program(args):
    """(the example's Python program as the cluster names it, its arguments) for
    ``spark-example``/``run-example`` arguments; StepFailure for an example pyspark
    does not ship."""
    options, rest = [], list(args)
    while rest and rest[0].startswith("-"):  # spark-submit options before the class
        option = rest.pop(0)
        options.append(option)
        if "=" not in option and option not in SPARK_FLAGS and rest:
            options.append(rest.pop(0))
    if not rest:
        raise StepFailure("Invalid command", "usage: spark-example [options] CLASS [ARGS]")
    name = rest[0][len(EXAMPLE_PREFIX):] if rest[0].startswith(EXAMPLE_PREFIX) else rest[0]
    program = EXAMPLES.get(name)
    if program is None:
        raise StepFailure(
            "Example not available",
            f"the local emulator runs Spark's examples through the Python programs pyspark "
            f"ships; there is none for {rest[0]} (it has: {', '.join(sorted(EXAMPLES))})",
        )
    return options, f"{EXAMPLES_FOLDER}/{program}", rest[1:]


@dataclass
class StreamingPlan:
    """A hadoop-streaming job: what to ship, what to run, where to read and write."""

    files: list
    mapper: str
    reducer: str = None
    combiner: str = None
    inputs: list = field(default_factory=list)
    output: str = None
    reducers: int = 1
    env: dict = field(default_factory=dict)


# hadoop-streaming options that take a value, and the generic options (-D, -files...)
STREAMING_VALUES = {"-files", "-mapper", "-reducer", "-combiner", "-input", "-output",
                    "-numReduceTasks", "-cmdenv", "-D", "-archives", "-libjars",
                    "-inputformat", "-outputformat", "-partitioner", "-file"}


def streaming_plan(args):
    """Parse the arguments of ``hadoop-streaming`` (after it)."""
    values = {}
    index = 0
    while index < len(args):
        option = args[index]
        if option.startswith("-D") and option != "-D":  # -Dkey=value
            values.setdefault("-D", []).append(option[2:])
            index += 1
            continue
        if option not in STREAMING_VALUES or index + 1 >= len(args):
            raise StepFailure(
                "Invalid command",
                f"hadoop-streaming: unknown option or missing value: {option} "
                "(usage: -files F1,F2 -mapper CMD -reducer CMD -input IN -output OUT)",
            )
        values.setdefault(option, []).append(args[index + 1])
        index += 2
    for needed in ("-mapper", "-input", "-output"):
        if needed not in values:
            raise StepFailure("Invalid command",
                              f"hadoop-streaming: {needed} is required "
                              "(usage: -files F1,F2 -mapper CMD -reducer CMD -input IN -output OUT)")
    files = [f for value in values.get("-files", []) + values.get("-file", [])
             for f in value.split(",") if f]
    reducers = 1
    settings = dict(item.partition("=")[::2] for item in values.get("-D", []))
    count = values.get("-numReduceTasks", [settings.get("mapreduce.job.reduces", "1")])[-1]
    try:
        reducers = int(count)
    except ValueError:
        raise StepFailure("Invalid command", f"-numReduceTasks: '{count}' is not a number") from None
    env = dict(item.partition("=")[::2] for item in values.get("-cmdenv", []))
    reducer = values.get("-reducer", [None])[-1]
    if reducer in ("NONE", "aggregate"):
        if reducer == "aggregate":
            raise StepFailure("Unsupported option",
                              "the local emulator's hadoop-streaming has no aggregate reducer")
        reducer, reducers = None, 0
    return StreamingPlan(files=files, mapper=values["-mapper"][-1], reducer=reducer,
                         combiner=values.get("-combiner", [None])[-1],
                         inputs=[i for value in values["-input"] for i in value.split(",") if i],
                         output=values["-output"][-1], reducers=max(reducers, 0), env=env)


def streaming_key(line):
    """The key of a streaming record: the text before the first tab (the whole line)."""
    return line.split(b"\t", 1)[0]


def sort_records(data):
    """Streaming records (lines) sorted by key, as the shuffle hands them to a reducer."""
    lines = data.splitlines()
    lines.sort(key=streaming_key)
    return b"\n".join(lines) + (b"\n" if lines else b"")


def cluster_mode(args):
    """Whether spark-submit ``args`` ask for cluster deploy mode (the driver in YARN)."""
    for index, arg in enumerate(args):
        if arg == "--deploy-mode" and index + 1 < len(args):
            return args[index + 1] == "cluster"
        if arg.startswith("--deploy-mode="):
            return arg.split("=", 1)[1] == "cluster"
        if not arg.startswith("-") and (index == 0 or args[index - 1] not in ("--deploy-mode",)):
            if index > 0 and args[index - 1].startswith("-") and "=" not in args[index - 1] \
                    and args[index - 1] not in SPARK_FLAGS:
                continue  # the value of an option
            return False  # the application: options end here
    return False
