"""The emulator's own credentials: one access key id and secret per state folder.

The daemon accepts only requests signed (AWS Signature Version 4) with this pair.
It lives in ``<state dir>/credentials.json`` ({AccessKeyId, SecretAccessKey,
Created}), mode 0600. At start the daemon reuses a valid pair it finds there, so
shells that ran ``eval "$(cms emr local env)"`` keep working across restarts, and
writes a new one otherwise (a file that is missing, unreadable, malformed, or
readable by others is replaced). Clients of this machine's user read it through
``cms emr local env``, ``--cloud=local`` and ``control._client``.

Standard library only: it is imported on the CLI's start-up path. The secret is
never printed, logged or recorded; ``Credentials`` hides it from ``repr``.
"""

import json
import os
import re
import secrets
import stat
import string
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

FILE = "credentials.json"
REGION = "us-east-1"

# the shapes AWS uses: a 20-character key id starting with AKIA, a 40-character secret
ACCESS_KEY_ID = re.compile(r"AKIA[A-Z2-7]{16}")
SECRET_ACCESS_KEY = re.compile(r"[A-Za-z0-9/+]{40}")
_KEY_ALPHABET = string.ascii_uppercase + "234567"
_SECRET_ALPHABET = string.ascii_letters + string.digits + "/+"


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)

    def boto(self):
        """Keyword arguments for ``boto3.session.Session`` / ``client``."""
        return {"aws_access_key_id": self.access_key_id,
                "aws_secret_access_key": self.secret_access_key}


def generate():
    """A new random pair in AWS's shapes."""
    key = "AKIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))
    return Credentials(key, secret)


def path(state_dir):
    return Path(state_dir) / FILE


def read(state_dir):
    """The pair kept in ``state_dir``, or None when there is no valid, private one."""
    file = path(state_dir)
    try:
        info = file.stat()
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        return None  # someone else may have read it: do not trust it
    if not isinstance(data, dict):
        return None
    key, secret = data.get("AccessKeyId"), data.get("SecretAccessKey")
    if not (isinstance(key, str) and ACCESS_KEY_ID.fullmatch(key)
            and isinstance(secret, str) and SECRET_ACCESS_KEY.fullmatch(secret)):
        return None
    return Credentials(key, secret)


def write(state_dir, credentials):
    """Write the pair atomically (write, fsync, rename), readable by this user only
    (0600 from the start)."""
    from cloudmesh.emr.processes import write_json

    write_json(path(state_dir), {"AccessKeyId": credentials.access_key_id,
                                 "SecretAccessKey": credentials.secret_access_key,
                                 "Created": datetime.now(timezone.utc).isoformat()},
               mode=0o600)


def ensure(state_dir):
    """The valid pair of ``state_dir``, made and kept there first when there is none.

    Returns (credentials, reused).
    """
    found = read(state_dir)
    if found:
        return found, True
    made = generate()
    write(state_dir, made)
    return made, False
