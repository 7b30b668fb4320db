"""Why a step failed: the probable cause, read out of its logs with a table of patterns.

The rules live in ``cloudmesh/emr/data/diagnosis.yaml`` (pattern, class, priority,
hint); this module only applies them. ``diagnose`` takes the texts the Provider read
(FailureDetails, the step's stderr, stdout and controller logs, the container logs of
the YARN application the stderr names, the step's or cluster's state) and returns one
diagnosis: the class, the line that says it, the log and line it came from, the file
and line of the user's program when a stack trace names it, a hint, and the excerpt of
the log around the line. Pure functions: no AWS, no database, no printing.
"""

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

TABLE = Path(__file__).resolve().parent.parent / "data" / "diagnosis.yaml"
TRACEBACK = "Traceback (most recent call last):"
# a YARN application id, as spark-submit prints it in cluster deploy mode
APPLICATION = re.compile(r"\bapplication_(\d{10,})_(\d{4,})\b")
EXCERPT_BEFORE = 12  # lines of the log before the matched line in the excerpt
EXCERPT_AFTER = 4
UNKNOWN_LINES = 5  # error-looking lines shown when no rule matched
LONGEST_LINE = 2000  # characters of one log line kept (a minified blob is not a message)


@dataclass
class Rule:
    cls: str
    title: str
    priority: int
    pattern: re.Pattern
    hint: str
    context: str = None


@dataclass
class Table:
    rules: list
    sources: list
    frames: dict
    library: dict
    error_looking: re.Pattern = None
    exit_code: re.Pattern = None
    excerpt_skip: re.Pattern = None
    ranks: dict = field(default_factory=dict)


@dataclass
class Log:
    """One text to read: its source (a name of the table's ``sources``) and where it is."""

    source: str
    name: str
    text: str


@functools.lru_cache(maxsize=None)
def table(path=None):
    """The rules of the pattern table, compiled (read once per process)."""
    import yaml

    data = yaml.safe_load(Path(path or TABLE).read_text())
    rules = [
        Rule(cls=item["class"], title=item["title"], priority=int(item["priority"]),
             pattern=re.compile(item["pattern"]), hint=" ".join(item["hint"].split()),
             context=item.get("context"))
        for item in data["rules"]
    ]
    sources = list(data["sources"])
    return Table(
        rules=rules, sources=sources,
        frames={kind: re.compile(pattern) for kind, pattern in data["frames"].items()},
        library={kind: tuple(marks) for kind, marks in data["library"].items()},
        error_looking=re.compile(data["error_looking"]),
        exit_code=re.compile(data["exit_code"]),
        excerpt_skip=re.compile(data["excerpt_skip"]),
        ranks={name: index for index, name in enumerate(sources)},
    )


def applications(text):
    """The YARN application ids a log names, in order, each once."""
    return list(dict.fromkeys(match.group(0) for match in APPLICATION.finditer(text or "")))


class _Groups(dict):
    """Named groups for a hint; a group that did not match reads as 'it'."""

    def __missing__(self, key):
        return "it"


def _lines(text):
    return [line.rstrip("\r")[:LONGEST_LINE] for line in (text or "").splitlines()]


def _in_context(rule, lines, index, frames):
    if rule.context == "python":
        following = next((line for line in lines[index + 1:] if line.strip()), "")
        if frames["java"].match(following):
            return False
        return any(line.startswith(TRACEBACK) for line in lines[:index])
    if rule.context == "java":
        following = next((line for line in lines[index + 1:] if line.strip()), "")
        return bool(frames["java"].match(following))
    return True


def _python_frames(lines, index, frames):
    """The Python frames of the traceback that ends at (or holds) line ``index``."""
    found = []
    for line in reversed(lines[:index]):
        if line.startswith(TRACEBACK):
            break
        match = frames["python"].match(line)
        if match:
            found.append(match)
            continue
        if line.strip() and not line[0].isspace() and not line.startswith(("During handling",
                                                                            "The above exception",
                                                                            ": ")):
            if not re.match(r"^[\w.]+(?:Error|Exception)\b", line):
                break
    return list(reversed(found))


def _java_frames(lines, index, frames):
    """The Java frames right after line ``index`` (its stack trace)."""
    found = []
    for line in lines[index + 1:]:
        match = frames["java"].match(line)
        if match:
            found.append(match)
        elif line.strip().startswith(("... ", "Caused by:", "Suppressed:")) or not line.strip():
            continue
        else:
            break
    return found


def _frame(match):
    info = {"File": match.group("file")}
    if match.group("line"):
        info["Line"] = int(match.group("line"))
    if match.group("function"):
        info["Function"] = match.group("function").strip()
    return info


