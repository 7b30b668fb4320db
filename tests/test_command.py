"""`cms emr` in this process against moto: what is printed is what AWS holds, and is recorded.

Every expectation is read from AWS through boto3 (what moto holds), and from the
database through pymongo; output is parsed back the way a user's script would.
"""

import datetime
import json
import os
import re
import shlex
import socket

import pytest

from emr_helpers import (  # noqa: F401  lean_moto: autouse
    ACTIVE, AWS_NAMES, BASE_TIME, COLUMNS, FORMATS, MEANING, add_steps, all_clusters, as_dicts,
    backend, field, lean_moto, loaded, one_error_line, parse, plain, run_job_flow, second, set_cluster,
    set_step,
)

UTC = datetime.timezone.utc
CLUSTER_STATES = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING", "TERMINATING", "TERMINATED",
                  "TERMINATED_WITH_ERRORS"]
STEP_STATES = ["PENDING", "CANCEL_PENDING", "RUNNING", "COMPLETED", "CANCELLED", "FAILED",
               "INTERRUPTED"]
# instance group (by name) -> the state its instances are in, and its creation minute
GROUPS = {"Master": ("RUNNING", 2), "Core": ("BOOTSTRAPPING", 0),
          "Task 0": ("AWAITING_FULFILLMENT", 4), "Task 1": ("PROVISIONING", 1),
          "Task 2": ("TERMINATED", 3)}
CLUSTER_ID = re.compile(r"^j-[A-Z0-9]+$")


# ---- fixtures: what moto holds ----------------------------------------------------------------

@pytest.fixture
def emr(aws):
    import boto3

    return boto3.client("emr", region_name="us-east-1")


@pytest.fixture
def s3(aws):
    import boto3

    return boto3.client("s3", region_name="us-east-1")


@pytest.fixture
def fleet(emr):
    """One cluster in each state, created a minute apart, not in the order they were made."""
    minutes = [3, 0, 6, 1, 5, 2, 4]
    ids = {}
    for state, minute in zip(CLUSTER_STATES, minutes):
        cid = run_job_flow(emr, f"fleet {state.lower()}", core=1)
        cluster = set_cluster(cid, state=state, minute=minute,
                              reason="Steps failed." if state == "TERMINATED_WITH_ERRORS" else None)
        cluster.normalized_instance_hours = minute * 8
        ids[state] = cid
    return ids


@pytest.fixture
def busy(emr):
    """A cluster with MASTER, CORE (2) and three TASK groups in five instance states, and
    seven steps, one in each step state, created in shuffled order."""
    cid = run_job_flow(emr, "busy", core=2, tasks=3)
    for group in backend().clusters[cid].instance_groups:
        state, minute = GROUPS[group.name]
        group.state = state
        group.creation_date_time = BASE_TIME + datetime.timedelta(minutes=minute)
    step_ids = add_steps(emr, cid, [f"step {state.lower()}" for state in STEP_STATES])
    for step_id, state, minute in zip(step_ids, STEP_STATES, [5, 0, 6, 2, 4, 1, 3]):
        set_step(cid, step_id, state=state, minute=minute,
                 reason="Step failed with exit code 1" if state == "FAILED" else None)
    return cid


def created(record):
    value = record["Status"]["Timeline"]["CreationDateTime"]
    return datetime.datetime.fromisoformat(value) if isinstance(value, str) else value


def aws_clusters(emr):
    return sorted(all_clusters(emr), key=created, reverse=True)


def aws_instances(emr, cid):
    groups = {g["Id"]: g["InstanceGroupType"]
              for g in emr.list_instance_groups(ClusterId=cid)["InstanceGroups"]}
    pages = emr.get_paginator("list_instances").paginate(ClusterId=cid)
    instances = [{**i, "InstanceGroupType": groups[i["InstanceGroupId"]], "ClusterId": cid}
                 for page in pages for i in page["Instances"]]
    return sorted(instances, key=created, reverse=True)


def aws_steps(emr, cid):
    pages = emr.get_paginator("list_steps").paginate(ClusterId=cid)
    steps = [{**s, "ClusterId": cid} for page in pages for s in page["Steps"]]
    return sorted(steps, key=created, reverse=True)


def aws_cluster(emr, cid):
    cluster = emr.describe_cluster(ClusterId=cid)["Cluster"]
    cluster["InstanceGroups"] = emr.list_instance_groups(ClusterId=cid)["InstanceGroups"]
    cluster["Region"] = "us-east-1"
    return cluster


def newest_first(records):
    times = [created(r) for r in records]
    return all(a >= b for a, b in zip(times, times[1:]))


def cells(kind, record):
    """The table/csv row issue 2 asks for, from a boto3 record."""
    status = record["Status"]
    if kind == "cluster":
        return [record["Id"], record["Name"], status["State"],
                status.get("StateChangeReason", {}).get("Message", ""),
                second(status["Timeline"]["CreationDateTime"]),
                str(record["NormalizedInstanceHours"])]
    if kind == "instance":
        return [record["Id"], record["Ec2InstanceId"], record["InstanceGroupType"],
                status["State"], record["Market"], record["InstanceType"],
                record["PrivateDnsName"]]
    return [record["Id"], record["Name"], status["State"],
            status.get("StateChangeReason", {}).get("Message", ""),
            second(status["Timeline"]["CreationDateTime"]),
            shlex.join(record["Config"]["Args"])]


def check_listing(text, fmt, kind, expected):
    """Output of one format holds exactly the expected boto3 records, newest first."""
    if fmt in ("json", "yaml", "dict"):
        records = loaded(parse(text, fmt))
        assert isinstance(records, list)
        assert [r["Id"] for r in records] == [e["Id"] for e in expected] or (
            sorted(r["Id"] for r in records) == sorted(e["Id"] for e in expected)
            and newest_first(records))
        by_id = {r["Id"]: r for r in records}
        assert len(by_id) == len(records)
        assert by_id == {e["Id"]: plain(e) for e in expected}
        return [r["Id"] for r in records]
    headers, rows = parse(text, fmt)
    assert headers == COLUMNS[kind]
    want = {e["Id"]: cells(kind, e) for e in expected}
    assert len(rows) == len(expected)
    for row in rows:
        if kind == "step":  # the command: a shell line of the step's arguments
            args = next(e for e in expected if e["Id"] == row[0])["Config"]["Args"]
            assert shlex.split(row[5]) == args
            row = row[:5] + [shlex.join(args)]
        assert row == want[row[0]]
    order = [row[0] for row in rows]
    times = [next(e for e in expected if e["Id"] == i) for i in order]
    assert newest_first(times)
    return order


