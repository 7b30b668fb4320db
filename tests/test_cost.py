"""`cms emr cost`: prices from the emulator's Price List API (or the shipped table), spot
prices from EC2's spot price history, dollars from each instance's own timeline.

The expected dollars are computed here by hand from the timeline boto3 reads back and the
shipped table's figures; the emulator answers the Price List API from that table.
"""

import datetime
import json

import pytest

from cloudmesh.emr.api import cost

UTC = datetime.timezone.utc
M5 = cost.table()["regions"]["us-east-1"]["m5.xlarge"]
C5 = cost.table()["regions"]["us-east-1"]["c5.xlarge"]


@pytest.fixture
def local(cm, emulator):
    cm.write(clouds=emulator.profile(), emr={"default": {"cloud": "local"}})
    return emulator


def start(emulator, spot=False):
    groups = [
        {"InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1,
         "Market": "ON_DEMAND"},
        {"InstanceRole": "CORE", "InstanceType": "m5.xlarge", "InstanceCount": 2,
         "Market": "ON_DEMAND"},
    ]
    if spot:
        groups.append({"InstanceRole": "TASK", "InstanceType": "c5.xlarge", "InstanceCount": 1,
                       "Market": "SPOT"})
    emr = emulator.client("emr")
    cluster_id = emr.run_job_flow(
        Name="priced", ReleaseLabel="emr-7.1.0", Applications=[{"Name": "Spark"}],
        Instances={"InstanceGroups": groups, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole")["JobFlowId"]
    emulator.wait_cluster(cluster_id, ("WAITING",))
    return cluster_id


def ended(emulator, cluster_id):
    """Terminate the cluster and wait: its instances' timelines are then fixed."""
    emulator.client("emr").terminate_job_flows(JobFlowIds=[cluster_id])
    emulator.wait_cluster(cluster_id, ("TERMINATED",))


def by_hand(emulator, cluster_id, hourly):
    """Dollars from the cluster's own timeline: per second, one minute at least."""
    emr = emulator.client("emr")
    total = 0.0
    for instance in emr.list_instances(ClusterId=cluster_id)["Instances"]:
        timeline = instance["Status"]["Timeline"]
        seconds = (timeline["EndDateTime"] - timeline["CreationDateTime"]).total_seconds()
        total += max(60, seconds) * hourly[instance["InstanceType"]] / 3600
    return total


def test_cost_of_an_ended_cluster_at_the_tables_prices(cms, local, cm):
    cluster_id = start(local)
    ended(local, cluster_id)
    result = cms("cost", cluster_id, "--format=json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    [cluster] = report["Clusters"]
    expected = by_hand(local, cluster_id, {"m5.xlarge": M5["ec2"] + M5["emr"]})
    assert round(cluster["DollarsSoFar"], 2) == round(expected, 2)
    assert cluster["DollarsSoFar"] == pytest.approx(expected, abs=1e-9)
    assert report["DollarsSoFar"] == pytest.approx(expected, abs=1e-9)
    assert cluster["DollarsPerHour"] == 0  # nothing runs any more
    rows = {row["Role"]: row for row in cluster["Groups"]}
    assert (rows["MASTER"]["Instances"], rows["CORE"]["Instances"]) == (1, 2)
    assert rows["CORE"]["HourlyPrice"] == pytest.approx(M5["ec2"] + M5["emr"])
    assert rows["CORE"]["PriceSource"] == "Price List API"
    assert "WARNING" not in result.err
    # the prices are cached a day in the database, read back with pymongo
    cached = {doc["InstanceType"]: doc for doc in cm.docs("local", "price")}
    assert cached["m5.xlarge"]["Ec2"] == pytest.approx(M5["ec2"])
    assert cached["m5.xlarge"]["Emr"] == pytest.approx(M5["emr"])


def test_a_running_cluster_costs_its_hourly_rate_now_and_a_spot_group_its_spot_price(
        cms, local):
    cluster_id = start(local, spot=True)
    try:
        result = cms("cost", "--format=json")  # the active clusters
        assert result.code == 0, result.err
        report = json.loads(result.out)
        [cluster] = [c for c in report["Clusters"] if c["Id"] == cluster_id]
        rows = {row["Role"]: row for row in cluster["Groups"]}
        history = local.client("ec2").describe_spot_price_history(
            InstanceTypes=["c5.xlarge"], ProductDescriptions=["Linux/UNIX"])["SpotPriceHistory"]
        spot = float(history[0]["SpotPrice"])
        assert rows["TASK"]["Market"] == "SPOT"
        assert rows["TASK"]["Ec2Price"] == pytest.approx(spot)
        assert rows["TASK"]["EmrPrice"] == pytest.approx(C5["emr"])
        assert rows["TASK"]["PriceSource"].startswith("spot")
        hourly = 3 * (M5["ec2"] + M5["emr"]) + spot + C5["emr"]
        assert cluster["DollarsPerHour"] == pytest.approx(hourly)
        table = cms("cost", cluster_id)
        assert table.code == 0, table.err
        lines = table.out.splitlines()
        assert lines[-2].split()[0] == "total"
        assert lines[-2].split()[1] == f"{hourly:.2f}"
        assert "EBS" in lines[-1] and "not counted" in lines[-1]
    finally:
        ended(local, cluster_id)


def test_the_shipped_table_with_a_warning_when_the_price_list_cannot_be_asked(cms, aws):
    """In-process moto has no Price List API: the answer comes from the table, dated."""
    import boto3

    emr = boto3.client("emr", region_name="us-east-1")
    cluster_id = emr.run_job_flow(
        Name="fallback", ReleaseLabel="emr-7.1.0",
        Instances={"InstanceGroups": [{"InstanceRole": "MASTER", "InstanceType": "m5.xlarge",
                                       "InstanceCount": 1}],
                   "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole")["JobFlowId"]
    result = cms("cost", cluster_id, "--format=json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    [row] = report["Clusters"][0]["Groups"]
    assert row["PriceSource"] == f"table {cost.table_date()}"
    assert row["HourlyPrice"] == pytest.approx(M5["ec2"] + M5["emr"])
    warnings = [line for line in result.err.splitlines() if line.startswith("WARNING")]
    assert any("Price List API" in line and cost.table_date() in line for line in warnings)


def test_billing_is_per_second_with_a_one_minute_minimum():
    start_at = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    minute = datetime.timedelta(seconds=60)

    def instance(seconds, state="TERMINATED"):
        end = start_at + datetime.timedelta(seconds=seconds) if seconds is not None else None
        return {"InstanceGroupId": "ig-1", "InstanceType": "m5.xlarge", "Market": "ON_DEMAND",
                "Status": {"State": state, "Timeline": {"CreationDateTime": start_at,
                                                        "EndDateTime": end}}}

    group = {"Id": "ig-1", "InstanceGroupType": "CORE", "InstanceType": "m5.xlarge",
             "Market": "ON_DEMAND"}
    price = {"ec2": 0.3, "emr": 0.06, "source": "test"}
    now = start_at + 2 * 3600 * minute / 60
    record = cost.estimate({"Id": "j-1", "Status": {"State": "RUNNING"}}, [group],
                           [instance(10), instance(5400), instance(None, "RUNNING")],
                           lambda *_: price, now)
    assert record["DollarsSoFar"] == pytest.approx((60 + 5400 + 7200) * 0.36 / 3600)
    assert record["DollarsPerHour"] == pytest.approx(0.36)  # one instance still runs


def spot_now(emulator, instance_type, zone):
    """The newest spot price of the type in the zone, read with boto3."""
    history = emulator.client("ec2").describe_spot_price_history(
        InstanceTypes=[instance_type], ProductDescriptions=["Linux/UNIX"],
        Filters=[{"Name": "availability-zone", "Values": [zone]}])["SpotPriceHistory"]
    return float(max(history, key=lambda e: e["Timestamp"])["SpotPrice"])


def test_an_instance_fleet_cluster_at_its_on_demand_and_spot_prices(cms, local):
    """Fleets: on-demand capacity at the Price List's prices, spot capacity at the zone's
    spot price plus EMR's charge (a fleet with both is priced apart, each instance at its
    own market, as ListInstances shows it); the dollars match the instances' timelines."""
    def fleet(role, instance_type, on_demand=0, spot=0):
        return {"InstanceFleetType": role, "TargetOnDemandCapacity": on_demand,
                "TargetSpotCapacity": spot,
                "InstanceTypeConfigs": [{"InstanceType": instance_type}]}

    emr = local.client("emr")
    cluster_id = emr.run_job_flow(
        Name="fleets", ReleaseLabel="emr-7.1.0", Applications=[{"Name": "Spark"}],
        Instances={"InstanceFleets": [fleet("MASTER", "m5.xlarge", on_demand=1),
                                      fleet("CORE", "m5.xlarge", on_demand=2),
                                      fleet("TASK", "c5.xlarge", on_demand=1, spot=2)],
                   "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole")["JobFlowId"]
    described = local.wait_cluster(cluster_id, ("WAITING",))
    try:
        zone = described["Ec2InstanceAttributes"]["Ec2AvailabilityZone"]
        spot = spot_now(local, "c5.xlarge", zone)
        fleets = {f["InstanceFleetType"]: f
                  for f in emr.list_instance_fleets(ClusterId=cluster_id)["InstanceFleets"]}
        assert (fleets["TASK"]["ProvisionedOnDemandCapacity"],
                fleets["TASK"]["ProvisionedSpotCapacity"]) == (1, 2)
        markets = sorted(i["Market"] for i in emr.list_instances(
            ClusterId=cluster_id, InstanceFleetType="TASK")["Instances"])
        assert markets == ["ON_DEMAND", "SPOT", "SPOT"]

        result = cms("cost", cluster_id, "--format=json")
        assert result.code == 0, result.err
        [cluster] = json.loads(result.out)["Clusters"]
        rows = {(row["Role"], row["Market"]): row for row in cluster["Groups"]}
        assert set(rows) == {("MASTER", "ON_DEMAND"), ("CORE", "ON_DEMAND"),
                             ("TASK", "ON_DEMAND"), ("TASK", "SPOT")}
        assert {row["GroupId"] for (role, _), row in rows.items() if role == "TASK"} == {
            fleets["TASK"]["Id"]}
        assert [rows[key]["Running"] for key in sorted(rows)] == [2, 1, 1, 2]
        core, task, spotted = rows["CORE", "ON_DEMAND"], rows["TASK", "ON_DEMAND"], \
            rows["TASK", "SPOT"]
        assert core["HourlyPrice"] == pytest.approx(M5["ec2"] + M5["emr"])
        assert core["PriceSource"] == task["PriceSource"] == "Price List API"
        assert task["HourlyPrice"] == pytest.approx(C5["ec2"] + C5["emr"])
        assert (spotted["Ec2Price"], spotted["EmrPrice"]) == pytest.approx((spot, C5["emr"]))
        assert spotted["PriceSource"] == f"spot {zone}"
        assert cluster["DollarsPerHour"] == pytest.approx(
            3 * (M5["ec2"] + M5["emr"]) + (C5["ec2"] + C5["emr"]) + 2 * (spot + C5["emr"]))
    finally:
        ended(local, cluster_id)
    after = json.loads(cms("cost", cluster_id, "--format=json").out)["Clusters"][0]
    expected = 0.0
    for instance in emr.list_instances(ClusterId=cluster_id)["Instances"]:
        timeline = instance["Status"]["Timeline"]
        seconds = (timeline["EndDateTime"] - timeline["CreationDateTime"]).total_seconds()
        price = {"m5.xlarge": M5["ec2"], "c5.xlarge": C5["ec2"]}[instance["InstanceType"]]
        if instance["Market"] == "SPOT":
            price = spot
        emr_price = {"m5.xlarge": M5["emr"], "c5.xlarge": C5["emr"]}[instance["InstanceType"]]
        expected += max(60, seconds) * (price + emr_price) / 3600
    assert after["DollarsSoFar"] == pytest.approx(expected, abs=1e-9)
    assert after["DollarsPerHour"] == 0


def test_prices_come_back_from_the_database_for_a_day(cms, local, cm, monkeypatch):
    """The first `cost` asks the Price List API and keeps the prices (kind price); a second
    asks it nothing; a price kept more than a day ago is asked again."""
    from cloudmesh.emr.api import provider

    calls = []
    made = provider.botocore_session

    def counted():
        session = made()
        session.register("before-call.pricing.GetProducts",
                         lambda **kw: calls.append(kw["model"].name))
        return session

    monkeypatch.setattr(provider, "botocore_session", counted)
    cluster_id = start(local)
    try:
        first = cms("cost", cluster_id, "--format=json")
        assert first.code == 0, first.err
        assert calls == ["GetProducts", "GetProducts"]  # EC2's price and EMR's, of m5.xlarge
        prices = cm.db["local-emr-price"]
        [kept] = list(prices.find())
        assert (kept["InstanceType"], kept["Ec2"], kept["Emr"]) == (
            "m5.xlarge", pytest.approx(M5["ec2"]), pytest.approx(M5["emr"]))

        calls.clear()
        second = cms("cost", cluster_id, "--format=json")
        assert second.code == 0, second.err
        assert calls == []
        rows = json.loads(second.out)["Clusters"][0]["Groups"]
        assert {row["PriceSource"] for row in rows} == {"Price List API"}
        assert rows[0]["HourlyPrice"] == pytest.approx(M5["ec2"] + M5["emr"])

        old = datetime.datetime.now(UTC) - datetime.timedelta(days=1, minutes=1)
        prices.update_one({"_id": kept["_id"]}, {"$set": {"Fetched": old}})
        third = cms("cost", cluster_id, "--format=json")
        assert third.code == 0, third.err
        assert calls == ["GetProducts", "GetProducts"]
        [again] = list(prices.find())
        assert again["Fetched"] > old + datetime.timedelta(days=1)
    finally:
        ended(local, cluster_id)
