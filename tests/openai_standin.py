"""A local HTTP stand-in for the parts of the OpenAI API that ftscale uses.

The real service is unreachable from CI, so the tests drive the real `openai` client against
this server on 127.0.0.1: files, fine-tuning jobs (create, retrieve, events, list), chat
completions (streamed, with usage) and stored chat completions (list, messages). Faults can be
queued for chat requests. With `key=` it refuses, as the real API does, every request that does
not carry that key (401). Used by tests only.
"""

from __future__ import annotations

import json
import threading
import time
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # clients that time out or drop a stream on purpose are part of the tests


class StandIn:
    def __init__(self, key: str | None = None):
        self.key = key  # when set, every request must carry it (Authorization: Bearer KEY), as OpenAI's do
        self.files: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.events: dict[str, list[dict]] = {}
        self.refuse_jobs = False
        self.steps_to_finish = 3  # retrieves before a job succeeds
        self.chat_faults: list[str] = []  # "429", "500", "401", "404", "drop", "slow" — taken one per chat request
        self.chat_refusal: str | None = None  # "401" or "404": every chat request refused while set
        self.chat_requests: list[dict] = []
        self.auth_headers: set[str] = set()  # every Authorization header received
        # every request refused with (HTTP status, error code), e.g. (401, "invalid_api_key"), (429, "insufficient_quota")
        self.refuse_all: tuple[int, str] | None = None
        self._migration_init()
        self.lock = threading.Lock()
        self.server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # --- the API -------------------------------------------------------------------------------
    def upload(self, body: bytes, content_type: str) -> dict:
        msg = BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
        parts = {p.get_param("name", header="content-disposition"): p for p in msg.get_payload()}
        data = parts["file"].get_payload(decode=True)
        fid = f"file-{len(self.files) + 1:04d}"
        self.files[fid] = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                           "filename": parts["file"].get_filename(), "purpose": parts["purpose"].get_payload(),
                           "status": "processed", "lines": data.decode().count("\n")}
        return self.files[fid]

    def create_job(self, req: dict) -> tuple[int, dict]:
        if self.refuse_jobs:
            return 403, {"error": {"message": "Fine-tuning is not available for your organization.",
                                   "type": "invalid_request_error", "param": None, "code": "fine_tuning_unavailable"}}
        if req["training_file"] not in self.files:
            return 400, {"error": {"message": "unknown file", "type": "invalid_request_error"}}
        jid = f"ftjob-{len(self.jobs) + 1:04d}"
        hp = req["method"]["supervised"]["hyperparameters"]
        self.jobs[jid] = {"id": jid, "object": "fine_tuning.job", "created_at": int(time.time()), "error": None,
                          "fine_tuned_model": None, "finished_at": None, "hyperparameters": hp, "model": req["model"],
                          "organization_id": "org-standin", "result_files": [], "seed": req.get("seed", 0),
                          "status": "validating_files", "trained_tokens": None, "training_file": req["training_file"],
                          "validation_file": None, "method": req["method"], "suffix": req.get("suffix"), "_polls": 0}
        self._event(jid, "Validating training file")
        return 200, self._public(self.jobs[jid])

    def retrieve_job(self, jid: str) -> dict:
        job = self.jobs[jid]
        job["_polls"] += 1
        if job["status"] == "validating_files":
            job["status"] = "running"
            self._event(jid, "Fine-tuning job started")
        elif job["status"] == "running" and job["_polls"] >= self.steps_to_finish:
            job.update(status="succeeded", finished_at=int(time.time()), trained_tokens=1000 * self.files[job["training_file"]]["lines"],
                       fine_tuned_model=f"ft:{job['model']}:org-standin:{job['suffix']}:{jid[-4:]}")
            self._event(jid, "The job has successfully completed")
        elif job["status"] == "running":
            self._event(jid, f"Step {job['_polls']}/{self.steps_to_finish}: training loss=0.5")
        return self._public(job)

    def _event(self, jid: str, message: str) -> None:
        events = self.events.setdefault(jid, [])
        events.append({"id": f"ftevent-{jid[-4:]}-{len(events):03d}", "object": "fine_tuning.job.event",
                       "created_at": int(time.time()) + len(events), "level": "info", "message": message, "type": "message"})

    @staticmethod
    def _public(job: dict) -> dict:
        return {k: v for k, v in job.items() if not k.startswith("_")}

    def answer(self, req: dict) -> str:
        # Deterministic and derived from the request: the answer is the question's length.
        question = req["messages"][-1]["content"]
        return json.dumps({"answer": len(question), "explanation": "stand-in for the OpenAI service"})

    # --- migration: the organisation's fine-tunes as the real service lists and serves them -----
    # Files API (retrieve, content, delete), fine_tuning.jobs list (cursor pages) and retrieve,
    # models.list, and chat for `ft:` models: answered by the stand-in, or forwarded to an
    # OpenAI-compatible server (a vLLM one on loopback) that plays the fine-tune. After a model's
    # shutdown day (`today` past it) its chat requests get the 404 `model_not_found` error the
    # real API gives for a retired model; `refuse_org` answers every fine-tuning and files
    # request with the 403 an organisation refused by the wind-down gets.
    def _migration_init(self):
        self.file_bytes: dict[str, bytes] = {}
        self.models: dict[str, dict] = {}  # id -> Model object
        self.forward: dict[str, tuple] = {}  # ft: model -> (base_url, served model name[, that server's key])
        self.shutdowns: dict[str, str] = {}  # ft: model -> ISO shutdown day
        self.today: str | None = None  # ISO day the stand-in believes it is (default: the real one)
        self.refuse_org = False
        self.page_size = 2  # jobs per page unless the client asks: pagination is exercised
        self.stored: list[dict] = []  # stored chat completions (store=true), oldest first
        self.stored_page = 3  # the most completions (and messages: 2) per page, whatever the client asks

    def add_file(self, data: bytes, filename: str, purpose: str = "fine-tune") -> str:
        fid = f"file-{len(self.files) + 1:04d}"
        self.files[fid] = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                           "filename": filename, "purpose": purpose, "status": "processed",
                           "lines": data.decode().count("\n")}
        self.file_bytes[fid] = data
        return fid

    def add_fine_tune(self, base: str, train: bytes, validation: bytes | None = None, suffix: str = "acme",
                      trained_tokens: int = 12345, shutdown: str | None = None, created_at: int = 1_750_000_000,
                      forward: tuple | None = None) -> tuple[str, str]:
        """A succeeded job and its `ft:` model; returns (job id, model id)."""
        jid = f"ftjob-{len(self.jobs) + 1:04d}"
        model = f"ft:{base}:org-standin:{suffix}:{jid[-4:]}"
        train_id = self.add_file(train, f"{suffix}-train.jsonl")
        val_id = self.add_file(validation, f"{suffix}-valid.jsonl") if validation is not None else None
        self.jobs[jid] = {"id": jid, "object": "fine_tuning.job", "created_at": created_at, "error": None,
                          "fine_tuned_model": model, "finished_at": created_at + 600,
                          "hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8},
                          "model": base, "organization_id": "org-standin", "result_files": [], "seed": 0,
                          "status": "succeeded", "trained_tokens": trained_tokens, "training_file": train_id,
                          "validation_file": val_id, "suffix": suffix, "_polls": 0,
                          "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}}
        self.models[model] = {"id": model, "object": "model", "created": created_at + 600,
                              "owned_by": "org-standin", "shutdown_date": shutdown}
        if shutdown:
            self.shutdowns[model] = shutdown
        if forward:
            self.forward[model] = forward
        return jid, model

    def add_stored(self, model: str, messages: list[dict], answer: str | None, metadata: dict | None = None,
                   finish_reason: str = "stop", created: int | None = None) -> str:
        """A stored chat completion of `model`: the request's messages and the answer it got."""
        cid = f"chatcmpl-stored-{len(self.stored) + 1:04d}"
        words = sum(len(str(m["content"]).split()) for m in messages)
        self.stored.append({"id": cid, "object": "chat.completion", "created": created or 1_764_000_000 + len(self.stored),
                            "model": model, "metadata": metadata or {}, "_messages": messages,
                            "choices": [{"index": 0, "finish_reason": finish_reason, "logprobs": None,
                                         "message": {"role": "assistant", "content": answer, "refusal": None}}],
                            "usage": {"prompt_tokens": words, "completion_tokens": len((answer or "").split()),
                                      "total_tokens": words + len((answer or "").split())}})
        return cid

    @staticmethod
    def _page(items: list[dict], query: dict, cap: int) -> dict:
        """A cursor page as the real lists give one: after=ID, limit (capped), first_id/last_id/has_more."""
        ids = [x["id"] for x in items]
        start = ids.index(query["after"]) + 1 if query.get("after") in ids else 0
        page = items[start:start + min(int(query.get("limit", cap)), cap)]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": start + len(page) < len(items)}

    def _stored_get(self, parts: list[str], query: dict) -> tuple[int, dict] | None:
        if parts[:3] != ["v1", "chat", "completions"] or len(parts) not in (3, 5):
            return None
        if len(parts) == 3:
            wanted = {k[len("metadata["):-1]: v for k, v in query.items() if k.startswith("metadata[")}
            found = [{k: v for k, v in c.items() if not k.startswith("_")} for c in self.stored
                     if c["model"] == query.get("model", c["model"]) and wanted.items() <= c["metadata"].items()]
            if query.get("order") == "desc":
                found.reverse()
            return 200, self._page(found, query, self.stored_page)
        hit = next((c for c in self.stored if c["id"] == parts[3]), None)
        if hit is None or parts[4] != "messages":
            return 404, {"error": {"message": f"No chat completion found with id '{parts[3]}'.",
                                   "type": "invalid_request_error", "param": None, "code": None}}
        messages = [{"id": f"{hit['id']}-{i}", "content_parts": None, **m} for i, m in enumerate(hit["_messages"])]
        return 200, self._page(messages, query, 2)

    def _refusal(self):
        return 403, {"error": {"message": "Fine-tuning is not available for your organization.",
                               "type": "invalid_request_error", "param": None, "code": "fine_tuning_unavailable"}}

    def _migration_get(self, parts: list[str], query: dict) -> tuple[int, dict | bytes] | None:
        """GET routes of this block; None for routes it does not own."""
        if parts[:2] == ["v1", "files"] and len(parts) in (3, 4):
            if self.refuse_org:
                return self._refusal()
            if parts[2] not in self.files:
                return 404, {"error": {"message": f"No such File object: {parts[2]}", "type": "invalid_request_error",
                                       "param": "id", "code": None}}
            return (200, self.file_bytes.get(parts[2], b"")) if parts[3:] == ["content"] else (200, self.files[parts[2]])
        if parts == ["v1", "models"]:
            return 200, {"object": "list", "data": list(self.models.values())}
        stored = self._stored_get(parts, query)
        if stored is not None:
            return stored
        if parts[:3] == ["v1", "fine_tuning", "jobs"] and self.refuse_org:
            return self._refusal()
        if parts == ["v1", "fine_tuning", "jobs"]:  # newest first, cursor pages as the real list
            jobs = sorted(self.jobs.values(), key=lambda j: j["created_at"], reverse=True)
            ids = [j["id"] for j in jobs]
            start = ids.index(query["after"]) + 1 if query.get("after") in ids else 0
            limit = int(query.get("limit", self.page_size))
            page = jobs[start:start + limit]
            return 200, {"object": "list", "data": [self._public(j) for j in page], "has_more": start + limit < len(jobs)}
        return None

    def _migration_delete(self, parts: list[str]) -> tuple[int, dict] | None:
        if parts[:2] == ["v1", "files"] and len(parts) == 3:
            existed = self.files.pop(parts[2], None) is not None
            self.file_bytes.pop(parts[2], None)
            return 200, {"id": parts[2], "object": "file", "deleted": existed}
        return None

    def _retired(self, model: str) -> dict | None:
        """The real API's answer to a chat request for a model past its shutdown day."""
        import datetime

        day = self.shutdowns.get(model)
        today = self.today or datetime.date.today().isoformat()
        if day is None or today <= day:
            return None
        return {"error": {"message": f"The model `{model}` does not exist or you do not have access to it.",
                          "type": "invalid_request_error", "param": None, "code": "model_not_found"}}

    # --- HTTP plumbing -------------------------------------------------------------------------
    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _json(self, status: int, obj: dict, headers: dict | None = None):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _unauthorized(self) -> bool:
                """The real API's 401 for a request without the right key (when the stand-in has one)."""
                standin.auth_headers.add(self.headers.get("Authorization", ""))
                if standin.key is None or self.headers.get("Authorization") == f"Bearer {standin.key}":
                    return False
                self._body()
                sent = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
                message = ("You didn't provide an API key." if not sent else
                           f"Incorrect API key provided: {sent[:3]}*****{sent[-4:]}. You can find your API key at "
                           "https://platform.openai.com/account/api-keys.")
                self._json(401, {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                           "code": None if not sent else "invalid_api_key"}})
                return True

            def _refused(self) -> bool:
                if self._unauthorized():
                    return True
                if standin.refuse_all is None:
                    return False
                status, code = standin.refuse_all
                self._body()
                self._json(status, {"error": {"message": f"refused by the stand-in: {code}", "type": code,
                                              "param": None, "code": code}})
                return True

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _bytes(self, status: int, data: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_DELETE(self):
                if self._refused():
                    return
                with standin.lock:
                    answer = standin._migration_delete(self.path.split("?")[0].strip("/").split("/"))
                self._json(*(answer or (404, {"error": {"message": f"no route {self.path}"}})))

            def do_GET(self):
                if self._refused():
                    return
                parts = self.path.split("?")[0].strip("/").split("/")
                from urllib.parse import parse_qsl, urlsplit

                with standin.lock:
                    answer = standin._migration_get(parts, dict(parse_qsl(urlsplit(self.path).query)))
                if answer is not None:
                    return self._bytes(*answer) if isinstance(answer[1], bytes) else self._json(*answer)
                with standin.lock:
                    if parts[:3] == ["v1", "fine_tuning", "jobs"] and len(parts) == 3:
                        return self._json(200, {"object": "list", "has_more": False,
                                                "data": [standin._public(j) for j in standin.jobs.values()]})
                    if parts[:3] == ["v1", "fine_tuning", "jobs"] and len(parts) == 4:
                        return self._json(200, standin.retrieve_job(parts[3]))
                    if parts[:3] == ["v1", "fine_tuning", "jobs"] and parts[4:] == ["events"]:
                        events = list(reversed(standin.events.get(parts[3], [])))  # newest first, as OpenAI
                        return self._json(200, {"object": "list", "data": events, "has_more": False})
                self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                if self._refused():
                    return
                body = self._body()
                path = self.path.split("?")[0]
                if path == "/v1/files":
                    with standin.lock:
                        return self._json(200, standin.upload(body, self.headers["Content-Type"]))
                if path == "/v1/fine_tuning/jobs":
                    with standin.lock:
                        return self._json(*standin.create_job(json.loads(body)))
                if path == "/v1/chat/completions":
                    return self._chat(json.loads(body))
                self._json(404, {"error": {"message": f"no route {self.path}"}})

            def _forward(self, req: dict, base_url: str, served: str, key: str | None = None):
                """Stream the request through to the server playing this fine-tune, bytes as they come; a request
                with store=true is stored as the real API stores it (its answer read off what passed through)."""
                import httpx

                upstream_req = {k: v for k, v in req.items() if k not in ("store", "metadata")} | {"model": served}
                body = b""
                auth = {"Authorization": f"Bearer {key}"} if key else {}
                with httpx.Client(trust_env=False) as http, http.stream(
                        "POST", f"{base_url}/chat/completions", json=upstream_req, headers=auth, timeout=300) as upstream:
                    self.send_response(upstream.status_code)
                    self.send_header("Content-Type", upstream.headers.get("content-type", "text/event-stream"))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for piece in upstream.iter_raw():
                        body += piece
                        self.wfile.write(piece)
                        self.wfile.flush()
                    ok = upstream.status_code == 200
                self.close_connection = True
                if ok and req.get("store"):
                    text, finish = _answer_of(body, bool(req.get("stream")))
                    with standin.lock:
                        standin.add_stored(req["model"], req["messages"], text, req.get("metadata"), finish)

            def _chat(self, req: dict):
                retired = standin._retired(req["model"])
                if retired is not None:
                    return self._json(404, retired)
                if req["model"] in standin.forward:
                    with standin.lock:
                        standin.chat_requests.append(req)
                    return self._forward(req, *standin.forward[req["model"]])
                with standin.lock:
                    standin.chat_requests.append(req)
                    fault = standin.chat_refusal or (standin.chat_faults.pop(0) if standin.chat_faults else None)
                if fault == "404":  # a model the endpoint does not serve
                    return self._json(404, {"error": {"message": f"The model `{req['model']}` does not exist or you "
                                                      "do not have access to it.", "type": "invalid_request_error",
                                                      "code": "model_not_found"}})
                if fault == "429":
                    return self._json(429, {"error": {"message": "Rate limit reached", "type": "requests"}},
                                      {"Retry-After": "0.2"})
                if fault == "401":  # a wrong key, not retried; this provider quotes the rejected key back, in full
                    auth = self.headers.get("Authorization", "")
                    return self._json(401, {"error": {"message": f"Incorrect API key provided: {auth}",
                                                      "type": "invalid_request_error", "code": "invalid_api_key"}})
                if fault == "500":
                    return self._json(500, {"error": {"message": "The server had an error", "type": "server_error"}})
                if fault == "slow":
                    time.sleep(3)  # past the client's timeout in the tests
                text = standin.answer(req)
                if req.get("store"):
                    with standin.lock:
                        standin.add_stored(req["model"], req["messages"], text, req.get("metadata"))
                pieces = [text[i:i + 8] for i in range(0, len(text), 8)]
                base = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": req["model"]}
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for i, piece in enumerate(pieces):
                    if fault == "drop" and i == 2:
                        self.wfile.flush()
                        self.connection.shutdown(2)  # the connection breaks mid-stream
                        return
                    chunk = base | {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(f"data: {json.dumps(base | {'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n".encode())
                if (req.get("stream_options") or {}).get("include_usage"):
                    prompt_tokens = sum(len(m["content"].split()) for m in req["messages"])
                    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
                             "total_tokens": prompt_tokens + len(pieces)}
                    self.wfile.write(f"data: {json.dumps(base | {'choices': [], 'usage': usage})}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        return Handler


def _answer_of(body: bytes, streamed: bool) -> tuple[str, str | None]:
    """The answer text and finish reason of a chat completion response (JSON, or server-sent events)."""
    if not streamed:
        choice = json.loads(body)["choices"][0]
        return choice["message"]["content"], choice.get("finish_reason")
    text, finish = "", None
    for line in body.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[6:]).get("choices") or []:
                text += (choice.get("delta") or {}).get("content") or ""
                finish = choice.get("finish_reason") or finish
    return text, finish


# --- migration: the stand-in as a process, for the walk-through in docs/migrate.md -----------------
def serve_main(argv: list[str] | None = None) -> None:
    """Serve one organisation with one fine-tune until killed; print its model id and URL."""
    import argparse
    import signal
    from pathlib import Path

    p = argparse.ArgumentParser(description="the OpenAI stand-in, holding one fine-tuning job and its ft: model")
    p.add_argument("--base", default="gpt-4o-mini-2024-07-18", help="the fine-tune's base model")
    p.add_argument("--train", required=True, type=Path, help="the job's training file")
    p.add_argument("--validation", type=Path, help="the job's validation file")
    p.add_argument("--forward", metavar="URL=MODEL", help="answer the fine-tune's chat requests with MODEL at URL")
    p.add_argument("--forward-key-env", metavar="NAME", help="the variable holding the key of the --forward server")
    p.add_argument("--suffix", default="acme")
    p.add_argument("--ready-file", type=Path, help="write `<model id> <base url>` here once serving")
    p.add_argument("--key-env", metavar="NAME", help="refuse every request without the key this variable holds (401)")
    p.add_argument("--traffic", type=Path, help="chat JSONL of prompts the 'product' sends the fine-tune at start, "
                                                "with store=true, so that they are stored completions")
    args = p.parse_args(argv)
    import os

    s = StandIn(key=os.environ[args.key_env] if args.key_env else None)
    forward = tuple(args.forward.split("=", 1)) if args.forward else None
    if forward and args.forward_key_env:
        forward = (*forward, os.environ[args.forward_key_env])
    _, model = s.add_fine_tune(args.base, args.train.read_bytes(),
                               args.validation.read_bytes() if args.validation else None, suffix=args.suffix,
                               forward=forward)
    with s:
        if args.traffic:
            send_traffic(s, model, args.traffic)
        if args.ready_file:
            args.ready_file.write_text(f"{model} {s.base_url}\n")
        print(f"{model} {s.base_url}", flush=True)
        try:
            signal.pause()  # until SIGINT (SIGTERM ends the process the default way)
        except KeyboardInterrupt:
            pass


def send_traffic(s: StandIn, model: str, path) -> None:
    """What a product using the fine-tune with store=true would have sent: each prompt, once, stored."""
    import openai

    import httpx

    c = openai.OpenAI(base_url=s.base_url, api_key=s.key or "none", max_retries=0,
                      http_client=httpx.Client(trust_env=False))  # loopback: never through a proxy
    for line in path.read_text().splitlines():
        messages = json.loads(line)["messages"]
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        c.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=64, store=True,
                                  metadata={"app": "walkthrough"})


if __name__ == "__main__":
    serve_main()
