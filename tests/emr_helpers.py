"""Helpers of the command-line tests: read each output format back, and shape moto's state.

Parsing is written independently of cloudmesh.emr.printer, so a test that reads
output back checks what a user's script would see.
"""

import ast
import csv
import datetime
import io
import json

import pytest
import yaml

UTC = datetime.timezone.utc
REGION = "us-east-1"

# table and csv columns per kind, as issue 2 lists them
COLUMNS = {
    "cluster": ["Id", "Name", "State", "Reason", "Created", "Hours"],
    "instance": ["Id", "EC2 id", "Group", "State", "Market", "Type", "Private DNS"],
    "step": ["Id", "Name", "State", "Reason", "Created", "Command"],
}
FORMATS = ("table", "csv", "json", "yaml", "dict")

# the filter words: kind -> {word: AWS names}, as issue 2 lists them (not read from the code)
ACTIVE = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING", "TERMINATING"]

MEANING = {
    "cluster status": {
        "start": ["STARTING"],
        "boot": ["BOOTSTRAPPING"],
        "run": ["RUNNING"],
        "wait": ["WAITING"],
        "terminating": ["TERMINATING"],
        "shutdown": ["TERMINATED"],
        "error": ["TERMINATED_WITH_ERRORS"],
        "active": ACTIVE,
    },
    "instance status": {
        "start": ["AWAITING_FULFILLMENT"],
        "provision": ["PROVISIONING"],
        "boot": ["BOOTSTRAPPING"],
        "run": ["RUNNING"],
        "down": ["TERMINATED"],
    },
    "instance type": {
        "master": ["MASTER"],
        "core": ["CORE"],
        "task": ["TASK"],
    },
    "step state": {
        "pending": ["PENDING"],
        "canceling": ["CANCEL_PENDING"],
        "running": ["RUNNING"],
        "completed": ["COMPLETED"],
        "cancelled": ["CANCELLED"],
        "failed": ["FAILED"],
        "interrupted": ["INTERRUPTED"],
    },
}

# every AWS name each filter accepts as itself
AWS_NAMES = {
    "cluster status": ACTIVE + ["TERMINATED", "TERMINATED_WITH_ERRORS"],
    "instance status": ["AWAITING_FULFILLMENT", "PROVISIONING", "BOOTSTRAPPING", "RUNNING",
                        "TERMINATED"],
    "instance type": ["MASTER", "CORE", "TASK"],
    "step state": ["PENDING", "CANCEL_PENDING", "RUNNING", "COMPLETED", "CANCELLED", "FAILED",
                   "INTERRUPTED"],
}


# ---- reading output back -------------------------------------------------------------

def parse_table(text):
    """tabulate's 'simple' table -> (headers, rows); column spans come from the dashes."""
    lines = text.rstrip("\n").split("\n")
    dash_index = next(i for i, line in enumerate(lines) if line and set(line) <= {"-", " "})
    dashes = lines[dash_index]
    spans, start = [], None
    for i, char in enumerate(dashes + " "):
        if char == "-" and start is None:
            start = i
        elif char != "-" and start is not None:
            spans.append((start, i))
            start = None
    # the last column runs to the end of the line
    spans[-1] = (spans[-1][0], None)

    def cut(line):
        return [line[a:b].strip() if b is not None else line[a:].strip() for a, b in spans]

    headers = cut(lines[dash_index - 1])
    return headers, [cut(line) for line in lines[dash_index + 1:]]


def parse_csv(text):
    table = list(csv.reader(io.StringIO(text)))
    return table[0], table[1:]


def parse(text, fmt):
    """Output of one format -> data: records for json/yaml/dict, (headers, rows) otherwise."""
    if fmt == "json":
        return json.loads(text)
    if fmt == "yaml":
        return yaml.safe_load(text)
    if fmt == "dict":
        return ast.literal_eval(text)
    if fmt == "csv":
        return parse_csv(text)
    return parse_table(text)


def as_dicts(headers, rows):
    return [dict(zip(headers, row)) for row in rows]


# ---- what AWS holds, in the shapes output carries ----------------------------------------

def iso(value):
    """A datetime as ISO-8601 in UTC, as json/yaml/dict carry it."""
    return value.astimezone(UTC).isoformat()


