"""The rating server (stdlib `http.server`): rating pages for the raters, the unblinded report for the owner.

It never sends a system name to a rater: the rating pages name only "Reply A" and "Reply B", the
form carries an opaque study key rather than the study's name, and `study.json` is not served.
Only `/report` unblinds, and it needs the owner key (kept in memory only). The server remembers
which pair it served to each rater, with a random ticket in the form, and accepts one vote for
exactly that pair. Requests whose Host header is not the address the server is bound to are
refused (DNS rebinding). Every page is sent with a Content-Security-Policy that no page may frame
(page.CSP); a connection that sends nothing for `request_timeout` seconds is closed; the owner key
has at least MIN_OWNER_KEY characters; at most `max_raters` rater names are taken (each holds a
ticket in memory and rows in votes.db), the raters of earlier sessions counted."""

from __future__ import annotations

import errno
import hmac
import ipaddress
import os
import re
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from ftscale.apikey import is_loopback
from ftscale.errors import FtscaleError

from .page import CSP, done_page, error_page, index_page, pair_page, render_report
from .study import load_study, study_key, task_wording
from .unblind import unblind
from .votes import CHOICES, VOTES_DB, create_store, raters, record_vote, voted_pairs

MAX_RATER_LEN = 100
MAX_BODY = 64 * 1024
OWNER_KEY_ENV = "FTSCALE_RATING_OWNER_KEY"
MIN_OWNER_KEY = 16  # characters: a shorter key can be guessed by trying
MAX_RATERS = 200  # rater names a study takes (--max-raters)
REQUEST_TIMEOUT_S = 30.0  # a connection silent this long is closed, so idle sockets cannot hold the server's threads
_VOTE_FIELDS = ("study", "pair_id", "rater", "choice")


class RatingServer(ThreadingHTTPServer):
    """Serves one study: the pairs, the votes database, the tickets of the pairs on the raters' pages."""

    daemon_threads = True

    def __init__(self, study_dir: Path, study: dict, address: tuple[str, int], owner_key: str,
                 max_raters: int = MAX_RATERS, request_timeout: float = REQUEST_TIMEOUT_S):
        self.study_dir = study_dir
        self.study = study
        self.key = study_key(study)
        self.wording = study.get("wording") or task_wording(None)
        self.owner_key = owner_key
        self.max_raters, self.request_timeout = max_raters, request_timeout
        self.pair_ids = [p["id"] for p in study["pairs"]]
        self.pairs = {p["id"]: p for p in study["pairs"]}
        self.db_path = study_dir / VOTES_DB
        self.log_requests = False
        self._served: dict[str, tuple[str, str]] = {}  # rater -> (pair id, ticket) of the pair on their page
        self._served_lock = threading.Lock()
        super().__init__(address, _Handler)  # bound before anything is written: a busy port changes nothing
        create_store(self.db_path)
        self._raters = raters(self.db_path, study["name"])  # the names taken so far, earlier sessions' too

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def voted(self, rater: str) -> set[str]:
        """The ids of the pairs `rater` has voted on."""
        return voted_pairs(self.db_path, self.study["name"], rater)

    def serve_pair(self, rater: str, pair_id: str) -> str:
        """The ticket for the pair now on `rater`'s page (the same on a reload, so two tabs agree)."""
        with self._served_lock:
            pid, ticket = self._served.get(rater, (None, None))
            if pid != pair_id:
                ticket = secrets.token_urlsafe(16)
                self._served[rater] = (pair_id, ticket)
            return ticket

    def admit(self, rater: str) -> bool:
        """Whether `rater` may rate: a name taken already, or a new one while fewer than max_raters are."""
        with self._served_lock:
            if rater not in self._raters:
                if len(self._raters) >= self.max_raters:
                    return False
                self._raters.add(rater)
            return True

    def take_ticket(self, rater: str, pair_id: str, ticket: str) -> bool:
        """Whether this is the pair served to `rater` with this ticket; a ticket is good for one vote."""
        with self._served_lock:
            pid, expected = self._served.get(rater, (None, None))
            if pid != pair_id or expected is None or not hmac.compare_digest(expected, ticket):
                return False
            del self._served[rater]
            return True

    def host_allowed(self, host_header: str | None) -> bool:
        """The Host header names this server: its port, and its bound address (loopback names too when
        bound to loopback; any IP address when bound to all interfaces). A DNS name that merely resolves
        here (DNS rebinding) does not."""
        bound, port = self.server_address[:2]
        host, sep, got_port = (host_header or "").strip().lower().rpartition(":")
        if not sep or got_port != str(port) or not host:
            return False
        host = host.strip("[]")
        if host == bound.lower():
            return True
        wildcard = bound in ("0.0.0.0", "::")
        if is_loopback(bound) or wildcard:
            if host == "localhost" or is_loopback(host):
                return True
        if wildcard:
            try:
                ipaddress.ip_address(host)
                return True
            except ValueError:
                return False
        return False


