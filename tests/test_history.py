"""Events, history, `list clusters --cached` and `sync`, in this process against moto;
what was written is read back with pymongo."""

import json

import pytest

from emr_helpers import backend, lean_moto, run_job_flow, set_cluster  # noqa: F401


@pytest.fixture
def emr(aws):
    import boto3

    return boto3.client("emr", region_name="us-east-1")


def events(cm, cluster_id=None):
    found = cm.docs("aws", "event")
    return [e for e in found if cluster_id is None or e["ClusterId"] == cluster_id]


def test_listing_1000_unchanged_clusters_twice_rewrites_nothing(cms, emr, cm):
    for i in range(1000):
        run_job_flow(emr, f"c{i}", core=0)
    assert cms("list", "clusters", "--format=csv").code == 0
    first = {d["_id"]: d["cm"]["modified"] for d in cm.docs("aws", "cluster")}
    assert len(first) == 1000
    seen = len(events(cm))
    assert cms("list", "clusters", "--format=csv").code == 0
    second = {d["_id"]: d["cm"]["modified"] for d in cm.docs("aws", "cluster")}
    assert second == first  # not one document written again
    assert len(events(cm)) == seen


def test_one_state_change_makes_one_event_and_history_outlives_the_listing(cms, emr, cm):
    cluster_id = run_job_flow(emr, "watched", core=0)
    assert cms("list", "clusters").code == 0
    before = events(cm, cluster_id)
    set_cluster(cluster_id, state="RUNNING", reason="Running step")
    assert cms("list", "clusters").code == 0
    assert cms("list", "clusters").code == 0
    after = events(cm, cluster_id)
    new = [e for e in after if e["_id"] not in {b["_id"] for b in before}]
    assert [(e["From"], e["To"]) for e in new] == [("WAITING", "RUNNING")]
    assert new[0]["Reason"] == "Running step"
    del backend().clusters[cluster_id]  # EMR no longer lists it
    assert cluster_id not in cms("list", "clusters").out
    result = cms("history", cluster_id, "--format=json")
    assert result.code == 0, result.err
    timeline = json.loads(result.out)
    assert [e["To"] for e in timeline if e["Kind"] == "cluster"][-2:] == ["WAITING", "RUNNING"]
    assert cms("history", "j-NOSUCHCLUSTER").code == 1


def test_cached_makes_no_aws_call(cms, emr, cm, monkeypatch):
    run_job_flow(emr, "cached", core=0)
    assert cms("list", "clusters").code == 0
    calls = []
    from cloudmesh.emr.api import provider

    made = provider.botocore_session

    def counted():
        session = made()
        session.register("before-call", lambda **kw: calls.append(kw["model"].name))
        return session

    monkeypatch.setattr(provider, "botocore_session", counted)
    result = cms("list", "clusters", "--cached", "--format=json")
    assert result.code == 0, result.err
    assert [c["Name"] for c in json.loads(result.out)] == ["cached"]
    assert "from the database" in result.err
    assert calls == []
    assert cms("list", "clusters").code == 0
    assert "ListClusters" in calls  # the hook does count calls


def test_sync_refreshes_active_and_ended(cms, emr, cm):
    first = run_job_flow(emr, "one", core=0)
    assert cms("sync").code == 0
    set_cluster(first, state="TERMINATED")
    second = run_job_flow(emr, "two", core=0)
    result = cms("sync")
    assert result.code == 0, result.err
    states = {d["Id"]: d["Status"]["State"] for d in cm.docs("aws", "cluster")}
    assert states == {first: "TERMINATED", second: "WAITING"}
    assert [(e["From"], e["To"]) for e in events(cm, first)][-1] == ("WAITING", "TERMINATED")


def test_rest_history_and_cached(emr, cm):
    from cloudmesh.emr.api.server import create_app

    cluster_id = run_job_flow(emr, "served", core=0)
    with create_app().test_client(base_url="http://127.0.0.1:8080") as client:
        assert client.get("/clusters").status_code == 200
        del backend().clusters[cluster_id]
        cached = client.get("/clusters", params={"cached": "true"})
        assert cached.status_code == 200, cached.text
        assert [c["Id"] for c in cached.json()] == [cluster_id]
        assert int(cached.headers["X-Cloudmesh-Cached-Age"]) >= 0
        timeline = client.get(f"/clusters/{cluster_id}/history")
        assert timeline.status_code == 200, timeline.text
        assert timeline.json()[0]["Resource"] == cluster_id
        assert client.get("/clusters/j-NOSUCHCLUSTER/history").status_code == 404
