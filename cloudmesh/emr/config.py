"""Settings from cloudmesh.yaml and the environment.

The file is ``$CLOUDMESH_CONFIG_DIR/cloudmesh.yaml``, else ``~/.cloudmesh/cloudmesh.yaml``;
a missing file is not an error. Keys read (cloudmesh conventions)::

    cloudmesh:
      cloud:
        <CLOUD>:
          credentials: {EC2_ACCESS_ID, EC2_SECRET_KEY, region, endpoint}
      data:
        mongo: {MODE, MONGO_HOST, MONGO_PORT, MONGO_DBNAME, MONGO_USERNAME, MONGO_PASSWORD}
      emr:
        default: {cloud, release, master, node, count, loguri}
        local: {delay}
        server: {token, hosts}

Where a key is absent, boto3's own chain applies (AWS_PROFILE, AWS_ACCESS_KEY_ID,
~/.aws/, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION). Secrets are held here only long
enough to build a boto3 session; they are never printed or recorded.
"""

import os
import re
from pathlib import Path

from cloudmesh.emr.errors import UsageError, shorten

LOCAL = "local"

# a host name or address as a Host header names it, with an optional port
HOST_NAME = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:\d{1,5})?$")

# what `cms emr start` uses when neither the command line nor cloudmesh.yaml says
EMR_DEFAULTS = {
    "cloud": "aws",
    "release": "emr-7.12.0",
    "master": "m5.xlarge",
    "node": "m5.xlarge",
    "count": 3,
    "loguri": None,  # where EMR writes step logs; unset: no logs on AWS, an emulator bucket locally
}

MONGO_DEFAULTS = {
    "MODE": "embedded",
    "MONGO_HOST": "127.0.0.1",
    "MONGO_PORT": 27017,
    "MONGO_DBNAME": "cloudmesh",
    "MONGO_USERNAME": None,
    "MONGO_PASSWORD": None,
}

# the keys a cloud's credentials block may hold: ours, then those cloudmesh's own aws
# profile carries (accepted so one cloudmesh.yaml serves both tools; unused here)
CREDENTIAL_KEYS = ("EC2_ACCESS_ID", "EC2_SECRET_KEY", "region", "endpoint")
CLOUDMESH_CREDENTIAL_KEYS = ("EC2_SECURITY_GROUP", "EC2_PRIVATE_KEY_FILE_PATH",
                             "EC2_PRIVATE_KEY_FILE_NAME")
KEY_PAIR = ("EC2_ACCESS_ID", "EC2_SECRET_KEY")

# the emulator's region; its keys are its own, read from its state folder (local/credentials.py)
LOCAL_CREDENTIALS = {"region": "us-east-1"}


def config_dir(environ=None):
    """The folder that holds cloudmesh.yaml and our state (database, emulator).

    ``environ``: another process's environment, to tell which folder that process uses;
    this process's own by default.
    """
    environ = os.environ if environ is None else environ
    if environ.get("CLOUDMESH_CONFIG_DIR"):
        return Path(environ["CLOUDMESH_CONFIG_DIR"])
    home = environ.get("HOME") if environ is not os.environ else None
    return (Path(home) if home else Path.home()) / ".cloudmesh"


def state_dir(*parts):
    """``<config dir>/emr/<parts>``: where the embedded database and the emulator keep state."""
    return config_dir().joinpath("emr", *parts)


def _dig(data, *keys):
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def check_endpoint(cloud, url):
    """The endpoint URL if it is one (http[s]://host[:port][/path]), else UsageError.

    Credentials in it (``http://user:password@host/``) are refused: they would be
    repeated in every connection error.
    """
    from urllib.parse import urlsplit

    from cloudmesh.emr.redaction import redact_url, userinfo

    if userinfo(url):
        raise UsageError(
            f"cloudmesh.cloud.{cloud}.credentials.endpoint '{redact_url(url)}' holds a user or "
            "password: put credentials under credentials:, not in the endpoint"
        )

    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError on a malformed port
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise UsageError(
            f"cloudmesh.cloud.{cloud}.credentials.endpoint '{shorten(url)}' is not a URL "
            "like http://127.0.0.1:5000"
        )
    return url