class _Handler(BaseHTTPRequestHandler):
    server: RatingServer
    server_version = "ftscale-rating"
    sys_version = ""

    def setup(self):
        self.timeout = self.server.request_timeout  # StreamRequestHandler sets it on the connection
        super().setup()

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        if self.server.log_requests:  # the owner key in a /report URL stays out of the log
            super().log_message(format, *(re.sub(r"key=[^&\s]*", "key=***", a) if isinstance(a, str) else a
                                          for a in args))

    # ---- responses

    def _send(self, status: int, body: bytes, ctype: str = "text/html; charset=utf-8", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")  # a report URL carries the owner key
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Frame-Options", "DENY")  # frame-ancestors, for browsers without CSP level 2
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, rater: str | None = None):
        self._send(status, error_page(message, rater))

    def _redirect(self, location: str):
        self._send(303, b"", headers={"Location": location})

    # ---- routes

    def _wrong_host(self) -> bool:
        if self.server.host_allowed(self.headers.get("Host")):
            return False
        self._error(421, "this server answers only to the address it was started on (Host header refused)")
        return True

    def do_GET(self):
        if self._wrong_host():
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        if url.path == "/":
            return self._send(200, index_page(self.server.wording))
        if url.path == "/rate":
            rater = (query.get("rater") or [""])[0].strip()
            if not rater:
                return self._redirect("/")
            if len(rater) > MAX_RATER_LEN:
                return self._error(400, f"the rater name is longer than {MAX_RATER_LEN} characters")
            return self._rate(rater)
        if url.path == "/report":
            return self._report((query.get("key") or [""])[0])
        return self._error(404, f"no page {url.path}")

    do_HEAD = do_GET

    def do_POST(self):
        if self._wrong_host():
            return
        url = urlsplit(self.path)
        if url.path != "/vote":
            return self._error(404, f"no form posts to {url.path}")
        return self._vote()

    def _rate(self, rater: str):
        if not self.server.admit(rater):
            return self._error(403, f"this study takes at most {self.server.max_raters} raters and has them all: "
                                    "ask the study's owner")
        voted = self.server.voted(rater)
        ids = self.server.pair_ids
        todo = [pid for pid in ids if pid not in voted]
        n = len(ids)
        if not todo:
            return self._send(200, done_page(rater, n))
        pair = self.server.pairs[todo[0]]
        ticket = self.server.serve_pair(rater, pair["id"])
        self._send(200, pair_page(pair, n - len(todo) + 1, n, self.server.key, ticket, rater, self.server.wording))

    def _read_form(self) -> dict[str, list[str]] | None:
        """The posted form's fields; None (the error already sent) when the request is not a form post."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._error(400, "bad Content-Length")
        if length > MAX_BODY:
            return self._error(413, "request body too large")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        raw = self.rfile.read(length) if length > 0 else b""
        if ctype != "application/x-www-form-urlencoded":
            return self._error(400, "a vote is a form post (application/x-www-form-urlencoded) with fields "
                                    "study, pair_id, rater, choice")
        try:
            return parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            return self._error(400, "the form is not UTF-8")

    def _vote_fields(self, form: dict[str, list[str]]) -> dict[str, str] | None:
        """The vote's study, pair_id, rater (stripped) and choice, checked; None (the error sent) when bad."""
        fields = {}
        for name in _VOTE_FIELDS:
            values = form.get(name, [])
            if len(values) != 1:
                return self._error(400, f"the vote needs exactly one field {name!r}" + (" (missing)" if not values else ""))
            fields[name] = values[0]
        rater = fields["rater"] = fields["rater"].strip()
        if not rater:
            return self._error(400, "the rater name is empty: start again from the first page and enter your name")
        if len(rater) > MAX_RATER_LEN:
            return self._error(400, f"the rater name is longer than {MAX_RATER_LEN} characters")
        if fields["study"] != self.server.key:
            return self._error(400, "this vote is for another study (or an older build of this one) than the one "
                                    "this server runs: reload the rating page", rater)
        pid = fields["pair_id"]
        if pid not in self.server.pairs:
            return self._error(400, f"unknown pair id {pid!r}: this study has no such pair; nothing was recorded", rater)
        choice = fields["choice"]
        if choice not in CHOICES:
            return self._error(400, f"choice {choice!r} is not one of A, B, tie; nothing was recorded", rater)
        return fields

    def _vote(self):
        form = self._read_form()
        if form is None:
            return
        fields = self._vote_fields(form)
        if fields is None:
            return
        rater, pid = fields["rater"], fields["pair_id"]
        tickets = form.get("ticket", [])
        if not self._served_vote(rater, pid, tickets[0] if len(tickets) == 1 else None):
            return
        if not record_vote(self.server.db_path, self.server.study["name"], pid, rater, fields["choice"]):
            return self._error(409, f"{rater} has already voted on pair {pid}; the first vote is kept", rater)
        self._redirect(f"/rate?rater={quote(rater)}")

    def _served_vote(self, rater: str, pid: str, ticket: str | None) -> bool:
        """The vote is for the pair this server put on the rater's page, with its ticket, voted once."""
        if pid in self.server.voted(rater):
            self._error(409, f"{rater} has already voted on pair {pid}; the first vote is kept", rater)
            return False
        if ticket is None or not self.server.take_ticket(rater, pid, ticket):
            self._error(409, f"pair {pid} is not the pair on {rater}'s rating page: a vote counts only for the "
                             "pair shown; nothing was recorded", rater)
            return False
        return True

    def _report(self, key: str):
        auth = self.headers.get("Authorization") or ""
        given = key or auth.removeprefix("Bearer ").strip()
        if not given or not hmac.compare_digest(given.encode(), self.server.owner_key.encode()):
            return self._error(403, "the report is for the study's owner: open the report address printed when "
                                    "the server started (…/report?key=…)")
        try:
            result = unblind(self.server.study_dir)
        except FtscaleError as e:
            return self._error(500, str(e))
        self._send(200, render_report(result))