def second(value):
    """A datetime as tables and csv show it: ISO-8601 UTC to the second, with Z."""
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def plain(value):
    """A boto3 answer as json carries it: datetimes ISO-8601 UTC, no ResponseMetadata."""
    if isinstance(value, datetime.datetime):
        return iso(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def loaded(value):
    """Parsed yaml with any datetime that yaml made turned back into the ISO string."""
    if isinstance(value, datetime.datetime):
        return iso(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, dict):
        return {k: loaded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [loaded(v) for v in value]
    return value


def created(record):
    return record["Status"]["Timeline"]["CreationDateTime"]


def newest_first(records):
    return sorted(records, key=created, reverse=True)


# ---- moto's EMR state --------------------------------------------------------------------

def backend():
    """moto's in-process EMR backend of the test account and region."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.emr.models import emr_backends

    return emr_backends[DEFAULT_ACCOUNT_ID][REGION]


def run_job_flow(emr, name, core=2, tasks=0, master_type="m5.xlarge", node_type="m5.xlarge",
                 release="emr-7.12.0", protected=False, **extra):
    """A Spark cluster made straight with boto3: MASTER, CORE of ``core``, ``tasks`` TASK groups."""
    groups = [{"Name": "Master", "InstanceRole": "MASTER", "InstanceType": master_type,
               "InstanceCount": 1, "Market": "ON_DEMAND"}]
    if core:
        groups.append({"Name": "Core", "InstanceRole": "CORE", "InstanceType": node_type,
                       "InstanceCount": core, "Market": "ON_DEMAND"})
    for i in range(tasks):
        groups.append({"Name": f"Task {i}", "InstanceRole": "TASK", "InstanceCount": 1,
                       "InstanceType": ("c5.xlarge", "r5.2xlarge")[i % 2],
                       "Market": ("SPOT", "ON_DEMAND")[i % 2]})
    answer = emr.run_job_flow(
        Name=name, ReleaseLabel=release,
        Applications=[{"Name": "Spark"}, {"Name": "Hadoop"}],
        Instances={"InstanceGroups": groups, "KeepJobFlowAliveWhenNoSteps": True,
                   "TerminationProtected": protected},
        JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole",
        VisibleToAllUsers=True, **extra,
    )
    return answer["JobFlowId"]


BASE_TIME = datetime.datetime(2025, 3, 1, 12, 0, 0)


def set_cluster(cluster_id, state=None, minute=None, reason=None):
    """Put a moto cluster into ``state`` and/or give it a distinct creation time."""
    cluster = backend().clusters[cluster_id]
    if state is not None:
        cluster.state = state
    if minute is not None:
        cluster.creation_datetime = BASE_TIME + datetime.timedelta(minutes=minute, seconds=7)
    if reason is not None:
        cluster.last_state_change_reason = reason
    return cluster


def add_steps(emr, cluster_id, names):
    steps = [{"Name": name, "ActionOnFailure": "CONTINUE",
              "HadoopJarStep": {"Jar": "command-runner.jar",
                                "Args": ["spark-submit", f"s3://b/{name}.py", "--n", "1"]}}
             for name in names]
    return emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=steps)["StepIds"]


def set_step(cluster_id, step_id, state=None, minute=None, reason=None):
    for step in backend().clusters[cluster_id].steps:
        if step.id == step_id:
            if state is not None:
                step.state = state
            if minute is not None:
                step.creation_date_time = BASE_TIME + datetime.timedelta(minutes=minute)
            if reason is not None:
                step.last_state_change_reason = reason
            return step
    raise KeyError(step_id)


def set_group(cluster_id, role_or_id, state=None, minute=None):
    """Put the instance group (by role, or by id) into ``state``: moto's instances share it."""
    cluster = backend().clusters[cluster_id]
    for group in cluster.instance_groups:
        if role_or_id in (group.role, group.id):
            if state is not None:
                group.state = state
            if minute is not None:
                group.creation_date_time = BASE_TIME + datetime.timedelta(minutes=minute)
            return group
    raise KeyError(role_or_id)


def all_clusters(emr, **query):
    pages = emr.get_paginator("list_clusters").paginate(**query)
    return [c for page in pages for c in page["Clusters"]]


def field(pairs, *words):
    """The value of the one (label, value) row whose label holds all ``words``, any case."""
    found = [value for label, value in pairs
             if all(word.lower() in str(label).lower() for word in words)]
    assert len(found) == 1, f"{words}: {found}"
    return found[0]


def one_error_line(err):
    """stderr holds exactly one line, an ERROR line, and no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("ERROR: ") and "Traceback" not in err


@pytest.fixture(autouse=True)
def lean_moto(monkeypatch):
    """moto without its 44,000 default AMIs: EMR needs none, and loading them costs
    a third of a second per test. (Import this name into a test module to use it.)"""
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")


# ---- EMR's default roles (every start checks for them) -----------------------------

# EMR's default roles as `aws emr create-default-roles` makes them: (name, trusted service,
# AWS managed policy); the instance profile is named after the EC2 role and holds it
DEFAULT_ROLES = (
    ("EMR_DefaultRole", "elasticmapreduce.amazonaws.com",
     "arn:aws:iam::aws:policy/service-role/AmazonElasticMapReduceRole"),
    ("EMR_EC2_DefaultRole", "ec2.amazonaws.com",
     "arn:aws:iam::aws:policy/service-role/AmazonElasticMapReduceforEC2Role"),
)
PROFILE = "EMR_EC2_DefaultRole"


def make_default_roles(iam, policies=True):
    """The service role and instance profile every start checks for, made with boto3's IAM
    calls as the AWS CLI makes them (names, trust policies, managed policies), where missing.

    ``policies=False`` leaves the managed policies out, for moto in this process: it knows
    them only by loading all of AWS's (about 1.5 s per mock context), and what a start
    checks is that the role and the profile exist."""
    for name, service, policy in DEFAULT_ROLES:
        try:
            iam.get_role(RoleName=name)
            continue
        except iam.exceptions.NoSuchEntityException:
            pass
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({
            "Version": "2008-10-17", "Statement": [{
                "Sid": "", "Effect": "Allow", "Principal": {"Service": service},
                "Action": "sts:AssumeRole"}]}))
        if policies:
            iam.attach_role_policy(RoleName=name, PolicyArn=policy)
    try:
        profile = iam.get_instance_profile(InstanceProfileName=PROFILE)["InstanceProfile"]
    except iam.exceptions.NoSuchEntityException:
        profile = iam.create_instance_profile(InstanceProfileName=PROFILE)["InstanceProfile"]
    if not profile.get("Roles"):
        iam.add_role_to_instance_profile(InstanceProfileName=PROFILE, RoleName=PROFILE)


def remove_default_roles(iam):
    """Remove what make_default_roles (or `cms emr doctor --fix`) made: a new account's IAM."""
    try:
        profile = iam.get_instance_profile(InstanceProfileName=PROFILE)["InstanceProfile"]
    except iam.exceptions.NoSuchEntityException:
        pass
    else:
        for role in profile.get("Roles") or []:
            iam.remove_role_from_instance_profile(InstanceProfileName=PROFILE,
                                                  RoleName=role["RoleName"])
        iam.delete_instance_profile(InstanceProfileName=PROFILE)
    for name in [name for name, _, _ in DEFAULT_ROLES] + ["EMR_AutoScaling_DefaultRole"]:
        try:
            attached = iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
        except iam.exceptions.NoSuchEntityException:
            continue
        for policy in attached:
            iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])
        iam.delete_role(RoleName=name)


MOTO_IAM = {}


def moto_iam(endpoint=None):
    """One boto3 IAM client per endpoint (None: moto in this process), made once: a client
    costs more than the four calls that make the default roles."""
    import boto3

    if endpoint not in MOTO_IAM:
        MOTO_IAM[endpoint] = boto3.session.Session().client(
            "iam", region_name="us-east-1", endpoint_url=endpoint,
            aws_access_key_id="testing", aws_secret_access_key="testing")
    return MOTO_IAM[endpoint]


def reset_moto(moto_server):
    """moto's reset, then EMR's default roles again (every start checks for them)."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset",
                                                  method="POST"), timeout=10).read()
    make_default_roles(moto_iam(moto_server), policies=False)
