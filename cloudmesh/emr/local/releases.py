"""EMR release labels as the emulator knows them: ``cloudmesh/emr/data/releases.json``.

The table holds, for each release label, the versions of the applications it ships
(Spark, Hadoop, Hive, Livy, JupyterEnterpriseGateway where present) and the Amazon
Linux release of its AMI. DescribeReleaseLabel, ListReleaseLabels, DescribeCluster's
Applications and ListSupportedInstanceTypes answer from it, and a step runs on the
Spark of its cluster's release (``spark_line``). Standard library only.
"""

import functools
import json
import re
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "releases.json"
LABEL = re.compile(r"emr-(\d+)\.(\d+)\.(\d+)")


@functools.lru_cache(maxsize=1)
def table():
    """The whole table: {"default_applications": [...], "releases": {label: {...}}}."""
    return json.loads(DATA.read_text())


def labels():
    """Every release label of the table, newest first."""
    return sorted(table()["releases"], key=order, reverse=True)


def order(label):
    """A sort key of a release label: (major, minor, patch); unparseable ones first."""
    match = LABEL.fullmatch(str(label))
    return tuple(int(part) for part in match.groups()) if match else (-1, -1, -1)


def get(label):
    """The table's entry of ``label`` ({"applications": {...}, "os_release_label": ...}) or None."""
    return table()["releases"].get(label)


def concise(version):
    """EMR's concise version: "3.5.6-amzn-1" -> "3.5.6"."""
    return str(version).split("-amzn", 1)[0] if version else version


def applications(label):
    """{application name: full version} shipped by ``label`` ({} for an unknown label)."""
    entry = get(label)
    return dict(entry["applications"]) if entry else {}


def version_of(label, name):
    """The full version of application ``name`` (any case) in ``label``, or None."""
    for app, version in applications(label).items():
        if app.lower() == str(name).lower():
            return version
    return None


def default_applications():
    """The applications EMR installs when RunJobFlow names none."""
    return list(table()["default_applications"])


def spark_line(label):
    """The Spark major.minor of ``label`` ("3.5"), or None when the table does not know it."""
    version = version_of(label, "Spark")
    if not version:
        return None
    return ".".join(concise(version).split(".")[:2])


def same_line(label):
    """The newest label of the table in the major.minor line of ``label``, or None."""
    match = LABEL.fullmatch(str(label))
    if not match:
        return None
    major, minor = match.group(1), match.group(2)
    for known in labels():
        if known.startswith(f"emr-{major}.{minor}."):
            return known
    for known in labels():
        if known.startswith(f"emr-{major}."):
            return known
    return None
