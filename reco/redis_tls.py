"""TLS for the project's own Redis clients, from a `rediss://` URL as redis-py reads it.

The hot paths (serving/reco_redis.py, serving/reco_aio.py, streaming/redis_pipe.py) open their
sockets themselves; without this they would speak plain TCP to a TLS port (a managed Redis) and
fail on every call, while the redis-py parts of the same process worked. The URL's query takes
redis-py's names: `ssl_ca_certs`, `ssl_cert_reqs` (none, optional, required),
`ssl_check_hostname`, `ssl_certfile` and `ssl_keyfile` (a client certificate).
"""

from __future__ import annotations

import ssl

from redis.connection import SSLConnection

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
              "required": ssl.CERT_REQUIRED}


def tls_context(options: dict) -> ssl.SSLContext | None:
    """The context for options from `redis.connection.parse_url`; None for plain `redis://`."""
    if options.get("connection_class") is not SSLConnection:
        return None
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    reqs = options.get("ssl_cert_reqs", "required")
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be one of {sorted(_CERT_REQS)}, not {reqs!r}")
    check_hostname = options.get("ssl_check_hostname", True)
    context.check_hostname = bool(check_hostname) and reqs != "none"
    context.verify_mode = _CERT_REQS[reqs]
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    return context
