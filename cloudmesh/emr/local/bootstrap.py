"""Bootstrap actions, run as EMR runs them before a cluster is ready.

Each action's script is fetched from the emulated S3 and run with bash and its
arguments inside the cluster's folder (the master node), one after the other. Its
output goes where EMR puts it: ``<LogUri>/<cluster>/node/<instance>/bootstrap-actions/
<n>/`` ``controller.gz``, ``stdout.gz`` and ``stderr.gz`` (n counts from 1, instance is
the master's EC2 instance id). The first action that exits non-zero ends the run; the
engine then ends the cluster TERMINATED_WITH_ERRORS with reason BOOTSTRAP_FAILURE and
EMR's message.
"""

import gzip
import logging
import os
import subprocess
import threading
import time

from cloudmesh.emr.local.steps import Background

log = logging.getLogger(__name__)

TIMEOUT = 600  # seconds one action may take in the emulator
FAILURE_CODE = "BOOTSTRAP_FAILURE"
FAILURE_MESSAGE = ("On the master instance ({instance}), bootstrap action {n} returned a "
                   "non-zero return code")
FETCH_MESSAGE = ("On the master instance ({instance}), bootstrap action {n} could not be "
                 "fetched from {path}")


class BootstrapRun(Background):
    """The bootstrap actions of one cluster, carried out in a thread."""

    def __init__(self, runner, cluster):
        # read what is needed from the model now, under the engine's lock
        from cloudmesh.emr.local.commands import HOME, master_path

        self.runner = runner
        self.account = cluster.emr_backend.account_id
        self.cluster_id = cluster.id
        self.log_uri = cluster.log_uri
        self.actions = [(a.name, a.script_path, [str(x) for x in a.args or []])
                        for a in cluster.bootstrap_actions]
        master = next((i for i in getattr(cluster, "ec2_instances", [])
                       if getattr(i.instance_group, "role", None) == "MASTER"
                       or getattr(getattr(i, "fleet", None), "role", None) == "MASTER"), None)
        self.instance = master.ec2_instance_id if master else "i-00000000"
        self.master = runner.master(cluster.id)
        self.home = master_path(self.master, HOME)
        self.failure = None  # (code, message) once an action failed
        self.cancelled = False
        self._process = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name=f"bootstrap-{cluster.id}",
                                        daemon=True)

    def cancel(self):
        """Stop the running action and every process it started (the daemon stops)."""
        import signal

        with self._lock:
            self.cancelled = True
            process = self._process
            if process is not None and process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _main(self):
        try:
            for n, (name, path, args) in enumerate(self.actions, start=1):
                if not self._one(n, name, path, args):
                    return
        except Exception as error:  # a defect of the emulator: the cluster must not hang
            log.exception("cluster %s: bootstrap actions failed in the emulator", self.cluster_id)
            self.failure = ("INTERNAL_ERROR", f"the emulator failed to bootstrap: {error}")

    def _one(self, n, name, path, args):
        from cloudmesh.emr.local.commands import split_s3

        folder = self.master / "mnt/var/lib/bootstrap-actions" / str(n)
        logs = self.master / "mnt/var/log/bootstrap-actions" / str(n)
        for where in (folder, logs, self.home, self.master / "tmp"):
            where.mkdir(parents=True, exist_ok=True)
        controller = [f"{time.strftime('%Y-%m-%dT%H:%M:%S')} bootstrap action {n} ({name}): "
                      f"{path} {' '.join(args)}".rstrip()]
        script = folder / (path.rsplit("/", 1)[-1] or "script")
        where = split_s3(path or "")
        stdout, stderr, code = b"", b"", 1
        try:
            if not where:
                raise ValueError(f"{path} is not an s3:// URI")
            self.runner.s3(self.account).download_file(where[0], where[1], str(script))
        except Exception as error:
            stderr = f"cannot fetch {path}: {error}\n".encode()
            controller.append(f"fetch failed: {error}")
            self._upload(n, controller, stdout, stderr)
            self.failure = (FAILURE_CODE, FETCH_MESSAGE.format(instance=self.instance, n=n,
                                                               path=path))
            return False
        env = {**os.environ, "HOME": str(self.home), "TMPDIR": str(self.master / "tmp")}
        with self._lock:
            if self.cancelled:
                return False
            self._process = subprocess.Popen(
                ["bash", str(script), *args], cwd=str(self.home), env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True)  # its own process group: cancel() ends all of it
        try:
            stdout, stderr = self._process.communicate(timeout=TIMEOUT)
            code = self._process.returncode
        except subprocess.TimeoutExpired:
            self.cancel()
            stdout, stderr = self._process.communicate()
            stderr += f"\nbootstrap action {n} timed out after {TIMEOUT} s\n".encode()
        (logs / "stdout").write_bytes(stdout)
        (logs / "stderr").write_bytes(stderr)
        controller.append(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} exit code {code}")
        log.info("cluster %s: bootstrap action %s (%s) exited %s", self.cluster_id, n, name, code)
        self._upload(n, controller, stdout, stderr)
        if code != 0:
            self.failure = (FAILURE_CODE, FAILURE_MESSAGE.format(instance=self.instance, n=n))
            return False
        return True

    def _upload(self, n, controller, stdout, stderr):
        from cloudmesh.emr.local.commands import split_s3

        where = split_s3(self.log_uri or "")
        if not where:
            return
        bucket, prefix = where
        folder = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        base = f"{folder}{self.cluster_id}/node/{self.instance}/bootstrap-actions/{n}/"
        s3 = self.runner.s3(self.account)
        try:
            from cloudmesh.emr.local.steps import StepRun

            StepRun._ensure_bucket(s3, bucket)
            for name, body in (("controller", ("\n".join(controller) + "\n").encode()),
                               ("stdout", stdout), ("stderr", stderr)):
                s3.put_object(Bucket=bucket, Key=f"{base}{name}.gz", Body=gzip.compress(body))
        except Exception as error:  # the result stands; say why the logs are missing
            log.warning("cannot write the bootstrap logs of %s to %s: %s", self.cluster_id,
                        self.log_uri, error)
