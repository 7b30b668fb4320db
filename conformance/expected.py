"""moto's EMR tests that fail against the emulator because EMR behaves otherwise.

Each entry: the test's id (as pytest names it) and the EMR behaviour that makes the
test's assertion moto-only. ``make conformance`` reports any other failure as
unexpected.
"""

MOTO_ONLY = {
    "tests/test_emr/test_emr_boto3.py::test_describe_cluster":
        "NormalizedInstanceHours: EMR counts every started hour of each instance from the "
        "moment the cluster is up (18 for these instances); moto reports 0",
    "tests/test_emr/test_emr_boto3.py::test_describe_job_flow":
        "NormalizedInstanceHours counts the started hour (see test_describe_cluster)",
    "tests/test_emr/test_emr_boto3.py::test_list_clusters":
        "NormalizedInstanceHours counts the started hour (see test_describe_cluster)",
    "tests/test_emr/test_emr_boto3.py::test_run_job_flow":
        "NormalizedInstanceHours counts the started hour (see test_describe_cluster)",
    "tests/test_emr/test_emr_boto3.py::test_describe_cluster_master_public_dns":
        "MasterPublicDnsName is the master's EC2 public DNS name, which in us-east-1 is "
        "ec2-A-B-C-D.compute-1.amazonaws.com, without the region; moto inserts the region",
    "tests/test_emr/test_emr_boto3.py::test_instances":
        "a cluster with no step and KeepJobFlowAliveWhenNoSteps false ends once it has "
        "bootstrapped, and its instances are TERMINATED; moto keeps them RUNNING",
    "tests/test_emr/test_emr_boto3.py::test_instance_groups":
        "a running instance group has no StateChangeReason Code (EMR's codes name why a "
        "group ended: INTERNAL_ERROR, VALIDATION_ERROR, INSTANCE_FAILURE, "
        "CLUSTER_TERMINATED); moto gives every group USER_REQUEST",
    "tests/test_emr/test_emr_boto3.py::test_steps":
        "steps run: the first (a streaming step reading s3://elasticmapreduce/..., which the "
        "emulated S3 does not hold) fails and, with ActionOnFailure TERMINATE_CLUSTER, ends "
        "the cluster and cancels the next; moto keeps steps RUNNING and PENDING forever",
    "tests/test_emr/test_emr_cloudformation.py::test_create_cluster_with_custom_ami":
        "ReleaseLabel 'release_2024' is not a release label; EMR refuses it "
        "(ValidationException), moto accepts any text",
    "tests/test_emr/test_emr_cloudformation.py::test_create_cluster_with_root_volume":
        "ReleaseLabel 'latest' is not a release label; EMR refuses it",
    "tests/test_emr/test_emr_cloudformation.py::test_create_cluster_with_kerberos_attrs":
        "ReleaseLabel 'latest' is not a release label; EMR refuses it",
}
