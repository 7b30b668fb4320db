"""``python -m cloudmesh.emr ARGS`` is ``cms emr ARGS``."""

import sys

from cloudmesh.emr.shell import main

sys.exit(main(["emr", *sys.argv[1:]]))