# ---- list and describe, each format, compared with AWS ----------------------------------------

def test_list_clusters(cms, emr, fleet, cm, subtests):
    for fmt in FORMATS:
        with subtests.test(format=fmt):
            list_clusters_in(cms, emr, fleet, cm, fmt)


def list_clusters_in(cms, emr, fleet, cm, fmt):
    result = cms("list", "clusters", f"--format={fmt}")
    assert result.code == 0, result.err
    assert result.err == ""
    expected = aws_clusters(emr)
    order = check_listing(result.out, fmt, "cluster", expected)
    # distinct creation times: the order is exactly newest first
    assert order == [c["Id"] for c in expected]
    assert order[0] == fleet["RUNNING"] and order[-1] == fleet["BOOTSTRAPPING"]
    docs = cm.docs("aws", "cluster")
    assert sorted(d["_id"] for d in docs) == sorted(f"aws/cluster/{i}" for i in order)


def test_list_instances(cms, emr, busy, cm, subtests):
    for fmt in FORMATS:
        with subtests.test(format=fmt):
            list_instances_in(cms, emr, busy, cm, fmt)


def list_instances_in(cms, emr, busy, cm, fmt):
    result = cms("list", "instances", busy, f"--format={fmt}")
    assert result.code == 0, result.err
    expected = aws_instances(emr, busy)
    assert len(expected) == 6
    order = check_listing(result.out, fmt, "instance", expected)
    docs = cm.docs("aws", "instance")
    assert sorted(d["_id"] for d in docs) == sorted(f"aws/instance/{i}" for i in order)
    assert {d["cm"]["cluster"] for d in docs} == {busy}


def test_list_steps(cms, emr, busy, cm, subtests):
    for fmt in FORMATS:
        with subtests.test(format=fmt):
            list_steps_in(cms, emr, busy, cm, fmt)


def list_steps_in(cms, emr, busy, cm, fmt):
    result = cms("list", "steps", busy, f"--format={fmt}")
    assert result.code == 0, result.err
    expected = aws_steps(emr, busy)
    assert len(expected) == 7
    order = check_listing(result.out, fmt, "step", expected)
    assert order == [s["Id"] for s in expected]
    docs = cm.docs("aws", "step")
    assert sorted(d["_id"] for d in docs) == sorted(f"aws/step/{i}" for i in order)
    assert {d["cm"]["cluster"] for d in docs} == {busy}


def test_describe(cms, emr, busy, cm, subtests):
    for fmt in FORMATS:
        with subtests.test(format=fmt):
            describe_in(cms, emr, busy, cm, fmt)


def describe_in(cms, emr, busy, cm, fmt):
    result = cms("describe", busy, f"--format={fmt}")
    assert result.code == 0, result.err
    expected = aws_cluster(emr, busy)
    if fmt in ("json", "yaml", "dict"):
        assert loaded(parse(result.out, fmt)) == plain(expected)
    else:
        headers, rows = parse(result.out, fmt)
        assert len(headers) == 2 and all(len(row) == 2 for row in rows)
        pairs = [tuple(row) for row in rows]
        assert field(pairs, "id") == busy
        assert field(pairs, "name") == "busy"
        assert field(pairs, "state") == expected["Status"]["State"]
        assert field(pairs, "region") == "us-east-1"
        assert field(pairs, "zone") == expected["Ec2InstanceAttributes"]["Ec2AvailabilityZone"]
        assert field(pairs, "release") == "emr-7.12.0"
        assert "Spark" in field(pairs, "applications")
        assert "Hadoop" in field(pairs, "applications")
        assert field(pairs, "dns") == expected["MasterPublicDnsName"]
        assert field(pairs, "created") == second(expected["Status"]["Timeline"][
            "CreationDateTime"])
        assert field(pairs, "protect") == "False"
        assert field(pairs, "auto", "terminat") == "False"
        groups = field(pairs, "instances").split(";")
        assert len(groups) == 5
        for group in expected["InstanceGroups"]:
            assert any(group["InstanceGroupType"] in part and group["InstanceType"] in part
                       and str(group["RequestedInstanceCount"]) in part for part in groups)
    doc, = cm.docs("aws", "cluster")
    assert doc["_id"] == f"aws/cluster/{busy}"
    assert len(doc["InstanceGroups"]) == 5


def test_pagination_past_a_hundred_clusters(cms, emr, cm):
    made = {run_job_flow(emr, f"many {i}", core=0) for i in range(105)}
    assert "Marker" in emr.list_clusters()  # more than one page at AWS
    result = cms("list", "clusters", "--format=csv")
    assert result.code == 0, result.err
    headers, rows = parse(result.out, "csv")
    assert len(rows) == 105
    assert {row[0] for row in rows} == made == {c["Id"] for c in all_clusters(emr)}
    listed = json.loads(cms("list", "clusters", "--format=json", "--status=wait").out)
    assert {c["Id"] for c in listed} == made
    assert len(cm.docs("aws", "cluster")) == 105


def test_no_clusters_is_an_empty_listing(cms, aws):
    assert json.loads(cms("list", "clusters", "--format=json").out) == []
    headers, rows = parse(cms("list", "clusters", "--format=csv").out, "csv")
    assert headers == COLUMNS["cluster"] and rows == []


def test_describe_an_unknown_cluster(cms, aws):
    result = cms("describe", "j-NOSUCHCLUSTER1")
    assert result.code == 1
    assert one_error_line(result.err), result.err
    assert "j-NOSUCHCLUSTER1" in result.err
    assert result.out == ""


# ---- every filter word, end to end -------------------------------------------------------------

def cluster_cases():
    cases = [([word], states) for word, states in MEANING["cluster status"].items()]
    cases += [([name.lower()], [name]) for name in AWS_NAMES["cluster status"]]
    cases += [(["all"], CLUSTER_STATES), ([], CLUSTER_STATES), (["ACTIVE"], ACTIVE),
              (["wait", "run"], ["WAITING", "RUNNING"]),
              (["shutdown,error"], ["TERMINATED", "TERMINATED_WITH_ERRORS"]),
              (["start,Terminated_With_Errors", "boot"],
               ["STARTING", "TERMINATED_WITH_ERRORS", "BOOTSTRAPPING"])]
    return cases


def test_cluster_status_filter(cms, emr, fleet, cm, subtests):
    for words, states in cluster_cases():
        with subtests.test(status=words):
            cluster_status_filter(cms, emr, cm, words, states)


