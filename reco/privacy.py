"""User ids in logs: a keyed hash (HMAC-SHA256) instead of the id itself.

The same user always maps to the same pseudonym (logs stay joinable for debugging) but the id
cannot be recovered without the key (`log_pseudonym_key`). Processes call `configure` once at
start; `pseudonym` is what log calls pass instead of a user id.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from urllib.parse import quote

from pydantic import SecretStr

_key: bytes = b"local-dev-only"


def configure(key: SecretStr | str) -> None:
    global _key
    _key = (key.get_secret_value() if isinstance(key, SecretStr) else key).encode()


def pseudonym(user_id: str, key: str | None = None) -> str:
    """`u:` + the first 16 hex digits of HMAC-SHA256(key, user_id); the configured key by
    default."""
    secret = _key if key is None else key.encode()
    return "u:" + hmac.new(secret, user_id.encode(), hashlib.sha256).hexdigest()[:16]


# A secret this long is a random string no word holds by chance: redacted wherever it appears.
_ANYWHERE_LEN = 16
# A short secret next to a word character, or joined to one by '.' or '-' ("reco-processor",
# "reco.settings"), is part of something else; a '.' ending a sentence joins nothing.
_WORD = "A-Za-z0-9_"
_NOT_AFTER = rf"(?<![{_WORD}])(?<![{_WORD}][.-])"
_NOT_BEFORE = rf"(?![{_WORD}])(?![.-][{_WORD}])"


def _secret_pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """One regex matching any configured secret, longest first. A short one (the local
    stack's default PostgreSQL password is "reco"; production refuses them) only as a whole
    token: not within a longer word or name, but wherever other characters delimit it, as
    in URLs (postgresql://u:reco@host), query strings, headers and JSON, or after a %XX
    escape."""
    alternatives = []
    # Each also as a URL escapes it: Settings.pg_url puts the password in URLs that way.
    secrets = {form for s in secrets for form in (s, quote(s, safe=""))}
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        escaped = re.escape(secret)
        if len(secret) < _ANYWHERE_LEN:
            escaped = rf"(?:{_NOT_AFTER}|(?<=%[0-9A-Fa-f]{{2}})){escaped}{_NOT_BEFORE}"
        alternatives.append(escaped)
    return re.compile("|".join(alternatives)) if alternatives else None


class RedactSecrets(logging.Filter):
    """Handler filter replacing any configured secret in a formatted record with `***`.

    Defence in depth: no code path logs a secret, but an exception text (a URL with a password,
    a header echoed by a library) could.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.pattern = _secret_pattern(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.pattern is None:
            return True
        message = record.getMessage()
        redacted = self.pattern.sub("***", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.pattern.sub("***", record.exc_text)
        return True


def install_redaction(secrets: Iterable[str]) -> None:
    """Put a `RedactSecrets` filter on every handler of the root logger."""
    redactor = RedactSecrets(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)
