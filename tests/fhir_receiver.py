"""A FHIR server's front door for the tests, run as its own process: it takes POSTed transaction bundles
at its base URL, validates each with fhir.resources (R4B) and the rules a FHIR server applies to a
transaction (every entry a request with a resource; every reference inside the bundle resolves), keeps
what it was sent under OUTDIR and answers as a server would: 200 with a transaction-response, 400 with
an OperationOutcome. The first FAIL_FIRST requests get a 503 (a server that is down for a while).

    python tests/fhir_receiver.py PORT OUTDIR [FAIL_FIRST]
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from fhir.resources.R4B.bundle import Bundle


def references(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def problems(body: bytes) -> list[str]:
    try:
        data = json.loads(body)
        Bundle.model_validate(data)
    except Exception as exc:  # what a server says of a body it cannot read
        return [f"not a valid R4 Bundle: {exc}"[:2000]]
    found = []
    if data.get("type") != "transaction":
        found.append(f"bundle type {data.get('type')!r}, expected transaction")
    urls = {entry.get("fullUrl") for entry in data.get("entry", [])}
    for entry in data.get("entry", []):
        if "request" not in entry or "resource" not in entry:
            found.append(f"entry {entry.get('fullUrl')} has no request or no resource")
    for target in references(data):
        if target.startswith("urn:uuid:") and target not in urls:
            found.append(f"reference {target} resolves to no entry")
    return found


class Receiver(BaseHTTPRequestHandler):
    lock = threading.Lock()
    count = 0

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with Receiver.lock:
            Receiver.count += 1
            n = Receiver.count
        out = Path(self.server.outdir)
        (out / f"{n:03d}-request.json").write_bytes(body)
        (out / f"{n:03d}-headers.json").write_text(json.dumps(dict(self.headers)))
        if n <= self.server.fail_first:
            return self.answer(503, {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "transient", "diagnostics": "down for maintenance"}]})
        found = problems(body)
        (out / f"{n:03d}-verdict.json").write_text(json.dumps(found))
        if found:
            return self.answer(400, {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "invalid", "diagnostics": p} for p in found]})
        entries = json.loads(body)["entry"]
        return self.answer(200, {"resourceType": "Bundle", "type": "transaction-response",
                                 "entry": [{"response": {"status": "201 Created"}} for _ in entries]})

    def answer(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port, outdir = int(sys.argv[1]), sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    server.outdir, server.fail_first = outdir, int(sys.argv[3]) if len(sys.argv) > 3 else 0
    print("ready", flush=True)
    server.serve_forever()