def cluster_status_filter(cms, emr, cm, words, states):
    cm.db["aws-emr-cluster"].drop()
    result = cms("list", "clusters", *[f"--status={w}" for w in words], "--format=json")
    assert result.code == 0, result.err
    listed = json.loads(result.out)
    expected = [c for c in aws_clusters(emr) if c["Status"]["State"] in states]
    assert expected
    assert [c["Id"] for c in listed] == [c["Id"] for c in expected]
    assert sorted(d["Id"] for d in cm.docs("aws", "cluster")) == sorted(c["Id"] for c in listed)


def instance_cases():
    cases = [([f"--status={w}"], states, None) for w, states in MEANING["instance status"].items()]
    cases += [([f"--status={n.title()}"], [n], None) for n in AWS_NAMES["instance status"]]
    cases += [([f"--type={w}"], None, groups) for w, groups in MEANING["instance type"].items()]
    cases += [(["--type=CORE"], None, ["CORE"]),
              (["--type=core,task"], None, ["CORE", "TASK"]),
              (["--type=master", "--type=task"], None, ["MASTER", "TASK"]),
              (["--status=run", "--type=master"], ["RUNNING"], ["MASTER"]),
              (["--status=down", "--type=task"], ["TERMINATED"], ["TASK"]),
              (["--status=start,provision", "--status=boot"],
               ["AWAITING_FULFILLMENT", "PROVISIONING", "BOOTSTRAPPING"], None),
              (["--status=all", "--type=all"], None, None)]
    return cases


def test_instance_filters(cms, emr, busy, subtests):
    """moto ignores InstanceStates: the client's own check is what this sees."""
    for options, states, groups in instance_cases():
        with subtests.test(options=options):
            instance_filter(cms, emr, busy, options, states, groups)


def instance_filter(cms, emr, busy, options, states, groups):
    result = cms("list", "instances", busy, *options, "--format=json")
    assert result.code == 0, result.err
    listed = json.loads(result.out)
    expected = [i for i in aws_instances(emr, busy)
                if (states is None or i["Status"]["State"] in states)
                and (groups is None or i["InstanceGroupType"] in groups)]
    assert expected
    assert sorted(i["Id"] for i in listed) == sorted(i["Id"] for i in expected)
    assert newest_first(listed)
    assert all(i["InstanceGroupType"] in (groups or ["MASTER", "CORE", "TASK"]) for i in listed)


def step_cases():
    cases = [([w], states) for w, states in MEANING["step state"].items()]
    cases += [([n.lower()], [n]) for n in AWS_NAMES["step state"]]
    cases += [(["all"], STEP_STATES), (["failed", "cancelled"], ["FAILED", "CANCELLED"]),
              (["pending,Running,interrupted"], ["PENDING", "RUNNING", "INTERRUPTED"])]
    return cases


def test_step_state_filter(cms, emr, busy, subtests):
    for words, states in step_cases():
        with subtests.test(state=words):
            step_state_filter(cms, emr, busy, words, states)


def step_state_filter(cms, emr, busy, words, states):
    result = cms("list", "steps", busy, *[f"--state={w}" for w in words], "--format=json")
    assert result.code == 0, result.err
    listed = json.loads(result.out)
    expected = [s for s in aws_steps(emr, busy) if s["Status"]["State"] in states]
    assert expected
    assert [s["Id"] for s in listed] == [s["Id"] for s in expected]


class IgnoredFilter:
    """An endpoint that ignores a filter: boto3's own event hook sees the parameters each
    call sends, keeps them, and takes ``key`` out before the request is made."""

    def __init__(self, client, operation, key):
        self.key, self.sent = key, []
        client.meta.events.register(f"provide-client-params.emr.{operation}", self)

    def __call__(self, params, **_):
        self.sent.append(dict(params))
        return {k: v for k, v in params.items() if k != self.key}


LISTINGS = [  # (operation, filter parameter, method, its keyword, words, AWS names)
    ("ListClusters", "ClusterStates", "list_clusters", "status", ["wait", "error"],
     ["WAITING", "TERMINATED_WITH_ERRORS"]),
    ("ListInstances", "InstanceStates", "list_instances", "status", ["run", "start"],
     ["RUNNING", "AWAITING_FULFILLMENT"]),
    ("ListInstances", "InstanceGroupTypes", "list_instances", "types", ["core"], ["CORE"]),
    ("ListSteps", "StepStates", "list_steps", "state", ["failed", "pending"],
     ["FAILED", "PENDING"]),
]


@pytest.mark.parametrize("operation,key,method,keyword,words,names", LISTINGS,
                         ids=[f"{row[0]}.{row[1]}" for row in LISTINGS])
def test_filters_go_to_aws_and_are_checked_again(emr, fleet, busy, cm, operation, key, method,
                                                 keyword, words, names):
    """Each page asks AWS for the states wanted; what an endpoint sends regardless is
    dropped here."""
    from cloudmesh.emr.api.provider import Provider

    provider = Provider()
    ignored = IgnoredFilter(provider.client("emr"), operation, key)
    args = [] if method == "list_clusters" else [busy]
    records = getattr(provider, method)(*args, **{keyword: words})
    assert ignored.sent and all(sorted(call[key]) == sorted(names) for call in ignored.sent)
    found = [r["InstanceGroupType"] if key == "InstanceGroupTypes" else r["Status"]["State"]
             for r in records]
    assert records and set(found) <= set(names)
    everything = getattr(Provider(), method)(*args)
    assert len(everything) > len(records)  # the endpoint did send more than was wanted


@pytest.mark.parametrize("words,sent", [(["core"], {"InstanceFleetType": "CORE"}),
                                         (["core", "task"], {})], ids=["one", "two"])
def test_type_filter_of_an_instance_fleet_cluster(emr, busy, cm, words, sent):
    """A cluster of instance fleets takes InstanceFleetType (one type), not
    InstanceGroupTypes; several types are filtered here alone. (moto has no fleets: its
    answer to DescribeCluster is made to say INSTANCE_FLEET.)"""
    from cloudmesh.emr.api.provider import Provider

    provider = Provider()
    client = provider.client("emr")

    def as_fleet(parsed, **_):
        parsed["Cluster"]["InstanceCollectionType"] = "INSTANCE_FLEET"

    client.meta.events.register("after-call.emr.DescribeCluster", as_fleet)
    calls = []
    client.meta.events.register("provide-client-params.emr.ListInstances",
                                lambda params, **_: calls.append(dict(params)))
    records = provider.list_instances(busy, types=words)
    assert calls and all("InstanceGroupTypes" not in call for call in calls)
    assert all({k: call.get(k) for k in sent} == sent for call in calls)
    wanted = {word.upper() for word in words}
    assert records and {r["InstanceGroupType"] for r in records} == wanted


