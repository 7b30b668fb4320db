"""The five output formats: each parses back to the data it was given.

Records here are in AWS's shapes (as the Provider returns them); the expected
cells are worked out in the test from the records, not by the printer.
"""

import datetime
import re
import shlex

import pytest

from cloudmesh.emr import printer
from cloudmesh.emr.errors import UsageError
from emr_helpers import COLUMNS, FORMATS, as_dicts, field, parse, parse_csv, parse_table

UTC = datetime.timezone.utc
PLUS2 = datetime.timezone(datetime.timedelta(hours=2))
T1 = datetime.datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
T2 = datetime.datetime(2025, 1, 3, 10, 0, 59, 999999, tzinfo=PLUS2)  # 08:00:59Z
T3 = datetime.datetime(2025, 1, 4, 0, 0, 0, tzinfo=UTC)
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

CLUSTERS = [
    {
        "Id": "j-2AXXXXXXGAPLF", "Name": 'word count, "big"',
        "Status": {"State": "WAITING",
                   "StateChangeReason": {"Code": "USER_REQUEST", "Message": "Cluster ready to run steps."},
                   "Timeline": {"CreationDateTime": T2, "ReadyDateTime": T3}},
        "NormalizedInstanceHours": 24,
        "ClusterArn": "arn:aws:elasticmapreduce:us-east-1:123456789012:cluster/j-2AXXXXXXGAPLF",
    },
    {
        "Id": "j-1BYYYYYYYYYYY", "Name": "Spärk ☃",
        "Status": {"State": "TERMINATED_WITH_ERRORS", "StateChangeReason": {},
                   "Timeline": {"CreationDateTime": T1, "EndDateTime": T3}},
        "NormalizedInstanceHours": 0,
    },
]

INSTANCES = [
    {
        "Id": "ci-1", "Ec2InstanceId": "i-0abc", "InstanceGroupId": "ig-1",
        "InstanceGroupType": "MASTER", "Market": "ON_DEMAND", "InstanceType": "m5.xlarge",
        "PrivateDnsName": "ip-10-0-0-1.ec2.internal", "ClusterId": "j-2AXXXXXXGAPLF",
        "Status": {"State": "RUNNING", "Timeline": {"CreationDateTime": T2}},
        "EbsVolumes": [{"Device": "/dev/sda1", "VolumeId": "vol-1"}],
    },
    {
        "Id": "ci-2", "Ec2InstanceId": "i-0def", "InstanceGroupId": "ig-2",
        "InstanceGroupType": "TASK", "Market": "SPOT", "InstanceType": "c5.2xlarge",
        "ClusterId": "j-2AXXXXXXGAPLF",
        "Status": {"State": "PROVISIONING", "Timeline": {"CreationDateTime": T1}},
    },
]

STEPS = [
    {
        "Id": "s-1", "Name": "spark-submit wordcount.py", "ActionOnFailure": "CONTINUE",
        "Config": {"Jar": "command-runner.jar",
                   "Args": ["spark-submit", "s3://bucket/wordcount.py", "--input", "a b.txt"]},
        "Status": {"State": "FAILED",
                   "StateChangeReason": {},
                   "FailureDetails": {"Reason": "Unknown error.", "Message": "exit code 1",
                                      "LogFile": "s3://logs/s-1/stderr.gz"},
                   "Timeline": {"CreationDateTime": T3, "StartDateTime": T3}},
        "ClusterId": "j-2AXXXXXXGAPLF",
    },
    {
        "Id": "s-2", "Name": "copy", "ActionOnFailure": "CONTINUE",
        "Config": {"Jar": "s3://bucket/custom.jar", "Args": ["x", "--y=1"]},
        "Status": {"State": "CANCELLED", "StateChangeReason": {"Message": "cancelled by user"},
                   "Timeline": {"CreationDateTime": T1}},
        "ClusterId": "j-2AXXXXXXGAPLF",
    },
]

ACTIONS = [
    {"Id": "a1", "Action": "stop", "Target": "j-2AXXXXXXGAPLF", "ClusterId": "j-2AXXXXXXGAPLF",
     "Cloud": "aws", "Request": {"ClusterId": "j-2AXXXXXXGAPLF"}, "Response": {}, "Time": T1},
    {"Id": "a2", "Action": "stop", "Target": "j-PROTECTED", "ClusterId": "j-PROTECTED",
     "Cloud": "aws", "Request": {}, "Response": {}, "Time": T2,
     "Error": {"Type": "Conflict", "Message": "cluster j-PROTECTED is termination-protected"}},
]

RECORDS = {"cluster": CLUSTERS, "instance": INSTANCES, "step": STEPS, "action": ACTIONS}


