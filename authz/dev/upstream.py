"""The demo's EHR-like upstream: it trusts Envoy + Lasthop and echoes who was let in.

Routes: GET /patients/{id}/records, POST /patients/{id}/notes,
GET /patients/{id}/medications, GET /claims/{id}. Every response carries the
`x-lasthop-*` headers it received (in any `-`/`_` spelling, as a CGI upstream
would read them), the names of all the headers it received, and the trace
context and request id Envoy forwarded (`trace`), so the demo and the tests
can see what got through.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RECORDS = {
    "p-1001": {
        "name": "Jordan Rivera",
        "problems": ["type 2 diabetes", "hypertension"],
        "allergies": ["penicillin"],
    },
    "p-1002": {"name": "Sam Okafor", "problems": ["asthma"], "allergies": []},
}
MEDICATIONS = {
    "p-1001": ["metformin 500 mg BID", "lisinopril 10 mg daily"],
    "p-1002": ["albuterol inhaler PRN"],
}


class _Handler(BaseHTTPRequestHandler):
    server_version = "demo-ehr/1"
    protocol_version = "HTTP/1.1"  # keep-alive: Envoy reuses upstream connections
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        body["lasthop"] = {
            k: v
            for k, v in self.headers.items()
            if k.lower().replace("_", "-").startswith("x-lasthop-")
        }
        body["trace"] = {
            k.lower(): v
            for k, v in self.headers.items()
            if k.lower() in ("traceparent", "x-request-id")
        }
        body["headers"] = sorted({k.lower() for k in self.headers})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if m := re.fullmatch(r"/patients/([^/]+)/records", path):  # a chart for any patient
            record = RECORDS.get(m.group(1), {"name": f"patient {m.group(1)}", "problems": []})
            self._reply(200, {"patient": m.group(1), "record": record})
        elif m := re.fullmatch(r"/patients/([^/]+)/medications", path):
            self._reply(200, {"patient": m.group(1), "medications": MEDICATIONS.get(m.group(1))})
        elif m := re.fullmatch(r"/claims/([^/]+)", path):
            self._reply(200, {"claim": m.group(1), "status": "submitted", "amount": "182.40"})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        note = self.rfile.read(min(length, 64 * 1024)).decode("utf-8", "replace")
        if m := re.fullmatch(r"/patients/([^/]+)/notes", self.path.partition("?")[0]):
            self._reply(201, {"patient": m.group(1), "note_chars": len(note)})
        else:
            self._reply(404, {"error": "not found"})


class DemoUpstream:
    def __init__(self, port: int = 0) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
