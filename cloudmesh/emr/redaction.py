"""What must never be shown or stored, and how it is hidden.

- ``redact(text)``: every URL in ``text`` without its userinfo (``user:password@``).
  botocore repeats the whole endpoint URL in its connection errors; every error message
  (errors.EmrError), the REST service's log and the command's last-resort error line
  pass through here.
- ``mask(records)``: in the records the Provider returns and records, the values of
  configuration properties whose names contain password, secret, token or credential
  (any case) become ``********``, at any depth (Configurations[].Properties, nested
  Configurations, a step's Properties, an action's Request).
- ``userinfo(url)``: whether an endpoint URL carries credentials (they are refused);
  ``redact_url(url)`` shows one without them.

No heavy import here: errors.py uses it.
"""

import re

MASK = "********"
SECRET_NAME = re.compile(r"password|secret|token|credential", re.IGNORECASE)
# scheme://userinfo@ : the userinfo runs to the last '@' of the URL, since a password may
# hold an unescaped '/' (AWS secret keys do); s3:// URLs have none, and their keys may hold '@'
USERINFO = re.compile(r"(\b(?!s3[an]?://)[A-Za-z][A-Za-z0-9+.\-]*://)[^\s\"'<>]*@")


def redact(text):
    """``text`` with the userinfo of every URL in it removed."""
    return USERINFO.sub(r"\1", text) if isinstance(text, str) and "@" in text else text


def userinfo(url):
    """True when an endpoint URL names a user or password (``http://user:password@host/``,
    also without a scheme): an endpoint has no other use for an '@'."""
    return "@" in str(url)


def redact_url(url):
    """An endpoint URL shown without anything up to its last '@'."""
    scheme, sep, rest = str(url).partition("://")
    if not sep:
        scheme, rest = "", scheme
    return scheme + sep + rest.rpartition("@")[2]


def mask(value):
    """``value`` (records: dicts and lists) with secret property values masked, in place;
    returns it."""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)):
                mask(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key == "Properties" and isinstance(item, dict):
                for name in item:
                    if SECRET_NAME.search(str(name)):
                        item[name] = MASK
            elif isinstance(item, (dict, list)):  # text, numbers, times hold no property
                mask(item)
    return value
