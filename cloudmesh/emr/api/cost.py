"""Prices and the cost estimate of a cluster.

Prices come from the AWS Price List API (``pricing`` GetProducts, which answers from
us-east-1 only), for EC2 (Linux on-demand, shared tenancy) and for EMR's own charge
per instance-hour; the Provider caches them in the database for a day (kind ``price``).
When that API cannot be asked, the table shipped in ``data/prices.json`` (a dated
snapshot) stands in. Spot instances are priced at EC2's spot price history for the
cluster's zone. The estimate follows EMR's billing: per second, with a one-minute
minimum per instance; an instance that ended stops counting when it ended.

Nothing here calls AWS: the Provider asks, this module reads the answers and counts.
"""

import datetime
import json
from pathlib import Path

TABLE = Path(__file__).resolve().parent.parent / "data" / "prices.json"
PRICE_TTL = 86400  # seconds a price read from the Price List API is kept in the database
MINIMUM_SECONDS = 60  # EMR and EC2 bill each instance at least one minute
NOT_COUNTED = "EBS volumes, data transfer and S3 storage and requests are not counted"
PRICING_REGION = "us-east-1"  # the Price List API's endpoint
SPOT_PRODUCT = "Linux/UNIX"

# service code -> the TERM_MATCH filters of GetProducts beside instanceType and regionCode
SERVICES = {
    "ec2": ("AmazonEC2", {"operatingSystem": "Linux", "tenancy": "Shared",
                          "preInstalledSw": "NA", "capacitystatus": "Used"}),
    "emr": ("ElasticMapReduce", {}),
}
# among the EMR products of a type, the one EMR on EC2 charges (not EKS or Serverless)
EMR_SOFTWARE = "EMR"

_table = None


def table():
    """The shipped price table (read once)."""
    global _table
    if _table is None:
        _table = json.loads(TABLE.read_text(encoding="utf-8"))
    return _table


def table_date():
    return table()["date"]


def table_price(region, instance_type):
    """{"ec2": USD, "emr": USD} per instance-hour from the shipped table, or None."""
    return table()["regions"].get(region, {}).get(instance_type)


def filters(service, instance_type, region):
    """GetProducts' ServiceCode and Filters for one instance type in one region."""
    code, extra = SERVICES[service]
    terms = {"instanceType": instance_type, "regionCode": region, **extra}
    return code, [{"Type": "TERM_MATCH", "Field": field, "Value": value}
                  for field, value in terms.items()]


def on_demand_usd(products, service):
    """The on-demand USD price per hour in a GetProducts PriceList (JSON strings), or None.

    For EMR, the product of EMR on EC2 (softwareType EMR) wins over other EMR products."""
    found = []
    for text in products:
        product = json.loads(text) if isinstance(text, str) else text
        attributes = product.get("product", {}).get("attributes", {})
        if service == "emr" and attributes.get("softwareType", EMR_SOFTWARE) != EMR_SOFTWARE:
            continue
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = dimension.get("pricePerUnit", {}).get("USD")
                if usd is not None and float(usd) > 0:
                    found.append(float(usd))
    return min(found) if found else None


def billed_seconds(start, end):
    """Seconds billed for an instance that ran from ``start`` to ``end``."""
    if start is None or end is None:
        return 0
    return max(MINIMUM_SECONDS, (end - start).total_seconds())


def timeline(record):
    timeline = record.get("Status", {}).get("Timeline", {})
    return timeline.get("CreationDateTime"), timeline.get("EndDateTime")


def role(group):
    return group.get("InstanceGroupType") or group.get("InstanceFleetType") or ""


def group_of(instance):
    return instance.get("InstanceGroupId") or instance.get("InstanceFleetId")