def test_every_page_of_steps(cms, emr, cm):
    cid = run_job_flow(emr, "long")
    made = [step for i in range(3)
            for step in add_steps(emr, cid, [f"s{i}.{j}" for j in range(25)])]
    assert "Marker" in emr.list_steps(ClusterId=cid)  # more than one page at AWS
    listed = json.loads(cms("list", "steps", cid, "--format=json").out)
    assert sorted(s["Id"] for s in listed) == sorted(made)
    assert len(cm.docs("aws", "step")) == 75


# ---- start ----------------------------------------------------------------------------------------

def groups_of(emr, cid):
    return {g["InstanceGroupType"]: (g["InstanceType"], g["RequestedInstanceCount"])
            for g in emr.list_instance_groups(ClusterId=cid)["InstanceGroups"]}


def test_start_with_the_defaults(cms, emr, cm):
    result = cms("start", "sparky")
    assert result.code == 0, result.err
    assert result.err == ""
    cid = result.out.strip()
    assert CLUSTER_ID.match(cid) and result.out == cid + "\n"
    cluster = emr.describe_cluster(ClusterId=cid)["Cluster"]
    assert cluster["Name"] == "sparky"
    assert {a["Name"] for a in cluster["Applications"]} == {"Spark", "Hadoop"}
    assert cluster["ServiceRole"] == "EMR_DefaultRole"
    assert cluster["Ec2InstanceAttributes"]["IamInstanceProfile"] == "EMR_EC2_DefaultRole"
    assert cluster["VisibleToAllUsers"] is True
    assert cluster["AutoTerminate"] is False
    assert cluster["TerminationProtected"] is False
    assert re.match(r"^emr-7\.\d+\.\d+$", cluster["ReleaseLabel"])
    flow = emr.describe_job_flows(JobFlowIds=[cid])["JobFlows"][0]
    assert flow["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    assert groups_of(emr, cid) == {"MASTER": ("m5.xlarge", 1), "CORE": ("m5.xlarge", 2)}
    action, = cm.docs("aws", "action")
    assert action["Action"] == "start" and action["Target"] == cid
    assert action["ClusterId"] == cid and action["cm"]["cluster"] == cid
    assert action["Response"]["JobFlowId"] == cid
    assert action["Request"]["Count"] == 3


def test_start_with_options(cms, emr):
    result = cms("start", "big one", "--master=m5.2xlarge", "--node=c5.xlarge", "--count=5",
                 "--release=emr-7.1.0")
    assert result.code == 0, result.err
    cid = result.out.strip()
    assert emr.describe_cluster(ClusterId=cid)["Cluster"]["ReleaseLabel"] == "emr-7.1.0"
    assert emr.describe_cluster(ClusterId=cid)["Cluster"]["Name"] == "big one"
    assert groups_of(emr, cid) == {"MASTER": ("m5.2xlarge", 1), "CORE": ("c5.xlarge", 4)}


def test_start_takes_its_defaults_from_cloudmesh_yaml(cms, emr, cm):
    cm.write(emr={"default": {"master": "r5.xlarge", "node": "c5.2xlarge", "count": 4,
                              "release": "emr-7.2.0"}})
    cid = cms("start", "configured").out.strip()
    assert emr.describe_cluster(ClusterId=cid)["Cluster"]["ReleaseLabel"] == "emr-7.2.0"
    assert groups_of(emr, cid) == {"MASTER": ("r5.xlarge", 1), "CORE": ("c5.2xlarge", 3)}
    # the command line still wins over the file
    cid = cms("start", "overridden", "--count=2", "--node=m5.xlarge").out.strip()
    assert groups_of(emr, cid) == {"MASTER": ("r5.xlarge", 1), "CORE": ("m5.xlarge", 1)}


def test_start_with_count_one_warns_of_no_core_nodes(cms, emr):
    result = cms("start", "alone", "--count=1")
    assert result.code == 0, result.err
    cid = result.out.strip()
    assert CLUSTER_ID.match(cid)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("WARNING")
    assert "core" in lines[0].lower()
    assert groups_of(emr, cid) == {"MASTER": ("m5.xlarge", 1)}


@pytest.fixture
def restricted(aws, cm):
    """``restricted(*actions)``: an IAM user allowed everything but ``actions``, its keys in
    cloudmesh.yaml, and moto checking every later request against IAM. Returns a boto3
    session of that user, for the test's own look at what AWS holds."""
    import contextlib

    import boto3
    from moto.core import enable_iam_authentication

    with contextlib.ExitStack() as stack:
        def user(*denied):
            iam = boto3.client("iam", region_name="us-east-1")
            iam.create_user(UserName="restricted")
            policy = {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"},
                {"Effect": "Deny", "Action": list(denied), "Resource": "*"}]}
            iam.put_user_policy(UserName="restricted", PolicyName="most",
                                PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName="restricted")["AccessKey"]
            cm.write(clouds={"aws": {"credentials": {
                "EC2_ACCESS_ID": key["AccessKeyId"], "EC2_SECRET_KEY": key["SecretAccessKey"],
                "region": "us-east-1"}}})
            stack.enter_context(enable_iam_authentication())
            return boto3.session.Session(aws_access_key_id=key["AccessKeyId"],
                                         aws_secret_access_key=key["SecretAccessKey"],
                                         region_name="us-east-1")

        yield user


def test_start_goes_on_when_the_instance_type_check_is_denied(cms, restricted, cm):
    emr = restricted("elasticmapreduce:ListSupportedInstanceTypes").client("emr")
    result = cms("start", "unchecked")
    assert result.code == 0, result.err
    cid = result.out.strip()
    assert CLUSTER_ID.match(cid) and result.out == cid + "\n"
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("WARNING: "), result.err
    assert "instance types" in lines[0] and "AccessDenied" in lines[0]
    assert groups_of(emr, cid) == {"MASTER": ("m5.xlarge", 1), "CORE": ("m5.xlarge", 2)}
    action, = cm.docs("aws", "action")
    assert action["Target"] == cid and action["Warnings"] == [lines[0][len("WARNING: "):]]


def test_a_start_that_aws_refuses_is_one_error_line_and_recorded(cms, restricted, cm):
    emr = restricted("elasticmapreduce:RunJobFlow").client("emr")
    result = cms("start", "refused", "--count=2")
    assert result.code == 1
    assert one_error_line(result.err), result.err
    assert "AccessDenied" in result.err and "start cluster refused" in result.err
    assert result.out == ""
    assert all_clusters(emr) == []
    action, = cm.docs("aws", "action")  # what was asked, and what AWS answered
    assert action["Action"] == "start" and action["Target"] == "refused"
    assert action["Request"]["Count"] == 2 and action["Response"] == {}
    assert action["Error"]["Message"] == result.err.strip()[len("ERROR: "):]


