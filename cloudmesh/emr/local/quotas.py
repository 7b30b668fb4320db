"""The emulator's Service Quotas for EC2: the quota `cms emr doctor` reads before a launch.

moto's Service Quotas knows VPC's quotas only. The emulator adds the EC2 quotas of the
table below to GetServiceQuota and ListAWSDefaultServiceQuotas. Their values are
emulated: a made-up account's, chosen so that the default cluster (3 m5.xlarge, 12 vCPUs)
fits and a large one does not; they are no account's and no region's real quota.
"""

EC2_SERVICE_NAME = "Amazon Elastic Compute Cloud (Amazon EC2)"

# service code -> its quotas (the answer's own fields)
QUOTAS = {
    "ec2": [
        {"QuotaCode": "L-1216C47A",
         "QuotaName": "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
         "Value": 32.0, "Unit": "None", "Adjustable": True, "GlobalQuota": False},
        {"QuotaCode": "L-34B43A08",
         "QuotaName": "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests",
         "Value": 32.0, "Unit": "None", "Adjustable": True, "GlobalQuota": False},
    ],
}
SERVICE_NAMES = {"ec2": EC2_SERVICE_NAME}


def quotas(service_code, region):
    """The emulated quotas of ``service_code`` in ``region`` as Service Quotas shapes them."""
    return [{**quota, "ServiceCode": service_code,
             "ServiceName": SERVICE_NAMES[service_code],
             "QuotaArn": f"arn:aws:servicequotas:{region}::{service_code}/{quota['QuotaCode']}"}
            for quota in QUOTAS.get(service_code, [])]


def register():
    """Answer the table's quotas in moto's Service Quotas backend (its own ones stay)."""
    from moto.servicequotas import models

    backend = models.ServiceQuotasBackend
    if getattr(backend, "_cloudmesh_quotas", False):
        return
    own_get, own_list = backend.get_service_quota, backend.list_aws_default_service_quotas

    def get_service_quota(self, service_code, quota_code):
        for quota in quotas(service_code, self.region_name):
            if quota["QuotaCode"] == quota_code:
                return quota
        return own_get(self, service_code, quota_code)

    def list_aws_default_service_quotas(self, service_code):
        if service_code in QUOTAS:
            return quotas(service_code, self.region_name)
        return own_list(self, service_code)

    backend.get_service_quota = get_service_quota
    backend.list_aws_default_service_quotas = list_aws_default_service_quotas
    backend._cloudmesh_quotas = True