def same(parsed, original, where="record"):
    """``parsed`` (read back from output) carries ``original``; datetimes as ISO-8601."""
    if isinstance(original, datetime.datetime):
        if isinstance(parsed, datetime.datetime):  # yaml may hand a timestamp back as one
            assert parsed == original, where
            return
        assert isinstance(parsed, str), f"{where}: {parsed!r} is not an ISO-8601 string"
        back = datetime.datetime.fromisoformat(parsed)
        assert back.tzinfo is not None, f"{where}: {parsed} has no time zone"
        assert back == original, where
    elif isinstance(original, dict):
        assert isinstance(parsed, dict), where
        assert set(parsed) == set(original), where
        for key in original:
            same(parsed[key], original[key], f"{where}.{key}")
    elif isinstance(original, (list, tuple)):
        assert isinstance(parsed, list) and len(parsed) == len(original), where
        for i, (p, o) in enumerate(zip(parsed, original)):
            same(p, o, f"{where}[{i}]")
    else:
        assert parsed == original and type(parsed) is type(original), f"{where}: {parsed!r}"


def z(value):
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expected_rows(kind):
    """The table/csv cells issue 2 asks for, worked out from the records."""
    if kind == "cluster":
        return [[c["Id"], c["Name"], c["Status"]["State"],
                 c["Status"]["StateChangeReason"].get("Message", ""),
                 z(c["Status"]["Timeline"]["CreationDateTime"]),
                 str(c["NormalizedInstanceHours"])] for c in CLUSTERS]
    if kind == "instance":
        return [[i["Id"], i["Ec2InstanceId"], i["InstanceGroupType"], i["Status"]["State"],
                 i["Market"], i["InstanceType"], i.get("PrivateDnsName", "")] for i in INSTANCES]
    if kind == "step":
        return [
            ["s-1", "spark-submit wordcount.py", "FAILED", "<failure>", z(T3),
             "spark-submit s3://bucket/wordcount.py --input 'a b.txt'"],
            ["s-2", "copy", "CANCELLED", "cancelled by user", z(T1),
             "s3://bucket/custom.jar x --y=1"],
        ]
    raise KeyError(kind)


# ---- json, yaml, dict: whole records -------------------------------------------------------

@pytest.mark.parametrize("fmt", ["json", "yaml", "dict"])
@pytest.mark.parametrize("kind", list(RECORDS))
def test_whole_formats_parse_back_to_the_records(kind, fmt):
    text = printer.render(RECORDS[kind], kind, fmt)
    same(parse(text, fmt), RECORDS[kind])


@pytest.mark.parametrize("fmt", ["json", "yaml", "dict"])
def test_one_record_parses_back(fmt):
    text = printer.render_one(CLUSTERS[0], fmt, printer.describe_rows(CLUSTERS[0]))
    same(parse(text, fmt), CLUSTERS[0])


def test_json_datetimes_are_iso_8601_strings():
    data = parse(printer.render(CLUSTERS, "cluster", "json"), "json")
    for record, original in zip(data, CLUSTERS):
        text = record["Status"]["Timeline"]["CreationDateTime"]
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)$", text), text
        assert datetime.datetime.fromisoformat(text) == original["Status"]["Timeline"][
            "CreationDateTime"]


def test_dict_is_a_python_literal_without_objects():
    text = printer.render(STEPS, "step", "dict")
    assert "datetime" not in text
    assert parse(text, "dict")[0]["Config"]["Args"][-1] == "a b.txt"


def test_yaml_is_safe_yaml():
    text = printer.render(ACTIONS, "action", "yaml")
    assert "!!python" not in text
    same(parse(text, "yaml"), ACTIONS)


# ---- table and csv: the columns of issue 2 ---------------------------------------------------

@pytest.mark.parametrize("fmt", ["table", "csv"])
@pytest.mark.parametrize("kind", list(COLUMNS))
def test_columns_are_exactly_those_of_the_issue(kind, fmt):
    headers, rows = parse(printer.render(RECORDS[kind], kind, fmt), fmt)
    assert headers == COLUMNS[kind]
    assert len(rows) == len(RECORDS[kind])


@pytest.mark.parametrize("fmt", ["table", "csv"])
@pytest.mark.parametrize("kind", list(COLUMNS))
def test_cells_carry_the_records(kind, fmt):
    records = RECORDS[kind]
    if fmt == "table" and kind == "cluster":
        records = records[:1]  # a table is for eyes: keep wide characters to csv
    headers, rows = parse(printer.render(records, kind, fmt), fmt)
    expected = expected_rows(kind)[:len(records)]
    if kind == "step":  # a failed step's reason: what failed and why, in one cell
        reason = rows[0][3]
        assert "Unknown error." in reason and "exit code 1" in reason, reason
        rows[0][3] = "<failure>"
    assert rows == expected