@pytest.mark.parametrize("fmt", FORMATS)
def test_start_in_each_format(cms, emr, cm, fmt):
    result = cms("start", "formatted", f"--format={fmt}")
    assert result.code == 0, result.err
    cid = all_clusters(emr)[0]["Id"]
    if fmt in ("json", "yaml", "dict"):
        action = parse(result.out, fmt)
        assert action["Target"] == cid and action["Response"]["JobFlowId"] == cid
        assert action["Action"] == "start"
        doc, = cm.docs("aws", "action")
        assert doc["Id"] == action["Id"]
    else:
        headers, rows = parse(result.out, fmt)
        assert len(rows) == 1 and cid in rows[0]


def bad_release_label(monkeypatch):
    """moto raises FileNotFoundError for a release it has no data for; EMR answers a
    ValidationException. Make moto answer as EMR does."""
    from moto.emr.exceptions import ValidationException
    from moto.emr.models import ElasticMapReduceBackend

    original = ElasticMapReduceBackend._get_instance_type_names

    def names(self, release_label):
        try:
            return original(self, release_label)
        except FileNotFoundError:
            raise ValidationException(f"The release label {release_label} is not valid.") from None

    monkeypatch.setattr(ElasticMapReduceBackend, "_get_instance_type_names", names)


BAD_START = [
    (["--count=abc"], "--count"),
    (["--count=0"], "--count"),
    (["--count=-1"], "--count"),
    (["--count=2.5"], "--count"),
    (["--count=1_0"], "1_0"),
    (["--count="], "--count"),
    (["--master=m5.superlarge"], "m5.superlarge"),
    (["--node=t2.micro"], "t2.micro"),
    (["--master=m1.small"], "m1.small"),   # 1 vCPU
    (["--node=m1.medium"], "m1.medium"),   # 1 vCPU
    (["--node=c6a.xlarge", "--release=emr-5.36.0"], "c6a.xlarge"),  # newer than the release
    (["--master=M5 XLARGE"], "M5 XLARGE"),
    (["--release=7.12.0"], "7.12.0"),
    (["--release=emr-7"], "emr-7"),
    (["--release=emr-99.0.0"], "emr-99.0.0"),  # well formed, unknown to EMR
    (["--format=xml"], "xml"),
]


def test_start_refuses_bad_input(cms, emr, monkeypatch, subtests):
    bad_release_label(monkeypatch)
    for options, named in BAD_START:
        with subtests.test(options=options):
            start_refused(cms, emr, options, named)


def start_refused(cms, emr, options, named):
    result = cms("start", "refused", *options)
    assert result.code == 2, (result.out, result.err)
    assert one_error_line(result.err), result.err
    assert named in result.err
    assert result.out == ""
    assert all_clusters(emr) == []


def test_start_refuses_an_empty_name(cms, emr):
    result = cms("start", "")
    assert result.code == 2
    assert one_error_line(result.err), result.err
    assert all_clusters(emr) == []


# ---- other bad input: exit 2, one ERROR line, nothing done ----------------------------------------

BAD_INPUT = [
    (["list", "clusters", "--format=xml"], "xml"),
    (["list", "clusters", "--status=bogus"], "bogus"),
    (["list", "clusters", "--status=wait", "--status=nope"], "nope"),
    (["list", "clusters", "--status=wait,down"], "down"),
    (["list", "instances", "j-AAAAAAAAAAAAA", "--status=active"], "active"),
    (["list", "instances", "j-AAAAAAAAAAAAA", "--type=worker"], "worker"),
    (["list", "steps", "j-AAAAAAAAAAAAA", "--state=done"], "done"),
    (["list", "steps", "j-AAAAAAAAAAAAA", "--format=html"], "html"),
    (["describe", "x-123"], "x-123"),
    (["describe", "j-"], "j-"),
    (["list", "instances", "cluster1"], "cluster1"),
    (["list", "steps", "j_ABC"], "j_ABC"),
    (["stop", "abc"], "abc"),
    (["stop", "j-AAAAAAAAAAAAA", "not-a-cluster"], "not-a-cluster"),
    (["copy", "abc", "bucket", "key"], "abc"),
    (["run", "abc", "bucket", "key.py"], "abc"),
    (["copy", "j-AAAAAAAAAAAAA", "Bad_Bucket", "key"], "Bad_Bucket"),
    (["run", "j-AAAAAAAAAAAAA", "ab", "key.py"], "ab"),
    (["describe", "j-AAAAAAAAAAAAA", "--format=tsv"], "tsv"),
    # an option given with nothing after it (an empty shell variable) is not the default
    (["list", "clusters", "--status="], "--status"),
    (["list", "instances", "j-AAAAAAAAAAAAA", "--type=,"], "--type"),
    (["list", "steps", "j-AAAAAAAAAAAAA", "--state="], "--state"),
    (["list", "clusters", "--format="], "--format"),
    (["stop", "j-AAAAAAAAAAAAA", "--cloud="], "--cloud"),
    # a cloud that cloudmesh.yaml does not define is not the default account
    (["stop", "j-AAAAAAAAAAAAA", "--cloud=prodd"], "prodd"),
]


def test_bad_input_is_exit_2_with_one_error_line(cms, emr, cm, subtests):
    cid = run_job_flow(emr, "untouched")
    for args, named in BAD_INPUT:
        with subtests.test(args=args):
            refused(cms, emr, cm, cid, args, named)


def refused(cms, emr, cm, cid, args, named):
    result = cms(*args)
    assert result.code == 2, (result.out, result.err)
    assert one_error_line(result.err), result.err
    assert named in result.err
    assert result.out == ""
    assert emr.describe_cluster(ClusterId=cid)["Cluster"]["Status"]["State"] == "WAITING"
    assert emr.list_steps(ClusterId=cid)["Steps"] == []
    assert "aws-emr-action" not in cm.db.list_collection_names()


