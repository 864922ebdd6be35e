"""The web side of one-click unsubscribe: ``ezlist oneclick``, a CGI program.

What it does: ``handle_request`` answers one request to a list's ``unsuburl``
filled in by the mta (ezlist.oneclick explains the URL and its token). A POST
whose form body holds ``List-Unsubscribe=One-Click`` (RFC 8058 section 3.2) with
a valid token unsubscribes the address and mails it the goodbye text; a GET (or
HEAD) of a valid link only shows a page with a button that POSTs (section 3.2:
a GET must never unsubscribe, since mail scanners fetch links). A token stops
working when its address subscribed again after the post went out (DESIGN
decision 5: no replay across a new subscription); an address no longer
subscribed gets a friendly 200 and no mail. ``serve_cgi`` speaks CGI/1.1
(RFC 3875): REQUEST_METHOD, QUERY_STRING, CONTENT_LENGTH and the body on
standard input in, a ``Status:`` header and an HTML page out, so any web server
can run it (nginx with fcgiwrap, Apache mod_cgi, lighttpd).

Public:
    Response;  handle_request(root, method, query, body, now=None) -> Response
    render_page(resp, action="") -> bytes;  serve_cgi(root, environ, stdin, stdout) -> int

Failures: every bad request is a 4xx Response (400 malformed, 403 bad or stale
token, 404 no such list, 405 other methods), never an exception;
``sqlite3.Error``, ``OSError``, ``QueueError`` and a damaged send record become 503 (temporary: the
user may try again).
"""

from __future__ import annotations

import html
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Mapping
from urllib.parse import parse_qs

from ezlist import fanout, templates
from ezlist.listdir import ListConfig, ListError, load_list, read_key
from ezlist.oneclick import Request, parse_query, verify
from ezlist.subscribers import SubscriberDB
from mta.queue import QueueError

MAX_BODY = 4096  # bytes of a POST body read; RFC 8058's is 26
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Response:
    status: int  # HTTP status
    text: str  # plain text shown to the user
    form: bool = False  # GET of a valid link: offer the POST button


def _load(root: Path, list_address: str) -> ListConfig | None:
    name, _, _ = list_address.lower().rpartition("@")
    if not name or not set(name) <= _NAME_CHARS or name.startswith("."):
        return None
    try:
        cfg = load_list(root, name)
    except (ListError, OSError):
        return None
    return cfg if cfg.address.lower() == list_address.lower() else None


def _unsubscribe(cfg: ListConfig, root: Path, req: Request, now: int) -> Response:
    record = fanout.read_send_record(cfg.path, req.number)
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        member = db.info(req.address)
        if member is None:
            return Response(200, f"{req.address} is not subscribed to {cfg.address}.")
        if record is None or member.added > int(record.get("queued", 0)):
            return Response(403, _stale(cfg))  # subscribed again after that post
        db.remove_many([req.address], now=now)
    fanout.send_reply(cfg, root, req.address, f"GOODBYE from {cfg.address}",
                      templates.render(cfg.path, "unsub-ok", A=req.address))
    return Response(200, f"{req.address} has been unsubscribed from {cfg.address}.")


def _stale(cfg: ListConfig) -> str:
    return (f"This unsubscribe link is not valid (any more). To leave {cfg.address}, "
            f"send a message to {cfg.name}-unsubscribe@{cfg.host}.")


def handle_request(root: Path, method: str, query: str, body: bytes,
                   now: int | None = None) -> Response:
    """Answer one request to the unsubscribe URL (see the module docstring)."""
    method = method.upper()
    if method not in ("GET", "POST", "HEAD"):
        return Response(405, "Only GET and POST are supported.")
    req = parse_query(query)
    if req is None:
        return Response(400, "This unsubscribe link is incomplete: use the link of the "
                             "message exactly as you received it, or unsubscribe by mail.")
    cfg = _load(root, req.list_address)
    if cfg is None:
        return Response(404, "There is no such mailing list here.")
    try:
        if not verify(read_key(cfg.path), req.number, req.address, req.token):
            return Response(403, _stale(cfg))
        if method != "POST":
            return Response(200, f"Unsubscribe {req.address} from {cfg.address}?", form=True)
        form = parse_qs(body[:MAX_BODY].decode("ascii", "replace"))
        if form.get("List-Unsubscribe") != ["One-Click"]:
            return Response(400, "The request did not say List-Unsubscribe=One-Click.")
        return _unsubscribe(cfg, root, req, int(time.time()) if now is None else now)
    except (sqlite3.Error, OSError, QueueError, json.JSONDecodeError) as e:
        # a damaged sends/NUM record, a locked database, a queue that refuses: temporary
        return Response(503, f"Temporary problem, please try again later ({type(e).__name__}).")


def render_page(resp: Response, action: str = "") -> bytes:
    """A small HTML page for ``resp`` (GET with ``form``: a button POSTing one-click)."""
    text = html.escape(resp.text)
    button = ""
    if resp.form:
        button = (f'<form method="post" action="{html.escape(action)}">'
                  '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
                  '<button type="submit">Unsubscribe</button></form>')
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>Unsubscribe</title>"
            f"</head><body><p>{text}</p>{button}</body></html>\n").encode("utf-8")


def serve_cgi(root: Path, environ: Mapping[str, str], stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Answer the CGI request in ``environ``/``stdin`` on ``stdout``; returns 0."""
    method = environ.get("REQUEST_METHOD", "GET")
    length = environ.get("CONTENT_LENGTH", "") or "0"
    size = min(int(length), MAX_BODY) if length.isdigit() else 0
    body = stdin.read(size) if method.upper() == "POST" and size else b""
    query = environ.get("QUERY_STRING", "")
    resp = handle_request(root, method, query, body)
    page = render_page(resp, "?" + query if query else "")
    head = (f"Status: {resp.status} {_REASONS.get(resp.status, '')}\r\n"
            "Content-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(page)}\r\n"
            "Cache-Control: no-store\r\n\r\n").encode("ascii")
    stdout.write(head + (b"" if method.upper() == "HEAD" else page))
    stdout.flush()
    return 0