def estimate(cluster, groups, instances, price_of, now):
    """The cost record of one cluster.

    ``price_of(instance_type, market)`` gives {"ec2", "emr", "source"} (USD per
    instance-hour; ec2 is the spot price for SPOT) or None when no price is known.
    One row per group (or fleet), instance type and market (a fleet's on-demand and spot
    capacity are priced apart): its instances running now, the hourly price of one,
    dollars per hour now and dollars so far."""
    rows = {}
    order = {"MASTER": 0, "CORE": 1, "TASK": 2}
    for group in groups:
        if group.get("InstanceType"):
            market = group.get("Market") or "ON_DEMAND"
            rows[(group["Id"], group["InstanceType"], market)] = {
                "GroupId": group["Id"], "Role": role(group),
                "InstanceType": group["InstanceType"], "Market": market, "Running": 0,
                "Instances": 0, "Seconds": 0.0, "DollarsSoFar": 0.0}
    roles = {group["Id"]: role(group) for group in groups}
    markets = {group["Id"]: group.get("Market") for group in groups}
    for instance in instances:
        group_id = group_of(instance)
        key = (group_id, instance.get("InstanceType"),
               instance.get("Market") or markets.get(group_id) or "ON_DEMAND")
        row = rows.setdefault(key, {
            "GroupId": key[0], "Role": roles.get(key[0], ""), "InstanceType": key[1],
            "Market": key[2], "Running": 0, "Instances": 0, "Seconds": 0.0,
            "DollarsSoFar": 0.0})
        start, end = timeline(instance)
        running = end is None and instance.get("Status", {}).get("State") not in (
            "TERMINATED", "AWAITING_FULFILLMENT")
        seconds = billed_seconds(start, end or (now if running else None))
        row["Instances"] += 1
        row["Running"] += 1 if running else 0
        row["Seconds"] += seconds
        row.setdefault("_seconds", []).append(seconds)
    missing = []
    for row in rows.values():
        price = price_of(row["InstanceType"], row["Market"]) if row["InstanceType"] else None
        seconds = row.pop("_seconds", [])
        if price is None:
            missing.append(row["InstanceType"])
            row.update(Ec2Price=None, EmrPrice=None, HourlyPrice=None, PriceSource=None,
                       DollarsPerHour=None, DollarsSoFar=None)
            continue
        hourly = price["ec2"] + price["emr"]
        row.update(Ec2Price=price["ec2"], EmrPrice=price["emr"], HourlyPrice=hourly,
                   PriceSource=price["source"], DollarsPerHour=hourly * row["Running"],
                   DollarsSoFar=sum(s * hourly / 3600 for s in seconds))
    ordered = sorted(rows.values(), key=lambda r: (order.get(r["Role"], 3), r["GroupId"] or "",
                                                   r["InstanceType"] or "", r["Market"]))
    state = cluster.get("Status", {}).get("State")
    return {
        "Id": cluster["Id"], "ClusterId": cluster["Id"], "Name": cluster.get("Name"),
        "State": state, "Groups": ordered, "AsOf": now,
        "DollarsPerHour": sum(r["DollarsPerHour"] or 0 for r in ordered),
        "DollarsSoFar": sum(r["DollarsSoFar"] or 0 for r in ordered),
        "Unpriced": sorted(set(t for t in missing if t)),
    }


def total(estimates, now):
    """The whole answer of `cost`: the clusters' estimates and their total."""
    return {
        "AsOf": now, "Currency": "USD",
        "Clusters": estimates,
        "DollarsPerHour": sum(e["DollarsPerHour"] for e in estimates),
        "DollarsSoFar": sum(e["DollarsSoFar"] for e in estimates),
        "NotCounted": NOT_COUNTED,
    }


def spot_price(history, when):
    """The spot price in effect at ``when`` from EC2's spot price history entries: the
    newest at or before it, else the oldest after it; None when there is none."""
    def stamp(entry):
        value = entry.get("Timestamp")
        if isinstance(value, datetime.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value

    entries = [e for e in history if e.get("SpotPrice") is not None and stamp(e) is not None]
    before = [e for e in entries if when is None or stamp(e) <= when]
    if before:
        return float(max(before, key=stamp)["SpotPrice"])
    if entries:
        return float(min(entries, key=stamp)["SpotPrice"])
    return None