def where(lines, index, table_):
    """The innermost frame of the user's program behind line ``index``, or None.

    Python frames come first (the program that a Py4JJavaError interrupted), then Java
    ones; frames of Spark, py4j, the JDK and other libraries are skipped.
    """
    python = _python_frames(lines, index, table_.frames)
    own = [m for m in python if not any(mark in m.group("file") for mark in table_.library["python"])]
    if own:
        return _frame(own[-1])
    java = _java_frames(lines, index, table_.frames)
    own = [m for m in java if not m.group("function").startswith(table_.library["java"])]
    if own:
        return _frame(own[0])
    if python:  # a frame of a library is better than none
        return _frame(python[-1])
    return None


def _excerpt(lines, index, skip=None):
    """The lines around line ``index``: up to EXCERPT_BEFORE before it and EXCERPT_AFTER
    after it, leaving out routine log lines (``skip``)."""
    def kept(candidates):
        return [line for line in candidates if not (skip and skip.match(line))]

    before = kept(lines[:index])[-EXCERPT_BEFORE:]
    after = kept(lines[index + 1:])[:EXCERPT_AFTER]
    return before + [lines[index]] + after


def diagnose(logs, table_=None):
    """The probable cause of a failure, from ``logs`` (a list of ``Log``).

    Returns a dict: Class, Title, Line (the line that says it), Hint, Log (the log it
    came from) and LogLine (its line number there, from 1), Where (the user's program
    file and line, when a stack trace names it), and Excerpt (the lines around it).
    With no rule matching, Class is ``unknown`` and the excerpt holds the last lines
    that look like errors.
    """
    table_ = table_ or table()
    found = []
    for log in logs:
        rank = table_.ranks.get(log.source, len(table_.ranks))
        lines = _lines(log.text)
        for index, line in enumerate(lines):
            for rule in table_.rules:
                match = rule.pattern.search(line)
                if match and _in_context(rule, lines, index, table_.frames):
                    found.append((rule.priority, -rank, rule, match, log, lines, index))
    if not found:
        return _unknown(logs, table_)
    top = max(candidate[0] for candidate in found)
    # of the lines that say it equally well: one with a stack trace behind it, then the
    # preferred log, then the last line
    best = max((c for c in found if c[0] == top),
               key=lambda c: (where(c[5], c[6], table_) is not None, c[1], c[6]))
    _, _, rule, match, log, lines, index = best
    groups = _Groups({k: v for k, v in match.groupdict().items() if v})
    said = (groups.get("line") or lines[index]).strip()
    said = said[2:] if said.startswith(": ") else said  # py4j's line of the Java cause
    result = {
        "Class": rule.cls,
        "Title": rule.title,
        "Line": said,
        "Hint": rule.hint.format_map(groups),
        "Log": log.name,
        "LogLine": index + 1,
        "Excerpt": _excerpt(lines, index, table_.excerpt_skip),
    }
    place = where(lines, index, table_)
    if place:
        result["Where"] = place
    return result


def _unknown(logs, table_):
    found = []
    for log in logs:
        for index, line in enumerate(_lines(log.text)):
            if line.strip() and table_.error_looking.search(line):
                found.append((log, index, line.strip()))
    result = {"Class": "unknown", "Title": "Unknown cause",
              "Hint": "No known pattern matched. Read the whole stderr with 'cms emr logs "
                      "CLUSTERID STEPID' (and --file=controller, --file=stdout).",
              "Excerpt": [line for _, _, line in found[-UNKNOWN_LINES:]]}
    if found:
        log, index, line = found[-1]
        result.update(Line=line, Log=log.name, LogLine=index + 1)
    else:
        result["Line"] = None
    return result


def exit_code(text, table_=None):
    """The last exit code a controller log reports, or None."""
    table_ = table_ or table()
    codes = [int(match.group("code")) for match in table_.exit_code.finditer(text or "")]
    return codes[-1] if codes else None


def bootstrap_hint(hint, details):
    """The hint of a bootstrap failure, with which action failed, its exit code, its stderr."""
    action = f"bootstrap action {details.get('Number')}"
    if details.get("Name") or details.get("ScriptPath"):
        named = " ".join(str(part) for part in [details.get("ScriptPath"), *details.get("Args", [])]
                         if part)
        action += f" ({details.get('Name') or ''}: {named})".replace("(: ", "(")
    said = [f"Failed: {action}"]
    if details.get("ExitCode") is not None:
        said.append(f"exit code {details['ExitCode']}")
    if details.get("Stderr"):
        said.append("its stderr ends: " + " | ".join(line.strip() for line in details["Stderr"]
                                                      if line.strip())[-500:])
    return "; ".join(said) + ". " + hint
