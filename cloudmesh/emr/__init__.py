"""cloudmesh-emr: manage Amazon EMR clusters that run Apache Spark."""

__version__ = "0.1.0"