@pytest.mark.parametrize("args,kind", [
    (["list", "clusters", "--status=sleeping"], "cluster status"),
    (["list", "instances", "j-AAAAAAAAAAAAA", "--status=sleeping"], "instance status"),
    (["list", "instances", "j-AAAAAAAAAAAAA", "--type=sleeping"], "instance type"),
    (["list", "steps", "j-AAAAAAAAAAAAA", "--state=sleeping"], "step state"),
])
def test_bad_filter_word_lists_the_valid_ones(cms, aws, args, kind):
    result = cms(*args)
    assert result.code == 2
    assert one_error_line(result.err), result.err
    assert "'sleeping'" in result.err
    offered = {word.strip() for word in result.err.split(":")[-1].split(",")}
    assert {"all", *MEANING[kind], *AWS_NAMES[kind]} <= offered


@pytest.mark.parametrize("make", ["missing", "directory", "unreadable"])
def test_upload_refuses_what_is_not_a_readable_file(cms, s3, tmp_path, make):
    s3.create_bucket(Bucket="data")
    path = tmp_path / "thing"
    if make == "directory":
        path.mkdir()
    elif make == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads every file")
        path.write_text("x")
        path.chmod(0)
    result = cms("upload", path, "data", "thing")
    assert result.code == 2, (result.out, result.err)
    assert one_error_line(result.err), result.err
    assert str(path) in result.err
    assert s3.list_objects_v2(Bucket="data").get("KeyCount", 0) == 0


def test_upload_refuses_a_bad_bucket_name(cms, aws, tmp_path):
    path = tmp_path / "f.py"
    path.write_text("x")
    result = cms("upload", path, "Not_A_Bucket", "f.py")
    assert result.code == 2
    assert one_error_line(result.err), result.err
    assert "Not_A_Bucket" in result.err


# ---- stop -------------------------------------------------------------------------------------------

def state_of(emr, cid):
    return emr.describe_cluster(ClusterId=cid)["Cluster"]["Status"]["State"]


def test_stop_clusters(cms, emr, cm):
    first, second_ = run_job_flow(emr, "one"), run_job_flow(emr, "two")
    result = cms("stop", first, second_, "--format=csv")
    assert result.code == 0, result.err
    assert result.err == ""
    headers, rows = parse(result.out, "csv")
    table = as_dicts(headers, rows)
    assert [row["Target"] for row in table] == [first, second_]
    assert state_of(emr, first) == state_of(emr, second_) == "TERMINATED"
    docs = cm.docs("aws", "action")
    assert sorted(d["Target"] for d in docs) == sorted([first, second_])
    assert all(d["Action"] == "stop" and "Error" not in d for d in docs)


def test_stop_a_protected_cluster_names_it_and_stops_the_others(cms, emr, cm):
    first = run_job_flow(emr, "one")
    guarded = run_job_flow(emr, "guarded", protected=True)
    last = run_job_flow(emr, "last")
    result = cms("stop", first, guarded, last, "--format=json")
    assert result.code == 1
    assert one_error_line(result.err), result.err
    assert guarded in result.err and "protect" in result.err
    assert first not in result.err and last not in result.err
    actions = json.loads(result.out)
    assert [a["Target"] for a in actions] == [first, guarded, last]
    assert [bool(a.get("Error")) for a in actions] == [False, True, False]
    assert state_of(emr, first) == "TERMINATED"
    assert state_of(emr, last) == "TERMINATED"
    assert state_of(emr, guarded) == "WAITING"
    docs = {d["Target"]: d for d in cm.docs("aws", "action")}
    assert set(docs) == {first, guarded, last}
    assert guarded in docs[guarded]["Error"]["Message"]


def test_stop_an_unknown_cluster_still_stops_the_known(cms, emr):
    known = run_job_flow(emr, "known")
    result = cms("stop", "j-NOSUCHCLUSTER1", known)
    assert result.code == 1
    assert one_error_line(result.err), result.err
    assert "j-NOSUCHCLUSTER1" in result.err
    assert state_of(emr, known) == "TERMINATED"
    headers, rows = parse(result.out, "table")
    assert [row[headers.index("Target")] for row in rows] == ["j-NOSUCHCLUSTER1", known]


# ---- upload, copy, run --------------------------------------------------------------------------------

def test_upload(cms, s3, cm, tmp_path):
    s3.create_bucket(Bucket="jobs")
    path = tmp_path / "wordcount.py"
    content = b"import sys\nprint(sys.argv)\n" + os.urandom(64)
    path.write_bytes(content)
    result = cms("upload", path, "jobs", "code/wordcount.py")
    assert result.code == 0, result.err
    assert result.out == "s3://jobs/code/wordcount.py\n"
    assert result.err == ""
    assert s3.get_object(Bucket="jobs", Key="code/wordcount.py")["Body"].read() == content
    doc, = cm.docs("aws", "action")
    assert doc["Action"] == "upload" and doc["Target"] == "s3://jobs/code/wordcount.py"


def test_upload_a_big_file_in_parts(cms, s3, tmp_path):
    s3.create_bucket(Bucket="jobs")
    path = tmp_path / "big.bin"
    content = os.urandom(9 * 1024 * 1024)
    path.write_bytes(content)
    result = cms("upload", path, "jobs", "big.bin")
    assert result.code == 0, result.err
    assert result.out == "s3://jobs/big.bin\n"
    assert result.err == ""  # no progress bar when stderr is not a terminal
    head = s3.head_object(Bucket="jobs", Key="big.bin")
    assert head["ContentLength"] == len(content)
    assert "-" in head["ETag"]  # a multipart upload
    assert s3.get_object(Bucket="jobs", Key="big.bin")["Body"].read() == content


def test_upload_to_a_missing_bucket(cms, s3, cm, tmp_path):
    path = tmp_path / "f.py"
    path.write_text("x")
    result = cms("upload", path, "no-such-bucket", "f.py")
    assert result.code == 1
    assert one_error_line(result.err), result.err
    assert "no-such-bucket" in result.err
    assert result.out == ""


def test_an_upload_that_s3_refuses_is_one_error_line_and_recorded(cms, s3, restricted, cm,
                                                                   tmp_path):
    import botocore.exceptions

    s3.create_bucket(Bucket="jobs")
    mine = restricted("s3:PutObject").client("s3")
    path = tmp_path / "f.py"
    path.write_text("print(1)\n")
    result = cms("upload", path, "jobs", "f.py")
    assert result.code == 1
    assert one_error_line(result.err), result.err
    assert "s3://jobs/f.py" in result.err and "AccessDenied" in result.err
    assert "unexpected" not in result.err
    assert result.out == ""
    with pytest.raises(botocore.exceptions.ClientError, match="404"):
        mine.head_object(Bucket="jobs", Key="f.py")
    action, = cm.docs("aws", "action")  # what was asked, and what AWS answered
    assert action["Action"] == "upload" and action["Target"] == "s3://jobs/f.py"
    assert "AccessDenied" in action["Error"]["Message"]


