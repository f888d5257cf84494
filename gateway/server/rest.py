"""TF Serving's REST API over mutual TLS: predict (row "instances" and columnar "inputs"), model status, metrics.

Same models, same checks as gRPC: the Guard authorizes, audits and measures every call. A plain
threading HTTP server is enough here: each request holds one thread, the backends are thread-safe, and
the client certificate is at hand for RFC 8705 token binding.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from gateway.auth.peer import ANONYMOUS, peer_from_cert
from gateway.backends.dtypes import BYTES, numpy_dtype
from gateway.errors import InvalidInput, NotFound, Overloaded, TooLarge, http_status
from gateway.server.guard import Call, Guard
from gateway.serving.manager import ModelManager

log = logging.getLogger("sealgate.rest")
_MODEL_PATH = re.compile(r"^/v1/models/(?P<name>[A-Za-z0-9._-]+)(?:/versions/(?P<version>\d+))?(?P<verb>:predict)?$")
_TFS_STATE = {"SERVING": "AVAILABLE", "LOADING": "LOADING", "AVAILABLE": "AVAILABLE", "RETIRED": "END"}


def _to_array(value: Any, datatype: str, name: str) -> np.ndarray:
    """A JSON value as a numpy array of the model input's dtype, or InvalidInput."""
    try:
        if datatype == BYTES:
            arr = np.asarray(value, dtype=object)
            return np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(arr)
        return np.asarray(value, dtype=numpy_dtype(datatype))
    except (ValueError, TypeError):
        raise InvalidInput(f"input {name!r}: values are not {datatype} numbers of a regular shape") from None


def _jsonable(arr: np.ndarray) -> Any:
    if arr.dtype == object:
        return [v.decode(errors="replace") if isinstance(v, bytes) else v for v in arr.reshape(-1)]
    return arr.tolist()


