"""moto in server mode for the rehearsal, with an audit log (one JSON line per request) and S3's region check.

    python -m tests.rehearsal.s3_server --port-file PORT_FILE --audit AUDIT.jsonl --region eu-west-3 [--host H]

Its own process (not the tests' in-process moto server) because turning IAM enforcement on is global to a moto
process. Each audit line names who asked (the access key), for which service and region (from the SigV4
credential scope), what (method, path, query) and the answer's status, so the rehearsal can prove that every
request of a run was allowed by the instance role's policy and signed for the stack's region.

S3 refuses a request signed for another region than the bucket's (``AuthorizationHeaderMalformed``, HTTP 400,
naming the region it expects); moto accepts any. The server does what S3 does, for every S3 request signed for a
region other than ``--region`` (every bucket of the rehearsal is there), so a client that misses the region
fails at the very request that shows it, not in a final audit.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, unquote, unquote_plus

_CREDENTIAL = re.compile(r"Credential=([^/]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")
_QUERY_CREDENTIAL = re.compile(
    r"X-Amz-Credential=([^/&%]+)(?:/|%2F)\d{8}(?:/|%2F)([^/&%]+)(?:/|%2F)([^/&%]+)"
)


def wrong_region(service: str | None, signed_for: str | None, expected: str) -> str | None:
    """S3's answer to a request signed for another region (an XML error document), or None when it is fine."""
    if service != "s3" or signed_for in (None, expected):
        return None
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AuthorizationHeaderMalformed</Code>'
        f"<Message>The authorization header is malformed; the region '{signed_for}' is wrong; expecting "
        f"'{expected}'</Message><Region>{expected}</Region></Error>"
    )


class Audit:
    """WSGI middleware writing one JSON line per request."""

    def __init__(self, app: Callable[..., Iterable[bytes]], path: str, region: str) -> None:
        self.app = app
        self.region = region
        self.handle = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the server
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        captured: dict[str, Any] = {}
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
        _RAW.path, _, _RAW.query = raw.partition("?")

        def recording_start_response(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            captured["status"] = int(status.split()[0])
            return start_response(status, headers, *args)

        match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", "")) or _QUERY_CREDENTIAL.search(
            environ.get("QUERY_STRING", "")
        )
        refusal = wrong_region(match and match.group(3), match and match.group(2), self.region)
        if refusal is not None:
            start_response(
                "400 Bad Request",
                [("Content-Type", "application/xml"), ("x-amz-bucket-region", self.region)],
            )
            captured["status"] = 400
            body: Iterable[bytes] = [refusal.encode()]
        else:
            body = self.app(environ, recording_start_response)
        error = ""
        if captured.get("status", 200) >= 400:
            body = [b"".join(body)]  # small error documents: keep the first bytes to say why
            error = body[0][:300].decode("utf-8", "replace")
        record = {
            "time": time.time(),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "query": environ.get("QUERY_STRING", ""),
            "status": captured.get("status"),
            "access_key": match.group(1) if match else None,
            "region": match.group(2) if match else None,
            "service": match.group(3) if match else None,
            "agent": environ.get("HTTP_USER_AGENT", "")[:120],
            "error": error,
        }
        with self.lock:
            self.handle.write(json.dumps(record) + "\n")
        return body


_RAW = threading.local()  # the request line as the client sent it, for the signature check of the same thread


def verify_signed_headers_exactly() -> None:
    """Make moto compute S3 signatures as S3 does: over every header the client signed (User-Agent included),
    and over the path and query exactly as sent (moto re-encodes them, which breaks keys with spaces)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import HTTPHeaders
    from moto.iam import access_control

    class AsSent(S3SigV4Auth):
        def headers_to_sign(self, request: Any) -> HTTPHeaders:
            # moto already kept only the headers named in SignedHeaders: sign all of them.
            header_map = HTTPHeaders()
            for name, value in request.headers.items():
                header_map[name.lower()] = value
            return header_map

        def canonical_request(self, request: Any) -> str:
            headers_to_sign = self.headers_to_sign(request)
            # As S3 does: decode what was sent ('+' is a space in a query), then encode the SigV4 way (%20).
            pairs = sorted(
                (quote(unquote_plus(key), safe="-_.~"), quote(unquote_plus(value), safe="-_.~"))
                for key, _, value in (pair.partition("=") for pair in _RAW.query.split("&") if pair)
            )
            return "\n".join(
                [
                    request.method.upper(),
                    quote(unquote(_RAW.path), safe="/-_.~"),
                    "&".join(f"{key}={value}" for key, value in pairs),
                    self.canonical_headers(headers_to_sign) + "\n",
                    self.signed_headers(headers_to_sign),
                    request.headers.get("X-Amz-Content-SHA256") or self.payload(request),
                ]
            )

    def create_auth(self: Any, credentials: Any) -> S3SigV4Auth:
        return AsSent(credentials, self._service, self._region)

    access_control.S3IAMRequest._create_auth = create_auth


def main() -> None:
    """Serve moto on 127.0.0.1 until killed; write the chosen port to --port-file once listening."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--audit", required=True)
    parser.add_argument(
        "--region", required=True, help="the region every bucket is in (S3 checks signatures)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    verify_signed_headers_exactly()
    app = Audit(DomainDispatcherApplication(create_backend_app), args.audit, args.region)
    server = make_server(args.host, 0, app, threaded=True)
    with open(args.port_file + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(str(server.server_port))
    import os

    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