def make_server(study_dir: str | Path, host: str, port: int, owner_key: str | None, max_raters: int = MAX_RATERS,
                request_timeout: float = REQUEST_TIMEOUT_S) -> RatingServer:
    """The server of the study, bound to (host, port) but not yet serving: `server_address` gives the
    port (0 picks a free one), `url` the address, `owner_key` the key `/report` needs (random unless
    given). A missing study, a short owner key, no room for a rater or a busy port is an FtscaleError."""
    study_dir = Path(study_dir)
    study = load_study(study_dir)
    if owner_key is not None and len(owner_key) < MIN_OWNER_KEY:
        raise FtscaleError(f"{OWNER_KEY_ENV}: the owner key has {len(owner_key)} characters, fewer than "
                           f"{MIN_OWNER_KEY}; set a longer one, or unset it for a random one")
    if max_raters < 1:
        raise FtscaleError(f"--max-raters {max_raters}: at least 1")
    try:
        return RatingServer(study_dir, study, (host, port), owner_key or secrets.token_urlsafe(24), max_raters,
                            request_timeout)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise FtscaleError(f"port {port} on {host} is already in use: choose another with --port") from None
        raise FtscaleError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None


def run_rating_server(study_dir: str | Path, host: str = "127.0.0.1", port: int = 8765,
                      max_raters: int = MAX_RATERS) -> None:
    """Serve the study until Ctrl-C (the command-line entry). The owner key is FTSCALE_RATING_OWNER_KEY's
    value, else a random one shown here once; either way it lives in this process only."""
    from_env = os.environ.get(OWNER_KEY_ENV) or None  # set but empty: unset
    server = make_server(study_dir, host, port, from_env, max_raters)
    server.log_requests = True
    if not is_loopback(host):
        print(f"warning: serving on {host}: anyone who can reach it can vote (the report still needs the owner key)",
              file=sys.stderr)
    shown = f"${OWNER_KEY_ENV}" if from_env else server.owner_key
    print(f"rating study {server.study['name']} ({len(server.pair_ids)} pairs) for raters: {server.url}\n"
          f"for you only (the unblinded report): {server.url}report?key={shown}\n"
          f"(`ftscale rate <study> --report` prints the same numbers on this machine; Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped; the votes are kept in " + str(server.db_path), file=sys.stderr)
    finally:
        server.server_close()
