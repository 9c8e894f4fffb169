"""Credentials out of logs: URLs with ``user:password@`` are shown as ``***@``.

Tracking URIs, database URLs and connection strings can carry passwords; everything the
project prints or records from text it did not write itself (errors, job log tails,
tracebacks) goes through ``redact_text`` first.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

_CREDENTIALS_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s:@]*:[^/\s@]*@")


def redact_text(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced (``user:pass@`` -> ***@)."""
    return _CREDENTIALS_RE.sub(r"\g<scheme>***@", text)


def redact(uri: str) -> str:
    """A URI without its credentials."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def run_main(main: Callable[[], int], failed: int = 1) -> int:
    """Run a command's ``main``; an unexpected error is printed as a redacted traceback
    and exits ``failed`` (bad input is the command's own business: exit 2, one line)."""
    try:
        return main()
    except KeyboardInterrupt:
        return 130
    except Exception:  # noqa: BLE001 - the last line of defence for what reaches the log
        print(redact_text(traceback.format_exc()), file=sys.stderr)
        return failed
