"""The explorer's HTTP server: HTML pages and the same data as JSON under ``/api/``.

Built on the standard library's ``ThreadingHTTPServer`` (one thread per connection): the
explorer is a local, single-user tool whose every request is a few indexed SQLite reads, so a
framework would add dependencies and nothing a user sees (docs/features.md says more). Routes:

====================================  ==========================================
``/``                                 index: search, live text, sorted latents
``/feature/<id>``                     feature page (404 page for an unknown id)
``/fire?text=...``                    which latents fire on typed text (live)
``/feature/<id>/steer?prompt=&edit=&value=&max_new_tokens=``  the page with steered text
``POST /feature/<id>/label``          add a user label (form), then back to the page
``/api/meta``                         the store's metadata
``/api/latents?sort=&order=&offset=&limit=``  a sorted page of latents
``/api/search?q=``                    latents by id or label / explanation text
``/api/feature/<id>``                 everything the feature page shows
``/api/fire?text=``                   live firing latents per token
``/api/feature/<id>/steer?...``       steered vs unsteered text and next-token KL (live)
``POST /api/feature/<id>/labels``     add a user label (JSON ``{"text": ...}``)
====================================  ==========================================

No route reads files: nothing outside the store can be reached through a URL.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from saelab.explore import pages
from saelab.explore.live import LiveEncoder, SteerRequest
from saelab.features.build import StoreError
from saelab.features.store import SORT_KEYS, FeatureStore

FEATURE = re.compile(r"^/feature/(\d{1,9})$")
FEATURE_LABEL = re.compile(r"^/feature/(\d{1,9})/label$")
API_FEATURE = re.compile(r"^/api/feature/(\d{1,9})$")
API_LABELS = re.compile(r"^/api/feature/(\d{1,9})/labels$")
FEATURE_STEER = re.compile(r"^/feature/(\d{1,9})/steer$")
API_STEER = re.compile(r"^/api/feature/(\d{1,9})/steer$")
MAX_BODY = 64 * 1024

Response = tuple[int, str, bytes]


class ExploreApp:
    """Routes a request to a page or JSON; independent of the HTTP plumbing."""

    def __init__(self, store: FeatureStore, live: LiveEncoder | None = None,
                 page_size: int = 50) -> None:
        self.store, self.live, self.page_size = store, live, page_size
        self.links = pages.Links(static=False)

    # ------------------------------------------------------------------ responses

    def html(self, body: str, status: int = 200) -> Response:
        return status, "text/html; charset=utf-8", body.encode()

    def json(self, data: Any, status: int = 200) -> Response:
        return status, "application/json", json.dumps(data, allow_nan=False).encode()

    def not_found(self, path: str, message: str = "") -> Response:
        message = message or f"nothing at {path}"
        if path.startswith("/api/"):
            return self.json({"error": message}, 404)
        return self.html(pages.not_found_page(message, self.links), 404)

    def missing_latent(self, path: str, latent: int) -> Response:
        return self.not_found(path, f"latent {latent} does not exist: this SAE has latents "
                              f"0 to {self.store.n_latents - 1}")

    # ------------------------------------------------------------------ routing

    def get(self, path: str, query: dict[str, list[str]]) -> Response:
        def arg(name: str, default: str = "") -> str:
            return query.get(name, [default])[0]

        if path == "/":
            return self._index(arg("q"), arg("sort", "density"), arg("order", "desc"),
                               arg("offset", "0"))
        if m := FEATURE.match(path):
            return self._feature_page(path, int(m.group(1)))
        if m := FEATURE_STEER.match(path):
            return self._feature_page(path, int(m.group(1)), steer=query)
        if path == "/fire":
            text = arg("text")
            if not text:
                return self.html(pages.fire_page("", None, self.links))
            try:
                return self.html(pages.fire_page(text, self._fire(text), self.links))
            except (ValueError, StoreError) as err:
                return self.html(pages.fire_page(text, None, self.links, str(err)), 400)
        if path == "/api/meta":
            return self.json(self.store.meta)
        if path == "/api/latents":
            try:
                sort, desc, offset, limit = self._list_args(arg("sort", "density"),
                                                            arg("order", "desc"),
                                                            arg("offset", "0"), arg("limit", "50"))
            except ValueError as err:
                return self.json({"error": str(err)}, 400)
            return self.json({"latents": self.store.list_latents(sort, desc, limit, offset),
                              "sort": sort, "order": "desc" if desc else "asc",
                              "offset": offset, "limit": limit})
        if path == "/api/search":
            return self.json({"query": arg("q"), "latents": self.store.search(arg("q"))})
        if m := API_FEATURE.match(path):
            latent = int(m.group(1))
            data = self.store.feature(latent)
            return self.json(data) if data is not None else self.missing_latent(path, latent)
        if m := API_STEER.match(path):
            latent = int(m.group(1))
            if not self.store.has(latent):
                return self.missing_latent(path, latent)
            try:
                return self.json(self._steer(latent, {k: v[0] for k, v in query.items()}))
            except ValueError as err:
                return self.json({"error": str(err)}, 400)
        if path == "/api/fire":
            try:
                return self.json(self._fire(arg("text")))
            except (ValueError, StoreError) as err:
                return self.json({"error": str(err)}, 400)
        return self.not_found(path)

    def post(self, path: str, body: bytes, content_type: str) -> Response:
        if m := API_LABELS.match(path):
            latent = int(m.group(1))
            if not self.store.has(latent):
                return self.missing_latent(path, latent)
            try:
                data = json.loads(body or b"{}")
                text = str(data.get("text", "")) if isinstance(data, dict) else ""
                label_id = self.store.add_label(latent, text, str(data.get("author", "")))
            except (ValueError, StoreError) as err:
                return self.json({"error": str(err)}, 400)
            return self.json({"id": label_id, "labels": self.store.labels(latent)}, 201)
        if m := FEATURE_LABEL.match(path):
            latent = int(m.group(1))
            if not self.store.has(latent):
                return self.missing_latent(path, latent)
            form = parse_qs(body.decode("utf-8", "replace"))
            try:
                self.store.add_label(latent, form.get("text", [""])[0])
            except StoreError as err:
                return self.html(pages.not_found_page(str(err), self.links), 400)
            return 303, f"/feature/{latent}", b""
        return self.not_found(path)

    # ------------------------------------------------------------------ helpers

    def _list_args(self, sort: str, order: str, offset: str, limit: str
                   ) -> tuple[str, bool, int, int]:
        if sort not in SORT_KEYS:
            raise ValueError(f"unknown sort {sort!r}; use one of {list(SORT_KEYS)}")
        if order not in ("asc", "desc"):
            raise ValueError("order must be asc or desc")
        if not offset.isdigit() or not limit.isdigit() or not 1 <= int(limit) <= 1000:
            raise ValueError("offset must be a number >= 0 and limit a number in 1..1000")
        return sort, order == "desc", int(offset), int(limit)

    def _index(self, q: str, sort: str, order: str, offset: str) -> Response:
        try:
            sort_key, desc, off, _ = self._list_args(sort, order, offset, str(self.page_size))
        except ValueError as err:
            return self.html(pages.not_found_page(str(err), self.links), 400)
        if q.strip():
            rows = self.store.search(q)
            heading = f"Latents matching “{q}”"
        else:
            rows = self.store.list_latents(sort_key, desc, self.page_size, off)
            heading = ""
        return self.html(pages.index_page(self.store.meta, rows, self.links, query=q,
                                          sort=sort_key, descending=desc, offset=off,
                                          limit=self.page_size, live=self.live is not None,
                                          heading=heading))

    def _feature_page(self, path: str, latent: int,
                      steer: dict[str, list[str]] | None = None) -> Response:
        """The feature page; with ``steer`` (the steering form's fields) also the steered
        text, or the error that stopped it (status 400)."""
        data = self.store.feature(latent)
        if data is None:
            return self.missing_latent(path, latent)
        fields = {k: v[0] for k, v in (steer or {}).items()}
        result, error, status = None, "", 200
        if steer is not None:
            try:
                result = self._steer(latent, fields)
            except ValueError as err:
                error, status = str(err), 400
        box = pages.steer_section(latent, fields, result, error, note=self._steer_note())
        return self.html(pages.feature_page(data, self.store.meta, self.links,
                                            [box, pages.label_form(latent)]), status)

    def _steer_note(self) -> str:
        if self.live is None:
            return ("steering is off: the explorer has no model (start it with --model, or "
                    "build the store from a model or a cache that names one)")
        return self.live.steer_note()

    def _steer(self, latent: int, fields: dict[str, str]) -> dict[str, Any]:
        if self.live is None:
            raise ValueError(self._steer_note())
        return self.live.steer(latent, SteerRequest.parse(fields))

    def _fire(self, text: str) -> dict[str, Any]:
        if self.live is None:
            raise ValueError("live text is off: the explorer has no model (start it with "
                             "--model, or build the store from a model or a cache that names one)")
        result = self.live.fire(text)
        titles = self.store.titles([x["latent"] for x in result["latents"]])
        for x in result["latents"]:
            x["title"] = titles.get(x["latent"], "")
        return result


class _Handler(BaseHTTPRequestHandler):
    app: ExploreApp
    quiet: bool = False
    server_version = "saelab-explore"
    protocol_version = "HTTP/1.1"

    def _send(self, response: Response) -> None:
        status, ctype, body = response
        self.send_response(status)
        if status == 303:  # a redirect carries its target where the content type would be
            self.send_header("Location", ctype)
            body = b""
            ctype = "text/plain"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
                         "img-src 'self' data:; form-action 'self'")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _guard(self, fn: Any) -> None:
        try:
            self._send(fn())
        except Exception as err:  # a broken request must not kill the server thread silently
            print(f"saelab explore: error on {self.path}: {err!r}", file=sys.stderr)
            self._send((500, "text/plain; charset=utf-8", b"internal error; see the server log"))

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self._guard(lambda: self.app.get(url.path, parse_qs(url.query)))

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send((413, "text/plain", b"request body too large"))
            return
        body = self.rfile.read(length) if length else b""
        ctype = self.headers.get("Content-Type", "")
        self._guard(lambda: self.app.post(url.path, body, ctype))

    def log_message(self, format: str, *args: Any) -> None:
        if not self.quiet:
            super().log_message(format, *args)


class ExploreServer:
    """A running explorer (``serve_forever`` in the caller's thread or in a background one)."""

    def __init__(self, app: ExploreApp, host: str = "127.0.0.1", port: int = 0,
                 quiet: bool = False) -> None:
        handler = type("Handler", (_Handler,), {"app": app, "quiet": quiet})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.host, self.port = host, int(self.httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> ExploreServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="saelab-explore",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
