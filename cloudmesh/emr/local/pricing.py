"""The emulator's Price List API: ``pricing`` GetProducts, answered from the shipped table.

moto has no pricing service. This module is one, shaped like moto's: a backend, a
responses class, ``url_bases`` and ``url_paths``; ``register()`` makes moto's server
route requests signed for ``pricing`` here. The prices it answers are the dated
snapshot in ``cloudmesh/emr/data/prices.json``, emulated: the same figures the
fallback of ``cms emr cost`` uses, in the Price List's own JSON strings
(``product.attributes`` and ``terms.OnDemand...pricePerUnit.USD``).
"""

import json
import re
import sys

from moto.core.base_backend import BackendDict, BaseBackend
from moto.core.responses import BaseResponse

from cloudmesh.emr.api import cost

url_bases = [r"https?://api\.pricing\.(.+)\.amazonaws\.com", r"https?://pricing\.(.+)\.amazonaws\.com"]

# ServiceCode -> (the table's column, the product attributes beside instanceType/regionCode)
PRODUCTS = {
    "AmazonEC2": ("ec2", {"productFamily": "Compute Instance", "operatingSystem": "Linux",
                          "tenancy": "Shared", "preInstalledSw": "NA",
                          "capacitystatus": "Used", "servicecode": "AmazonEC2"}),
    "ElasticMapReduce": ("emr", {"productFamily": "Elastic Map Reduce Instance",
                                 "softwareType": "EMR", "servicecode": "ElasticMapReduce"}),
}
ON_DEMAND_TERM = "JRTCKXETXF"  # the Price List's code of the on-demand offer term
RATE_CODE = "6YS6EN2CT7"


def product(service_code, region, instance_type, usd):
    """One Price List product with its on-demand price, as the Price List shapes it."""
    column, attributes = PRODUCTS[service_code]
    sku = re.sub(r"[^A-Z0-9]", "", f"{column}{region}{instance_type}".upper())[:16]
    return {
        "product": {"productFamily": attributes["productFamily"], "sku": sku,
                    "attributes": {**attributes, "instanceType": instance_type,
                                   "regionCode": region, "usagetype": f"BoxUsage:{instance_type}"}},
        "serviceCode": service_code,
        "terms": {"OnDemand": {f"{sku}.{ON_DEMAND_TERM}": {
            "offerTermCode": ON_DEMAND_TERM, "sku": sku,
            "effectiveDate": f"{cost.table_date()}T00:00:00Z",
            "priceDimensions": {f"{sku}.{ON_DEMAND_TERM}.{RATE_CODE}": {
                "unit": "Hrs", "pricePerUnit": {"USD": f"{usd:.10f}"},
                "description": f"emulated price of {instance_type} in {region} "
                               f"(table of {cost.table_date()})"}},
        }}},
        "publicationDate": f"{cost.table_date()}T00:00:00Z",
        "version": cost.table_date(),
    }


class PricingBackend(BaseBackend):
    """The products of the shipped price table."""

    def get_products(self, service_code, filters):
        if service_code not in PRODUCTS:
            return []
        found = []
        for region, types in cost.table()["regions"].items():
            for instance_type, prices in types.items():
                item = product(service_code, region, instance_type,
                               prices[PRODUCTS[service_code][0]])
                attributes = {**item["product"]["attributes"], "ServiceCode": service_code}
                if all(str(attributes.get(f["Field"])) == str(f["Value"]) for f in filters):
                    found.append(json.dumps(item))
        return found


class PricingResponse(BaseResponse):
    def __init__(self):
        super().__init__(service_name="pricing")

    @property
    def backend(self):
        return pricing_backends[self.current_account]["us-east-1"]

    def get_products(self):
        params = json.loads(self.body or "{}")
        found = self.backend.get_products(params.get("ServiceCode"), params.get("Filters") or [])
        size = int(params.get("MaxResults") or 100)
        start = int(params.get("NextToken") or 0)
        answer = {"FormatVersion": "aws_v1", "PriceList": found[start:start + size]}
        if start + size < len(found):
            answer["NextToken"] = str(start + size)
        return json.dumps(answer)


url_paths = {"{0}/$": PricingResponse.dispatch}


class _Backend(PricingBackend):
    @property
    def _url_module(self):
        return sys.modules[__name__]


pricing_backends = BackendDict(_Backend, "pricing", use_boto3_regions=False,
                               additional_regions=["us-east-1"])


def register():
    """Route requests signed for ``pricing`` to this module in moto's server."""
    from moto import backend_index

    sys.modules.setdefault("moto.pricing", sys.modules[__name__])
    pattern = ("pricing", re.compile(r"https?://pricing\.(.+)\.amazonaws\.com"))
    if pattern[0] not in [name for name, _ in backend_index.backend_url_patterns[:1]]:
        backend_index.backend_url_patterns.insert(0, pattern)
