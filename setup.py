"""Package definition of cloudmesh-emr: the `cms emr` command for Amazon EMR and Spark."""
import re
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "cloudmesh" / "emr" / "__init__.py").read_text()
).group(1)

setup(
    name="cloudmesh-emr",
    version=VERSION,
    description="cms emr: manage Amazon EMR Spark clusters from the shell, scripts and REST",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_namespace_packages(include=["cloudmesh.*"]),
    package_data={"cloudmesh.emr": ["api/emr.yaml", "data/*.json", "data/*.yaml"]},
    install_requires=[
        "boto3>=1.34",
        "docopt-ng>=0.9",
        # the start lock of the embedded database and the emulator (portable, no fcntl code)
        "filelock>=3.12",
        # which process a pid is (program, folder, owner, sockets) before it is signalled
        "psutil>=6.0",  # Process.net_connections
        "PyYAML>=6.0",
        "pymongo>=4.6",
        "SecantusDB>=0.7.0b3",
        "tabulate>=0.9",
        "tqdm>=4.66",
    ],
    extras_require={
        # the local EMR emulator: moto serves the EMR and S3 wire APIs, pyspark runs the steps
        # (moto pinned to the range the emulator's subclasses of its EMR are tested against;
        # pyspark pinned to the Spark line of the default release, emr-7.x: 3.5, on the
        # Pythons it runs on; on 3.12 it needs setuptools for distutils)
        "local": [
            "moto[server]>=5.2.5,<5.3",
            "pyspark>=3.5,<3.6; python_version < '3.13'",
            "setuptools>=68; python_version >= '3.12' and python_version < '3.13'",
            "pyspark>=4.0,<5; python_version >= '3.13'",
        ],
        # the REST service
        "server": ["connexion[flask,swagger-ui,uvicorn]>=3.1"],
        "test": [
            "pytest>=9",  # the built-in subtests fixture
            "pytest-timeout>=2.2",
            "moto[server]>=5.2.5,<5.3",  # moto.core.enable_iam_authentication; see "local"
            "connexion[flask,swagger-ui,uvicorn]>=3.1",
            "schemathesis>=3.30",
        ],
    },
    entry_points={"console_scripts": ["cms = cloudmesh.emr.shell:run"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ],
)