class Settings:
    """The parsed cloudmesh.yaml; an empty one when there is no file."""

    def __init__(self, data=None, path=None):
        self.data = data or {}
        self.path = path

    @classmethod
    def load(cls):
        path = config_dir() / "cloudmesh.yaml"
        if not path.is_file():
            return cls({}, path)
        import yaml

        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            where = getattr(error, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            reason = getattr(error, "problem", None) or getattr(error, "strerror", None) or error
            raise UsageError(f"cannot read {path}{at}: {reason}; fix the YAML") from None
        if not isinstance(data, dict):
            raise UsageError(f"{path} is not a YAML mapping; see the README for an example")
        return cls(data, path)

    def __repr__(self):  # never show the data: it holds secrets
        return f"Settings({self.path})"

    def get(self, *keys, default=None):
        value = _dig(self.data, "cloudmesh", *keys)
        return default if value is None else value

    # ---- EMR defaults -------------------------------------------------------------

    def emr_default(self, key):
        return self.get("emr", "default", key, default=EMR_DEFAULTS[key])

    def clouds(self):
        """The names of the clouds cloudmesh.yaml defines under cloudmesh.cloud."""
        block = self.get("cloud", default={})
        return sorted(str(name) for name in block) if isinstance(block, dict) else []

    def cloud(self, requested=None):
        """The cloud to use: --cloud, else cloudmesh.emr.default.cloud, else aws.

        It must be a cloud of cloudmesh.yaml, ``aws`` (boto3's own credential chain) or
        ``local`` (the emulator): a misspelt name is refused rather than quietly run
        against the default account, as the AWS CLI refuses an unknown profile.
        """
        where = "--cloud" if requested is not None else "cloudmesh.emr.default.cloud"
        name = self.emr_default("cloud") if requested is None else requested
        if not isinstance(name, str) or not name.strip():
            raise UsageError(f"{where} needs a name, such as aws or local")
        name = name.strip()
        known = self.clouds()
        if name not in (EMR_DEFAULTS["cloud"], LOCAL, *known):
            raise UsageError(
                f"{where}: '{shorten(name)}' is not a cloud of {self.path}; use one of: "
                f"{', '.join(dict.fromkeys([EMR_DEFAULTS['cloud'], LOCAL, *known]))} "
                f"(or add cloudmesh.cloud.{shorten(name, 40)}.credentials there)"
            )
        return name

    # ---- AWS --------------------------------------------------------------------

    def credentials(self, cloud):
        """The ``credentials`` block of cloud ``cloud``; the emulator's when cloud is local."""
        block = self.get("cloud", cloud, "credentials", default={})
        if not isinstance(block, dict):
            raise UsageError(f"cloudmesh.cloud.{cloud}.credentials in {self.path} is not a mapping")
        self.check_credentials(cloud, block)
        if cloud == LOCAL:
            block = {**LOCAL_CREDENTIALS, **block}
        return block

    def check_credentials(self, cloud, block):
        """All or nothing: both keys of the pair or neither, and no key we do not know.

        A misspelt key would otherwise leave the pair half set, and boto3's own chain would
        quietly supply another account's keys.
        """
        where = f"cloudmesh.cloud.{cloud}.credentials"
        known = CREDENTIAL_KEYS + CLOUDMESH_CREDENTIAL_KEYS
        unknown = [str(key) for key in block if key not in known]
        if unknown:
            import difflib

            key = unknown[0]
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UsageError(
                f"{where} in {self.path}: '{shorten(key, 60)}' is not a credentials key{hint} "
                f"(expected: {', '.join(CREDENTIAL_KEYS)})"
            )
        given = [key for key in KEY_PAIR if block.get(key) not in (None, "")]
        if len(given) == 1:
            missing = next(key for key in KEY_PAIR if key not in given)
            raise UsageError(
                f"{where} in {self.path} sets {given[0]} but not {missing}: set both "
                "(or neither, to use boto3's own credentials)"
            )

    def boto_options(self, cloud):
        """Keyword arguments for ``boto3.session.Session`` and clients of cloud ``cloud``.

        Only keys that are set are returned, so boto3's own chain fills the rest.
        For the local cloud the endpoint is the running emulator's unless the
        profile names one, and the keys are the emulator's own (kept in its state
        folder) unless the profile names them.
        """
        block = self.credentials(cloud)
        session = {}
        if block.get("EC2_ACCESS_ID") and block.get("EC2_SECRET_KEY"):
            session["aws_access_key_id"] = str(block["EC2_ACCESS_ID"])
            session["aws_secret_access_key"] = str(block["EC2_SECRET_KEY"])
        if block.get("region"):
            session["region_name"] = str(block["region"])
        endpoint = block.get("endpoint")
        if not endpoint and cloud == LOCAL:
            from cloudmesh.emr.local import control

            endpoint = control.require_endpoint()
        if cloud == LOCAL and "aws_access_key_id" not in session:
            from cloudmesh.emr.local import credentials

            pair = credentials.read(state_dir(LOCAL))
            if pair is not None:
                session.update(pair.boto())
        return session, (check_endpoint(cloud, str(endpoint)) if endpoint else None)

    def retry_attempts(self):
        """How many times an AWS call is tried in all (cloudmesh.emr.retry.attempts; 4,
        botocore's standard mode's own default in our client)."""
        value = self.get("emr", "retry", "attempts", default=4)
        if isinstance(value, bool) or not str(value).strip().isdigit() or not 1 <= int(value) <= 20:
            raise UsageError(f"cloudmesh.emr.retry.attempts '{shorten(value)}' must be a whole "
                             "number from 1 to 20")
        return int(value)

    # ---- database ---------------------------------------------------------------

    def mongo(self):
        block = self.get("data", "mongo", default={})
        settings = dict(MONGO_DEFAULTS)
        if isinstance(block, dict):
            settings.update({k: v for k, v in block.items() if v not in (None, "")})
        mode = str(settings["MODE"]).lower()
        if mode not in ("embedded", "native"):
            raise UsageError(
                f"cloudmesh.data.mongo.MODE is '{settings['MODE']}': use embedded or native"
            )
        settings["MODE"] = mode
        try:
            settings["MONGO_PORT"] = int(settings["MONGO_PORT"])
        except (TypeError, ValueError):
            raise UsageError("cloudmesh.data.mongo.MONGO_PORT must be a port number") from None
        return settings

    # ---- REST service -----------------------------------------------------------

    def server_token(self):
        token = self.get("emr", "server", "token")
        return str(token) if token else None

    def server_hosts(self):
        """The host names (``name`` or ``name:port``) the REST service answers besides its
        own address and localhost: cloudmesh.emr.server.hosts, a list or one name."""
        value = self.get("emr", "server", "hosts", default=[])
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(n, str) and HOST_NAME.match(n)
                                                  for n in names):
            raise UsageError(
                "cloudmesh.emr.server.hosts must be a list of host names such as "
                "emr.example.org or emr.example.org:8443"
            )
        return [name.lower() for name in names]

    def local_delay(self):
        """Seconds per lifecycle step of the emulator (STARTING -> BOOTSTRAPPING -> ...)."""
        value = os.environ.get("CLOUDMESH_EMR_LOCAL_DELAY") or self.get("emr", "local", "delay")
        if value in (None, ""):
            return 1.0
        try:
            delay = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"the emulator delay '{shorten(value)}' is not a number of seconds") from None
        if delay < 0:
            raise UsageError(f"the emulator delay '{shorten(value)}' must not be negative")
        return delay