def test_csv_keeps_commas_and_quotes():
    headers, rows = parse_csv(printer.render(CLUSTERS, "cluster", "csv"))
    assert rows[0][1] == 'word count, "big"'
    assert rows[1][1] == "Spärk ☃"


def test_rows_keep_the_order_given():
    for fmt in ("table", "csv"):
        _, rows = parse(printer.render(list(reversed(INSTANCES)), "instance", fmt), fmt)
        assert [row[0] for row in rows] == ["ci-2", "ci-1"]
    assert [r["Id"] for r in parse(printer.render(list(reversed(STEPS)), "step", "json"),
                                   "json")] == ["s-2", "s-1"]


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_times_are_iso_8601_utc_to_the_second(fmt):
    headers, rows = parse(printer.render(CLUSTERS[:1], "cluster", fmt), fmt)
    created = as_dicts(headers, rows)[0]["Created"]
    assert ISO_Z.match(created), created
    # 10:00:59.999999+02:00 is 08:00:59Z: converted to UTC, cut (not rounded) to the second
    assert created == "2025-01-03T08:00:59Z"
    assert datetime.datetime.fromisoformat(created.replace("Z", "+00:00")) == T2.replace(
        microsecond=0)


def test_step_command_is_a_shell_line_of_the_args():
    _, rows = parse_csv(printer.render(STEPS, "step", "csv"))
    assert shlex.split(rows[0][5]) == STEPS[0]["Config"]["Args"]
    assert shlex.split(rows[1][5]) == [STEPS[1]["Config"]["Jar"], *STEPS[1]["Config"]["Args"]]


def test_action_table_says_what_failed():
    headers, rows = parse_csv(printer.render(ACTIONS, "action", "csv"))
    table = as_dicts(headers, rows)
    assert [row["Target"] for row in table] == ["j-2AXXXXXXGAPLF", "j-PROTECTED"]
    assert "termination-protected" in table[1]["Result"]
    assert "termination-protected" not in table[0]["Result"]
    assert ISO_Z.match(table[0]["Time"])


@pytest.mark.parametrize("kind", list(RECORDS))
def test_no_records(kind):
    assert parse(printer.render([], kind, "json"), "json") == []
    assert parse(printer.render([], kind, "dict"), "dict") == []
    assert parse(printer.render([], kind, "yaml"), "yaml") == []
    headers, rows = parse(printer.render([], kind, "csv"), "csv")
    assert rows == [] and headers == [h for h, _ in printer.COLUMNS[kind]]
    if kind in COLUMNS:
        assert headers == COLUMNS[kind]
        headers, rows = parse_table(printer.render([], kind, "table"))
        assert headers == COLUMNS[kind] and rows == []


def test_missing_fields_are_empty_cells_not_none():
    bare = [{"Id": "j-BARE", "Status": {}}]
    _, rows = parse_csv(printer.render(bare, "cluster", "csv"))
    assert rows == [["j-BARE", "", "", "", "", ""]]
    _, rows = parse_table(printer.render(bare, "cluster", "table"))
    assert rows == [["j-BARE", "", "", "", "", ""]]


# ---- describe: the two-column table ------------------------------------------------------------

