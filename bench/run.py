"""`make bench`: speed and memory of cms emr, as ratios against a baseline of the same run.

Each row measures our code and a baseline doing the same job the plainest way, on this
machine, now, so the ratio means something on any machine:

- startup: `cms emr --help` in a fresh process, against `python -c pass`.
- list: Provider.list_clusters (every page, filter check, record in the database)
  plus the table, against paging list_clusters with boto3 alone (moto in-process).
- record: Database.record of N records (bulk upserts with the cm sub-document),
  against the plainest upsert of the same records: pymongo bulk ReplaceOne by Id.
  (insert_many is no baseline: it cannot update what an earlier listing wrote.)
- memory: peak Python memory while rendering N records as json, against json.dumps.

A ratio over its target is flagged; nothing here is a test.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

N_CLUSTERS = 300
N_RECORDS = 2000
TARGETS = {"startup": 4.0, "list": 3.0, "record": 3.0, "memory": 3.0}


def best_of(repeat, job):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        job()
        times.append(time.perf_counter() - start)
    return min(times)


def startup():
    cms = [sys.executable, "-m", "cloudmesh.emr", "--help"]
    base = [sys.executable, "-c", "pass"]
    run = lambda cmd: subprocess.run(cmd, capture_output=True, check=True)  # noqa: E731
    return best_of(5, lambda: run(base)), best_of(5, lambda: run(cms))


def make_clusters(emr, count):
    for index in range(count):
        emr.run_job_flow(
            Name=f"bench-{index}", ReleaseLabel="emr-7.12.0",
            Instances={"MasterInstanceType": "m5.xlarge", "SlaveInstanceType": "m5.xlarge",
                       "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
            JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole",
        )


def listing():
    import boto3
    from moto import mock_aws

    from cloudmesh.emr import printer
    from cloudmesh.emr.api.provider import Provider

    with mock_aws():
        emr = boto3.client("emr", region_name="us-east-1")
        make_clusters(emr, N_CLUSTERS)

        def baseline():
            pages = emr.get_paginator("list_clusters").paginate(ClusterStates=["WAITING"])
            return [c for page in pages for c in page["Clusters"]]

        provider = Provider(cloud="aws")

        def ours():
            printer.render(provider.list_clusters(status=["wait"]), "cluster", "table")

        ours()  # connect to the database once, as a long-lived caller would
        if provider.database_error:
            raise SystemExit(f"bench: {provider.database_error.message}")
        return best_of(3, baseline), best_of(3, ours)


def records(count):
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    return [{"Id": f"j-BENCH{index:08d}", "Name": f"bench-{index}",
             "Status": {"State": "WAITING", "Timeline": {"CreationDateTime": now}},
             "NormalizedInstanceHours": index} for index in range(count)]


def recording():
    from cloudmesh.emr.database import Database

    database = Database()
    data = records(N_RECORDS)
    raw = database.client()[database.name]["bench-raw"]

    from pymongo import ReplaceOne

    def baseline():
        raw.bulk_write([ReplaceOne({"_id": r["Id"]}, r, upsert=True) for r in data],
                       ordered=False)

    def ours():
        database.record("bench", "cluster", data)

    result = best_of(3, baseline), best_of(3, ours)
    raw.drop()
    database.client()[database.name]["bench-emr-cluster"].drop()
    return result


def memory():
    from cloudmesh.emr import printer

    data = records(N_RECORDS)

    def peak(job):
        tracemalloc.start()
        job()
        _, high = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return high

    baseline = peak(lambda: json.dumps(data, default=str, indent=2))
    ours = peak(lambda: printer.render(data, "cluster", "json"))
    return baseline, ours


def main():
    folder = Path(tempfile.mkdtemp(prefix="cloudmesh-emr-bench-"))
    os.environ["CLOUDMESH_CONFIG_DIR"] = str(folder)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(key, None)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    from cloudmesh.emr.database import EmbeddedServer

    server = EmbeddedServer()
    server.start()
    try:
        rows = [
            ("startup", "s", *startup()),
            ("list", "s", *listing()),
            ("record", "s", *recording()),
            ("memory", "bytes", *memory()),
        ]
    finally:
        server.stop()
    print(f"{'benchmark':<10} {'unit':<6} {'baseline':>12} {'ours':>12} {'ratio':>7} "
          f"{'target':>7}")
    over = []
    for name, unit, base, ours in rows:
        ratio = ours / base if base else float("inf")
        flag = "" if ratio <= TARGETS[name] else "  over target"
        if flag:
            over.append(name)
        fmt = "{:>12.4f}" if unit == "s" else "{:>12.0f}"
        print(f"{name:<10} {unit:<6} {fmt.format(base)} {fmt.format(ours)} {ratio:>7.2f} "
              f"{TARGETS[name]:>7.1f}{flag}")
    print(f"({N_CLUSTERS} clusters listed, {N_RECORDS} records recorded and rendered; "
          "times are the best of repeated runs)")
    if over:
        print("over target: " + ", ".join(over))


if __name__ == "__main__":
    main()
