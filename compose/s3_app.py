"""The stack's S3 server: moto's S3 API as a WSGI app for gunicorn (`s3_app:app`).

At import (in the single gunicorn worker, which holds moto's in-memory state) the buckets named
by S3_BUCKETS (comma-separated) are created. `python3 s3_app.py --check` is the healthcheck: an
HTTPS request to 127.0.0.1:$S3_PORT, verified against $S3_CA_FILE for the name `localhost`,
that lists the buckets and fails unless every S3_BUCKETS bucket exists.

moto checks no credential: any access key and secret are accepted.
"""

from __future__ import annotations

import os
import sys

# moto reads the service and region from a SigV4 Authorization header and checks no signature.
_AUTH = (
    "AWS4-HMAC-SHA256 Credential=stack/20000101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature=0"
)


def _buckets() -> list[str]:
    return [b.strip() for b in os.environ.get("S3_BUCKETS", "").split(",") if b.strip()]


def check() -> int:
    """0 when the server answers over TLS for `localhost` and holds every S3_BUCKETS bucket."""
    import http.client
    import socket
    import ssl

    context = ssl.create_default_context(cafile=os.environ.get("S3_CA_FILE"))

    class _Connection(http.client.HTTPSConnection):
        def connect(self) -> None:  # to 127.0.0.1, verifying the certificate for localhost
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
            self.sock = context.wrap_socket(sock, server_hostname="localhost")

    conn = _Connection("localhost", int(os.environ.get("S3_PORT", "9000")), timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": "localhost", "Authorization": _AUTH})
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
    except OSError as exc:
        print(f"s3: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    missing = [b for b in _buckets() if f"<Name>{b}</Name>" not in body]
    if response.status != 200 or missing:
        print(f"s3: HTTP {response.status}, missing buckets {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(check() if sys.argv[1:] == ["--check"] else 2)

from moto.moto_server.werkzeug_app import (  # noqa: E402 (the healthcheck needs no moto)
    DomainDispatcherApplication,
    create_backend_app,
)
from werkzeug.test import Client  # noqa: E402

app = DomainDispatcherApplication(create_backend_app)

for _bucket in _buckets():
    _made = Client(app).put(f"/{_bucket}", headers={"Host": "localhost", "Authorization": _AUTH})
    if _made.status_code != 200:
        raise RuntimeError(f"s3: bucket {_bucket} not created: HTTP {_made.status_code}")