def step_of(emr, cid, step_id):
    return emr.describe_step(ClusterId=cid, StepId=step_id)["Step"]


def test_copy_adds_a_step_that_copies_to_the_master(cms, emr, cm):
    cid = run_job_flow(emr, "target")
    result = cms("copy", cid, "jobs", "code/wordcount.py")
    assert result.code == 0, result.err
    step_id = result.out.strip()
    assert result.out == step_id + "\n" and step_id.startswith("s-")
    step = step_of(emr, cid, step_id)
    assert step["Config"]["Jar"] == "command-runner.jar"
    assert step["Config"]["Args"] == ["aws", "s3", "cp", "s3://jobs/code/wordcount.py",
                                      "/home/hadoop/"]
    assert step["ActionOnFailure"] == "CONTINUE"
    doc, = cm.docs("aws", "action")
    assert doc["Action"] == "copy" and doc["Target"] == step_id and doc["ClusterId"] == cid


@pytest.mark.parametrize("args,expected", [
    ([], []),
    (["s3://jobs/in.txt", "s3://jobs/out"], ["s3://jobs/in.txt", "s3://jobs/out"]),
    (["--", "--input", "s3://jobs/in.txt", "-n", "3"], ["--input", "s3://jobs/in.txt", "-n", "3"]),
], ids=["none", "plain", "dashed"])
def test_run_adds_a_spark_submit_step(cms, emr, cm, args, expected):
    cid = run_job_flow(emr, "target")
    result = cms("run", cid, "jobs", "code/wordcount.py", *args)
    assert result.code == 0, result.err
    step_id = result.out.strip()
    assert step_id.startswith("s-")
    step = step_of(emr, cid, step_id)
    assert step["Config"]["Jar"] == "command-runner.jar"
    assert step["Config"]["Args"] == ["spark-submit", "s3://jobs/code/wordcount.py", *expected]
    assert step["ActionOnFailure"] == "CONTINUE"
    doc, = cm.docs("aws", "action")
    assert doc["Action"] == "run" and doc["Target"] == step_id
    listed = json.loads(cms("list", "steps", cid, "--format=json").out)
    assert [s["Id"] for s in listed] == [step_id]


@pytest.mark.parametrize("verb", ["copy", "run"])
def test_copy_and_run_on_an_unknown_or_ended_cluster(cms, emr, verb):
    result = cms(verb, "j-NOSUCHCLUSTER1", "jobs", "x.py")
    assert result.code == 1
    assert one_error_line(result.err), result.err
    assert "j-NOSUCHCLUSTER1" in result.err
    ended = run_job_flow(emr, "ended")
    emr.terminate_job_flows(JobFlowIds=[ended])
    result = cms(verb, ended, "jobs", "x.py")
    assert result.code == 1
    assert one_error_line(result.err), result.err
    assert ended in result.err and "TERMINATED" in result.err
    assert emr.list_steps(ClusterId=ended)["Steps"] == []


# ---- the database unreachable, credentials missing ---------------------------------------------------

def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_journal_line(err):
    """stderr holds one line, a WARNING that says the records wait in the journal."""
    lines = [line for line in err.splitlines() if line.strip()]
    return (len(lines) == 1 and lines[0].startswith("WARNING: ") and "journaled" in lines[0]
            and "database" in lines[0] and "Traceback" not in err)


def test_an_unreachable_database_still_prints_the_aws_result(cms, emr, cm):
    port = closed_port()
    cm.write(mongo={"MONGO_PORT": port})
    result = cms("start", "unrecorded", "--count=2")
    assert result.code == 0  # nothing is lost: the records wait in the journal
    cid = result.out.strip()
    assert [c["Id"] for c in all_clusters(emr)] == [cid]  # the id a user needs was printed
    assert one_journal_line(result.err), result.err
    assert "1 records are journaled" in result.err and f"127.0.0.1:{port}" in result.err
    listed = cms("list", "clusters", "--format=json")
    assert listed.code == 0
    assert [c["Id"] for c in json.loads(listed.out)] == [cid]
    assert one_journal_line(listed.err), listed.err
    cm.write()  # the database is back: the next command writes what waited
    assert cms("list", "clusters").code == 0
    assert [d["Id"] for d in cm.docs("aws", "cluster")] == [cid]
    assert [d["Target"] for d in cm.docs("aws", "action")] == [cid]


@pytest.mark.parametrize("verb", ["describe", "list instances", "list steps", "stop", "upload",
                                  "copy", "run"])
def test_every_command_prints_what_aws_did_when_the_database_is_down(cms, emr, s3, cm, tmp_path,
                                                                     verb):
    cid = run_job_flow(emr, "done anyway")
    add_steps(emr, cid, ["first"])
    s3.create_bucket(Bucket="jobs")
    program = tmp_path / "job.py"
    program.write_text("print(1)\n")
    cm.write(mongo={"MONGO_PORT": closed_port()})
    args = {"describe": ["describe", cid, "--format=json"],
            "list instances": ["list", "instances", cid, "--format=json"],
            "list steps": ["list", "steps", cid, "--format=json"],
            "stop": ["stop", cid, "--format=json"],
            "upload": ["upload", program, "jobs", "job.py"],
            "copy": ["copy", cid, "jobs", "job.py"],
            "run": ["run", cid, "jobs", "job.py"]}[verb]
    result = cms(*args)
    assert result.code == 0
    assert one_journal_line(result.err), result.err
    assert "(configured timeouts" not in result.err
    if verb in ("copy", "run"):  # the step id, as AWS holds it
        steps = {s["Id"] for s in emr.list_steps(ClusterId=cid)["Steps"]}
        assert result.out.strip() in steps and len(steps) == 2
    elif verb == "upload":
        assert result.out == "s3://jobs/job.py\n"
        assert s3.get_object(Bucket="jobs", Key="job.py")["Body"].read() == b"print(1)\n"
    elif verb == "stop":
        assert [a["Target"] for a in json.loads(result.out)] == [cid]
        assert state_of(emr, cid) == "TERMINATED"
    elif verb == "describe":
        assert json.loads(result.out)["Id"] == cid
    elif verb == "list steps":
        assert [s["Id"] for s in json.loads(result.out)] == [
            s["Id"] for s in emr.list_steps(ClusterId=cid)["Steps"]]
    else:
        assert sorted(i["Id"] for i in json.loads(result.out)) == sorted(
            i["Id"] for i in emr.list_instances(ClusterId=cid)["Instances"])