CLUSTER = {
    "Id": "j-2AXXXXXXGAPLF", "Name": "analytics", "Region": "eu-west-1",
    "Status": {"State": "TERMINATED", "StateChangeReason": {"Code": "USER_REQUEST",
                                                           "Message": "Terminated by user"},
               "Timeline": {"CreationDateTime": T1, "ReadyDateTime": T2, "EndDateTime": T3}},
    "Ec2InstanceAttributes": {"Ec2AvailabilityZone": "eu-west-1b"},
    "ReleaseLabel": "emr-7.12.0",
    "Applications": [{"Name": "Spark", "Version": "3.5.5"}, {"Name": "Hadoop", "Version": "3.4.1"}],
    "InstanceGroups": [
        {"Id": "ig-1", "InstanceGroupType": "MASTER", "InstanceType": "m5.xlarge",
         "RequestedInstanceCount": 1, "RunningInstanceCount": 1},
        {"Id": "ig-2", "InstanceGroupType": "CORE", "InstanceType": "r5.2xlarge",
         "RequestedInstanceCount": 4, "RunningInstanceCount": 3},
    ],
    "MasterPublicDnsName": "ec2-1-2-3-4.eu-west-1.compute.amazonaws.com",
    "NormalizedInstanceHours": 96,
    "LogUri": "s3://logs/emr/",
    "TerminationProtected": True,
    "AutoTerminate": False,
}


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_describe_is_a_two_column_table_of_what_a_user_asks(fmt):
    text = printer.render_one(CLUSTER, fmt, printer.describe_rows(CLUSTER))
    headers, rows = parse(text, fmt)
    assert len(headers) == 2
    assert all(len(row) == 2 for row in rows)
    pairs = [tuple(row) for row in rows]
    assert field(pairs, "id") == "j-2AXXXXXXGAPLF"
    assert field(pairs, "state") == "TERMINATED"
    assert field(pairs, "reason") == "Terminated by user"
    assert field(pairs, "region") == "eu-west-1"
    assert field(pairs, "zone") == "eu-west-1b"
    assert field(pairs, "release") == "emr-7.12.0"
    apps = field(pairs, "applications")
    assert "Spark 3.5.5" in apps and "Hadoop 3.4.1" in apps
    groups = [part.strip() for part in field(pairs, "instances").split(";")]
    assert len(groups) == 2
    for part, (role, kind, count) in zip(groups, [("MASTER", "m5.xlarge", "1"),
                                                  ("CORE", "r5.2xlarge", "4")]):
        assert role in part and kind in part and count in part, part
    assert field(pairs, "dns") == CLUSTER["MasterPublicDnsName"]
    assert field(pairs, "hours") == "96"
    assert field(pairs, "created") == z(T1)
    assert field(pairs, "ready") == z(T2)
    assert field(pairs, "ended") == z(T3)
    assert field(pairs, "log") == "s3://logs/emr/"
    assert field(pairs, "protect") == "True"
    assert field(pairs, "auto", "terminat") == "False"


def test_describe_lists_the_groups_master_first():
    shuffled = {**CLUSTER, "InstanceGroups": [
        {"Id": "ig-3", "InstanceGroupType": "TASK", "InstanceType": "c5.xlarge",
         "RequestedInstanceCount": 2, "RunningInstanceCount": 0},
        *reversed(CLUSTER["InstanceGroups"])]}
    groups = field(printer.describe_rows(shuffled), "instances").split(";")
    assert [part.split(":")[0].strip() for part in groups] == ["MASTER", "CORE", "TASK"]
    assert "c5.xlarge" in groups[2] and "2" in groups[2]


def test_describe_counts_a_fleet_s_on_demand_and_spot_capacity():
    fleets = {**CLUSTER, "InstanceGroups": None, "InstanceFleets": [
        {"Id": "if-2", "InstanceFleetType": "CORE", "TargetOnDemandCapacity": 2,
         "TargetSpotCapacity": 4, "ProvisionedOnDemandCapacity": 2, "ProvisionedSpotCapacity": 1,
         "InstanceTypeSpecifications": [{"InstanceType": "r5.xlarge"},
                                        {"InstanceType": "r5a.xlarge"}]},
        {"Id": "if-1", "InstanceFleetType": "MASTER", "TargetOnDemandCapacity": 1,
         "ProvisionedOnDemandCapacity": 1,
         "InstanceTypeSpecifications": [{"InstanceType": "m5.xlarge"}]}]}
    master, core = [part.strip() for part in
                    field(printer.describe_rows(fleets), "instances").split(";")]
    assert master.startswith("MASTER") and "1/1" in master and "m5.xlarge" in master
    assert core.startswith("CORE") and "3/6" in core
    assert "r5.xlarge" in core and "r5a.xlarge" in core


def test_describe_of_a_young_cluster_has_empty_cells_for_what_is_not_there_yet():
    young = {"Id": "j-YOUNG", "Name": "y", "Status": {"State": "STARTING", "Timeline": {
        "CreationDateTime": T1}}}
    pairs = printer.describe_rows(young)
    assert field(pairs, "ended") == ""
    assert field(pairs, "dns") == ""
    assert "None" not in printer.render_one(young, "table", pairs)


# ---- the format word ----------------------------------------------------------------------------

def test_each_format_is_accepted_in_any_case():
    for fmt in FORMATS:
        assert printer.check_format(fmt) == fmt
        assert printer.check_format(fmt.upper()) == fmt
    assert printer.check_format(None) == "table"


@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_format_is_not_the_default(empty):
    with pytest.raises(UsageError, match="--format"):
        printer.check_format(empty)


def test_an_unknown_format_names_itself_and_the_five():
    with pytest.raises(UsageError) as caught:
        printer.check_format("xml")
    assert caught.value.exit_code == 2
    assert "'xml'" in caught.value.message
    for fmt in FORMATS:
        assert fmt in caught.value.message
    with pytest.raises(UsageError):
        printer.render(CLUSTERS, "cluster", "xml")