def predict(manager: ModelManager, name: str, version: int | None, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Run TF Serving's predict on a parsed request body; returns (model version, response document)."""
    served = manager.get(name, version)
    model = served.model
    specs = {t.name: t for t in model.inputs}
    if ("instances" in body) == ("inputs" in body):
        raise InvalidInput('the request needs exactly one of "instances" or "inputs"')
    out_names = [t.name for t in model.outputs]
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise InvalidInput('"instances" must be a non-empty list')
        if len(specs) == 1:
            (only,) = specs.values()
            inputs = {only.name: _to_array(rows, only.datatype, only.name)}
        else:
            if not all(isinstance(r, dict) for r in rows):
                raise InvalidInput("a model with several inputs takes instances as objects keyed by input name")
            keys = set(rows[0])
            if any(set(r) != keys for r in rows):
                raise InvalidInput("every instance must name the same inputs")
            inputs = {}
            for k in keys:
                if k not in specs:
                    raise InvalidInput(f"unknown input {k!r}; expected {', '.join(sorted(specs))}")
                inputs[k] = _to_array([r[k] for r in rows], specs[k].datatype, k)
        outputs = model.infer(inputs)
        if len(out_names) == 1:
            return served.version, {"predictions": _jsonable(outputs[out_names[0]])}
        n = len(rows)
        preds = [{k: _jsonable(outputs[k][i : i + 1])[0] for k in out_names} for i in range(n)]
        return served.version, {"predictions": preds}
    cols = body["inputs"]
    if isinstance(cols, dict):
        inputs = {}
        for k, v in cols.items():
            if k not in specs:
                raise InvalidInput(f"unknown input {k!r}; expected {', '.join(sorted(specs))}")
            inputs[k] = _to_array(v, specs[k].datatype, k)
    elif len(specs) == 1:
        (only,) = specs.values()
        inputs = {only.name: _to_array(cols, only.datatype, only.name)}
    else:
        raise InvalidInput('"inputs" must be an object keyed by input name for a model with several inputs')
    outputs = model.infer(inputs)
    if len(out_names) == 1:
        return served.version, {"outputs": _jsonable(outputs[out_names[0]])}
    return served.version, {"outputs": {k: _jsonable(outputs[k]) for k in out_names}}


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer whose broken connections (a client gone mid-response) are a debug line, not a
    traceback on stderr."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("REST connection from %s ended with an error", client_address, exc_info=True)


class RestServer:
    """The REST listener; `start()` runs it in a daemon thread, `stop()` shuts it down."""

    def __init__(
        self,
        address: str,
        manager: ModelManager,
        guard: Guard,
        ssl_context: ssl.SSLContext | None,
        max_body_bytes: int,
        max_concurrent: int = 0,
    ) -> None:
        host, _, port = address.rpartition(":")
        handler = _make_handler(manager, guard, max_body_bytes, max_concurrent)
        self.httpd = _Server((host.strip("[]"), int(port)), handler)
        if ssl_context is not None:
            # the handshake runs in the request's thread (first read), so a slow client cannot stall accept()
            self.httpd.socket = ssl_context.wrap_socket(
                self.httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="sealgate-rest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _make_handler(
    manager: ModelManager, guard: Guard, max_body: int, max_concurrent: int = 0
) -> type[BaseHTTPRequestHandler]:
    slots = threading.BoundedSemaphore(max_concurrent) if max_concurrent > 0 else None

    class Handler(BaseHTTPRequestHandler):
        """One HTTP request; all errors become JSON {"error": ...} with the mapped status."""

        protocol_version = "HTTP/1.1"
        timeout = 30
        server_version = "sealgate"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("rest %s", format % args)

        def _peer(self) -> Any:
            getpeercert = getattr(self.connection, "getpeercert", None)
            der = getpeercert(binary_form=True) if getpeercert else None
            return peer_from_cert(der) if der else ANONYMOUS

        def _send(self, status: int, doc: Any, content_type: str = "application/json") -> None:
            data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _route(self) -> tuple[str, int | None, bool]:
            m = _MODEL_PATH.match(self.path.split("?", 1)[0])
            if not m:
                raise NotFound(f"no such endpoint: {self.path[:100]}")
            version = int(m["version"]) if m["version"] else None
            return m["name"], version, bool(m["verb"])

        def do_GET(self) -> None:
            self._consumed = False
            if self._unread_body():  # a GET body is never read: this connection cannot carry another request
                self.close_connection = True
            if self.path == "/metrics":
                guard.recorder.flush()
                self._send(200, guard.metrics.render(), "text/plain; version=0.0.4")
                return

            def body(call: Call) -> dict[str, Any]:
                name, version, verb = self._route()
                if verb:
                    raise NotFound("use POST for :predict")
                guard.authorize(call, self.headers.items(), "infer", name)
                return self._status(name, version)

            self._serve("GetModelStatus", body)

        def _serve(self, method: str, body: Callable[[Call], dict[str, Any]]) -> None:
            """Run one request: a slot among those in progress, the guarded body, its JSON answer or error."""
            slot = slots is None or slots.acquire(blocking=False)
            try:
                with guard.call("rest", method, self._peer()) as call:
                    if not slot:
                        raise Overloaded(f"server busy: more than {max_concurrent} requests in progress; retry later")
                    doc = body(call)
                self._send(200, doc)
            except Exception as exc:
                self._error(exc)
            finally:
                if slot and slots is not None:
                    slots.release()

        def _status(self, name: str, version: int | None) -> dict[str, Any]:
            entries = [s for s in manager.status() if s.name == name and (version is None or s.version == version)]
            if not entries:
                raise NotFound(f"model {name!r}" + (f" has no version {version}" if version else " not found"))
            return {
                "model_version_status": [
                    {
                        "version": str(s.version),
                        "state": _TFS_STATE.get(s.state.name, s.state.name),
                        "status": {
                            "error_code": "OK" if s.state.name != "REFUSED" else "FAILED_PRECONDITION",
                            "error_message": s.reason or "",
                        },
                    }
                    for s in entries
                ]
            }

        def do_POST(self) -> None:
            self._consumed = False

            def body(call: Call) -> dict[str, Any]:
                name, version, verb = self._route()
                call.model = name
                if not verb:
                    raise NotFound("POST needs the :predict verb")
                guard.authorize(call, self.headers.items(), "infer", name)
                used, doc = predict(manager, name, version, self._body())
                call.version = str(used)
                return doc

            self._serve("Predict", body)

        def _unread_body(self) -> bool:
            """Whether this request came with a body that has not been read (refused before reading it)."""
            return not getattr(self, "_consumed", False) and self.headers.get("Content-Length", "0").strip() != "0"

        def _body(self) -> dict[str, Any]:
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                raise InvalidInput("bad Content-Length") from None
            if length > max_body:
                raise TooLarge(f"request body of {length} bytes exceeds the limit of {max_body}")
            raw = self.rfile.read(length)
            self._consumed = True
            try:
                doc = json.loads(raw)
            except ValueError:
                raise InvalidInput("request body is not valid JSON") from None
            if not isinstance(doc, dict):
                raise InvalidInput("request body must be a JSON object")
            return doc

        def _error(self, exc: Exception) -> None:
            status, message = http_status(exc)
            if isinstance(exc, TooLarge) or self._unread_body():
                # the body is still in the stream: reading the next request from it would be garbage
                self.close_connection = True
            try:
                self._send(status, {"error": message})
            except OSError:
                pass

    return Handler