def test_an_embedded_database_that_cannot_start_still_prints_the_cluster_id(cms, emr, cm):
    """MODE embedded, and its folder cannot be made (a file is in the way): the cluster
    started, so its id is printed; then one ERROR line, exit 1."""
    cm.write(mongo={"MODE": "embedded"})
    (cm.folder / "emr").write_text("a file where the state folder should be")
    result = cms("start", "unrecorded")
    assert result.code == 1
    assert [c["Id"] for c in all_clusters(emr)] == [result.out.strip()]
    assert one_error_line(result.err), result.err
    assert "database" in result.err and "unexpected" not in result.err
    assert str(cm.folder / "emr") in result.err


@pytest.fixture
def no_credentials(cm, monkeypatch, tmp_path):
    """No key anywhere: not in cloudmesh.yaml, the environment, ~/.aws or instance metadata;
    and an endpoint that answers nothing, should any request get out regardless."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return cm


@pytest.mark.parametrize("args", [["list", "clusters"], ["start", "nokeys"],
                                  ["describe", "j-AAAAAAAAAAAAA"]])
def test_no_credentials_says_where_to_put_them(cms, no_credentials, args):
    result = cms(*args)
    assert result.code == 1
    assert one_error_line(result.err), result.err
    assert "EC2_ACCESS_ID" in result.err and "EC2_SECRET_KEY" in result.err
    assert str(no_credentials.folder / "cloudmesh.yaml") in result.err
    assert result.out == ""


def test_no_region_says_where_to_put_it(cms, no_credentials, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    result = cms("list", "clusters")
    assert result.code == 1
    assert one_error_line(result.err), result.err
    assert "region" in result.err


# ---- help and usage ----------------------------------------------------------------------------------

ISSUE_USAGE = """
emr list clusters [--status=STATUS...] [--created-after=WHEN] [--created-before=WHEN] [--format=FORMAT] [--cloud=CLOUD]
emr list instances CLUSTERID [--status=STATUS...] [--type=TYPE...] [--format=FORMAT] [--cloud=CLOUD]
emr list steps CLUSTERID [--state=STATE...] [--format=FORMAT] [--cloud=CLOUD]
emr list groups CLUSTERID [--format=FORMAT] [--cloud=CLOUD]
emr describe CLUSTERID [--format=FORMAT] [--cloud=CLOUD]
emr start NAME [--master=MASTER] [--node=NODE] [--count=COUNT] [--release=LABEL] [--task=TYPE] [--task-count=N] [--spot] [--bid=PRICE] [--auto-terminate] [--idle-timeout=DURATION] [--scaling=MIN:MAX] [--loguri=URI] [--key=KEYPAIR] [--subnet=SUBNET] [--zone=ZONE] [--bootstrap=ACTION...] [--tag=KEY=VALUE...] [--config=FILE] [--idempotency-key=KEY] [--wait] [--format=FORMAT] [--cloud=CLOUD]
emr wait CLUSTERID [--until=STATE] [--delay=SECONDS] [--timeout=DURATION] [--cloud=CLOUD]
emr modify CLUSTERID [--concurrency=N] [--idle-timeout=DURATION] [--scaling=MIN:MAX] [--cloud=CLOUD]
emr protect CLUSTERID (on|off) [--cloud=CLOUD]
emr add task CLUSTERID [--node=NODE] [--count=COUNT] [--spot] [--bid=PRICE] [--format=FORMAT] [--cloud=CLOUD]
emr resize CLUSTERID GROUPID COUNT [--cloud=CLOUD]
emr metrics CLUSTERID [--since=DURATION] [--format=FORMAT] [--cloud=CLOUD]
emr stop CLUSTERID... [--format=FORMAT] [--cloud=CLOUD]
emr upload FILE BUCKET BUCKETNAME [--cloud=CLOUD]
emr copy CLUSTERID BUCKET BUCKETNAME [--cloud=CLOUD]
emr run CLUSTERID BUCKET BUCKETNAME [ARGS...] [--class=MAIN] [--name=NAME] [--on-failure=ACTION] [--wait] [--cloud=CLOUD]
emr stream CLUSTERID --mapper=S3URI --reducer=S3URI --input=S3URI... --output=S3URI [--name=NAME] [--on-failure=ACTION] [--wait] [--cloud=CLOUD]
emr logs CLUSTERID STEPID [--file=FILE] [--tail=N] [--cloud=CLOUD]
emr diagnose CLUSTERID [STEPID] [--format=FORMAT] [--cloud=CLOUD]
""".strip().splitlines()


def usage_patterns(text):
    """Each usage pattern of the help text as its words, continuation lines joined."""
    section = text.split("Usage:", 1)[1].split("\n\n", 1)[0]
    patterns = []
    for line in section.splitlines():
        words = line.split()
        if words and words[0] == "emr":
            patterns.append(words)
        elif words and patterns:
            patterns[-1].extend(words)
    return patterns


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_the_usage(cms, flag):
    """Every usage line the issues list is there: its words in that order, at the start of
    a pattern of the help (later issues may add options after them)."""
    result = cms(flag)
    assert result.code == 0
    assert result.err == ""
    assert "Usage:" in result.out
    patterns = usage_patterns(result.out)
    for line in ISSUE_USAGE:
        words = line.split()
        fitting = [p for p in patterns if p[:len(words)] == words
                   or (set(words) <= set(p) and p[:3] == words[:3])]
        assert fitting, line
    assert any(p[:2] == ["emr", "db"] for p in patterns)


@pytest.mark.parametrize("args", [[], ["list"], ["frobnicate"], ["list", "clusters", "--bogus"],
                                  ["start"], ["stop"], ["upload", "f"], ["list", "buckets"],
                                  ["describe", "j-A", "j-B"]])
def test_words_that_fit_no_usage_are_exit_2(cms, args):
    result = cms(*args)
    assert result.code == 2
    assert one_error_line(result.err), result.err
    assert "cms emr --help" in result.err
    assert result.out == ""


def test_many_providers_share_one_model_loader_that_does_not_grow(aws):
    """Every Provider (the REST service makes many) shares the process's loader of service
    models; boto3's session for S3 must not add its data folder to it again each time."""
    import boto3

    from cloudmesh.emr.api.provider import Provider, botocore_session

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="loader-bucket")
    loaders = set()
    for _ in range(3):
        provider = Provider()
        s3 = provider.client("s3")
        assert s3.list_buckets()["Buckets"][0]["Name"] == "loader-bucket"
        loaders.add(id(provider.client("emr")._loader))
    paths = botocore_session().get_component("data_loader").search_paths
    assert len(loaders) == 1
    assert len(paths) == len(set(paths)), paths
