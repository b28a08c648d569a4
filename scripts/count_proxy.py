"""An HTTP proxy in front of an S3-compatible server that counts what writers send it.

    python3 scripts/count_proxy.py LISTEN_PORT UPSTREAM_URL

Every request is passed on unchanged (one connection upstream per request) and
counted by kind: put (refused ones, 412, apart), list, head, get, multipart
steps, delete, other. Bytes are what the writer sent: request line, headers
and body. The proxy answers two paths of its own:

    GET  /_counts         the counts so far, as JSON
    POST /_counts/reset   zero them (sent when a measured phase starts)
    POST /_plant/BUCKET/KEY   with a body: right after the next listing of a
                          bucket reaches the store, and before its answer goes
                          back, create KEY with that body (uncounted), as
                          another writer winning the race for a name would

COUNT_PROXY_LOG=1 also prints each request (method, path, status, bytes) on
stderr. scripts/fleet.sh puts it between larch and the store, so the figures are the
store's view, whatever larch believes it sent.
"""

import http.client
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import os
LOG = os.environ.get("COUNT_PROXY_LOG")
_lock = threading.Lock()
_counts = {}
_bytes = {}
_plant = []


def _reset():
    with _lock:
        _counts.clear()
        _bytes.clear()


def _count(kind, sent):
    with _lock:
        _counts[kind] = _counts.get(kind, 0) + 1
        _bytes[kind] = _bytes.get(kind, 0) + sent


def _kind(method, query, status):
    q = urllib.parse.parse_qs(query, keep_blank_values=True)
    if method == "PUT":
        if "partNumber" in q:
            return "multipart-part"
        return "put-refused" if status == 412 else "put"
    if method == "GET":
        return "list" if "list-type" in q or "prefix" in q else "get"
    if method == "HEAD":
        return "head"
    if method == "POST":
        if "uploads" in q:
            return "multipart-start"
        if "uploadId" in q:
            return "multipart-complete-refused" if status == 412 else "multipart-complete"
        return "post"
    if method == "DELETE":
        return "delete"
    return "other"


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = None

    def log_message(self, *args):
        pass

    def _own(self):
        if self.path == "/_counts" and self.command == "GET":
            with _lock:
                body = json.dumps({"requests": _counts, "bytes": _bytes}).encode()
        elif self.path == "/_counts/reset" and self.command == "POST":
            _reset()
            body = b"{}"
        elif self.path.startswith("/_plant/") and self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            with _lock:
                _plant.append((self.path[len("/_plant"):], self.rfile.read(length)))
            body = b"{}"
        else:
            return False
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return True

    def _forward(self):
        if self._own():
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        sent = len(self.requestline) + 2 + len(str(self.headers)) + len(body)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        headers["Connection"] = "close"
        up = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
        try:
            up.request(self.command, self.path, body=body or None, headers=headers)
            resp = up.getresponse()
            data = resp.read()
        except OSError as e:
            self.send_error(502, f"upstream: {e}")
            return
        finally:
            up.close()
        path, _, query = self.path.partition("?")
        kind = _kind(self.command, query, resp.status)
        _count(kind, sent)
        if kind == "list":
            with _lock:
                planted = _plant.pop(0) if _plant else None
            if planted:
                other = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
                other.request("PUT", planted[0], body=planted[1])
                other.getresponse().read()
                other.close()
        if LOG:
            print(self.command, self.path, resp.status, sent, file=sys.stderr, flush=True)
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        else:
            length = resp.getheader("Content-Length")
            if length is not None:
                self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        # A writer closing an idle kept-alive connection is no error.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def main():
    port, upstream = int(sys.argv[1]), urllib.parse.urlparse(sys.argv[2])
    Proxy.upstream = upstream
    server = Server(("127.0.0.1", port), Proxy)
    server.serve_forever()


if __name__ == "__main__":
    main()
