"""The FastAPI application of ``w2p serve``.

Endpoints (OpenAI formats where OpenAI has one):
  GET  /                          the web page (static/index.html: upload or record, task or template, answer and
                                  "what the LLM hears")
  GET  /health                    {"status": "ok", ...}
  GET  /v1/models                 the one served model
  POST /v1/chat/completions       a user message with text parts and one ``input_audio`` part (base64): the text
                                  parts around the audio are the template, the audio is ``{speech}``.
                                  ``"w2p": {"readout": true}`` adds the readout (nearest LLM token, cosine and firing
                                  time of every prompt vector, and the CIF weights)
  POST /v1/audio/transcriptions   multipart ``file`` + ``model``: the asr task
  POST /v1/audio/translations     multipart ``file`` + ``model``: the st task (English speech -> French text)
  POST /v1/w2p/run                multipart ``file`` + ``task`` or ``template`` (+ ``question``): answer, readout and
                                  a waveform outline, for the page

Every error is ``{"error": {"message", "type", "param", "code"}}`` with a 4xx (the request was wrong; 413 too
large, 404 unknown model, 503 queue full) or 500 status. Decoding is deterministic (the pack's beam search):
``temperature`` must be 0 or absent and ``n`` 1.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import time
import uuid

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse

from w2p.serve.audio import SAMPLE_RATE, AudioDecodeError, decode_audio
from w2p.serve.engine import BatchEngine, QueueFull
from w2p.serve.engine import Request as Job
from w2p.tasks import TASKS, check_template, get_task

log = logging.getLogger(__name__)
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_NEW_TOKENS_CAP = 256


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else ("server_overloaded" if status == 503 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


class ServeConfig:
    def __init__(self, *, model_id: str, max_batch: int = 16, window_ms: float = 10.0, max_queue: int = 64,
                 max_seconds: float = 30.0, max_request_mb: float = 20.0):
        self.model_id, self.max_batch, self.window_ms, self.max_queue = model_id, max_batch, window_ms, max_queue
        self.max_seconds, self.max_bytes = float(max_seconds), int(max_request_mb * 1024 * 1024)


def create_app(pipe, config: ServeConfig):
    """The ASGI app serving ``pipe`` (a Wav2PromptPipeline). The batching worker starts and stops with the app."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    engine = BatchEngine(pipe, max_batch=config.max_batch, window_s=config.window_ms / 1000.0,
                         max_queue=config.max_queue)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="w2p serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.config, app.state.pipe = engine, config, pipe
    started = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return error_response(e.status, e.message, e.param, e.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        msg = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return error_response(e.status_code, msg)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e):
        return error_response(400, f"invalid request: {e.errors()}")

    @app.exception_handler(Exception)
    async def _internal(request, e):
        log.exception("internal error on %s", request.url.path)
        return error_response(500, f"internal error: {type(e).__name__}: {e}")

    # -- request helpers ---------------------------------------------------------------------------------------
    async def read_body(request: Request) -> bytes:
        """The body, refused with 413 past the size limit (also when no Content-Length announces it). An oversized
        body is read and dropped (up to 8x the limit) before answering, so the client, still sending, gets the 413
        rather than a broken connection; nothing past the limit is kept in memory."""
        cl = request.headers.get("content-length")
        announced = int(cl) if cl is not None and cl.isdigit() else None
        chunks, n = [], 0
        try:
            if announced is not None and announced > config.max_bytes:
                if announced <= 8 * config.max_bytes:
                    async for _ in request.stream():
                        pass
                raise APIError(413, f"request body of {announced} bytes is over the limit of {config.max_bytes} "
                               "bytes (--max_request_mb): send shorter or compressed audio", code="request_too_large")
            async for c in request.stream():
                n += len(c)
                if n > config.max_bytes:
                    raise APIError(413, f"request body over the limit of {config.max_bytes} bytes (--max_request_mb)"
                                   ": send shorter or compressed audio", code="request_too_large")
                chunks.append(c)
        except ClientDisconnect:
            raise APIError(400, "the client disconnected before the body was complete") from None
        return b"".join(chunks)

    async def read_json(request: Request) -> dict:
        raw = await read_body(request)
        if not raw.strip():
            raise APIError(400, "empty request body: send a JSON object (Content-Type: application/json)")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise APIError(400, f"request body must be a JSON object, got {type(body).__name__}")
        return body

    async def read_form(request: Request) -> dict:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise APIError(400, f"expected a multipart/form-data upload (file=@audio.wav, model=...), got Content-Type "
                           f"{ctype or 'none'!r}")
        raw = await read_body(request)
        if not raw:
            raise APIError(400, "empty request body: send a multipart form with a 'file' field", param="file")
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_part_size=config.max_bytes)
        except Exception as e:  # noqa: BLE001 - python-multipart raises several types for a malformed body
            raise APIError(400, f"malformed multipart body ({type(e).__name__}: {e})") from None
        out = {}
        for k, v in form.multi_items():
            if hasattr(v, "read"):
                out[k] = (getattr(v, "filename", None) or k, await v.read())
            else:
                out[k] = v
        return out

    def check_model(name, param="model"):
        if name is None or name == "":
            raise APIError(400, f"missing required field '{param}' (this server serves '{config.model_id}')",
                           param=param, code="missing_field")
        if name != config.model_id:
            raise APIError(404, f"the model '{name}' does not exist here; this server serves '{config.model_id}' "
                           "(GET /v1/models)", param=param, code="model_not_found")

    def max_tokens(value, default: int, param="max_tokens") -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit() \
                or not 1 <= int(value) <= MAX_NEW_TOKENS_CAP:
            raise APIError(400, f"{param} must be an integer from 1 to {MAX_NEW_TOKENS_CAP}, got {value!r}",
                           param=param)
        return int(value)

    def check_decoding(temperature, n):
        def num(v, kind):
            try:
                return None if v in (None, "") else kind(v)
            except (TypeError, ValueError):
                return float("nan")

        t = num(temperature, float)
        if t is not None and t != 0.0:
            raise APIError(400, f"temperature={temperature!r}: only deterministic decoding is served (temperature 0: "
                           "the model's beam/greedy search)", param="temperature")
        k = num(n, float)
        if k is not None and k != 1:
            raise APIError(400, f"n={n!r}: only one choice per request (n=1)", param="n")

    def audio_features(data: bytes, name: str):
        try:
            x = decode_audio(data, name)
        except AudioDecodeError as e:
            raise APIError(400, str(e), code="invalid_audio") from None
        sec = len(x) / SAMPLE_RATE
        if sec > config.max_seconds:
            raise APIError(400, f"{name}: {sec:.1f} s of audio, over the limit of {config.max_seconds:g} s "
                           "(--max_seconds): split it into shorter segments", code="audio_too_long")
        return x, pipe.features((x, SAMPLE_RATE))

    def task_template(task: str | None, template: str | None, question: str | None) -> tuple[str, int]:
        if template:
            tpl, default = template, 64
        else:
            try:
                t = get_task(task or "asr")
            except ValueError as e:
                raise APIError(400, str(e), param="task") from None
            if t.mode != "generate":
                raise APIError(400, f"task '{t.name}' is a closed-set choice over labels; the server runs generation"
                               f" tasks ({', '.join(k for k, v in TASKS.items() if v.mode == 'generate')}) or a "
                               "template", param="task")
            tpl, default = t.template, t.max_new_tokens
        if question is not None and "{question}" in tpl:
            tpl = tpl.replace("{question}", question)
        try:
            check_template(tpl)
        except ValueError as e:
            raise APIError(400, str(e), param="template" if template else "question") from None
        return tpl, default

    async def run(feats, tpl: str, max_new: int, readout: bool):
        job = Job(feats=feats, template=tpl, max_new_tokens=max_new, readout=readout)
        try:
            fut = engine.submit(job)
        except QueueFull as e:
            raise APIError(503, f"server busy: {e}", code="queue_full") from None
        try:
            return await asyncio.wrap_future(fut)
        except ValueError as e:  # the request itself cannot run (prompt longer than the LLM's context...)
            raise APIError(400, str(e)) from None

    # -- endpoints ---------------------------------------------------------------------------------------------
    @app.get("/")
    async def index():
        with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
            return HTMLResponse(f.read())

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": config.model_id, "queued": engine.queued, "batches": engine.batches,
                "max_batch_seen": engine.max_seen_batch}

    def model_card():
        return {"id": config.model_id, "object": "model", "created": started, "owned_by": "w2p"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name}")
    async def model(name: str):
        check_model(name)
        return model_card()

    @app.get("/v1/tasks")
    async def tasks():
        return {"tasks": [{"name": t.name, "template": t.template, "description": t.description}
                          for t in TASKS.values() if t.mode == "generate"]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await read_json(request)
        check_model(body.get("model"))
        if body.get("stream"):
            raise APIError(400, "stream=true is not supported: ask without streaming", param="stream")
        check_decoding(body.get("temperature"), body.get("n"))
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise APIError(400, "missing required field 'messages' (a list with a user message holding an "
                           "input_audio part)", param="messages", code="missing_field")
        pieces, system, audio = [], [], None
        for k, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user"):
                raise APIError(400, f"messages[{k}]: only system and user messages are served (one user turn), got "
                               f"{m.get('role') if isinstance(m, dict) else m!r}", param=f"messages[{k}]")
            content = m.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            if not isinstance(parts, list):
                raise APIError(400, f"messages[{k}].content must be a string or a list of parts",
                               param=f"messages[{k}].content")
            for j, p in enumerate(parts):
                where = f"messages[{k}].content[{j}]"
                kind = p.get("type") if isinstance(p, dict) else None
                if kind == "text" and isinstance(p.get("text"), str):
                    (system if m["role"] != "user" else pieces).append(p["text"].strip())
                elif kind == "input_audio" and m["role"] == "user":
                    if audio is not None:
                        raise APIError(400, f"{where}: a second input_audio part; send one audio per request",
                                       param=where)
                    ia = p.get("input_audio")
                    if not isinstance(ia, dict) or not isinstance(ia.get("data"), str) or not ia["data"]:
                        raise APIError(400, f"{where}: missing input_audio.data (base64 audio)",
                                       param=f"{where}.input_audio.data", code="missing_field")
                    try:
                        audio = base64.b64decode(ia["data"], validate=True)
                    except (binascii.Error, ValueError):
                        raise APIError(400, f"{where}: input_audio.data is not valid base64",
                                       param=f"{where}.input_audio.data", code="invalid_audio") from None
                    pieces.append("{speech}")
                else:
                    raise APIError(400, f"{where}: unsupported part {kind!r} (user messages take 'text' and "
                                   "'input_audio' parts, system messages text)", param=where)
        if audio is None:
            raise APIError(400, "no input_audio part in the user message: the audio fills {speech} of the "
                           "template made of the text parts around it", param="messages", code="missing_audio")
        if sum(x == "{speech}" for x in pieces) != 1 or "{speech}" in " ".join(system):
            raise APIError(400, "the text parts must not contain '{speech}' themselves", param="messages")
        tpl = " ".join(x for x in pieces if x)
        if system:
            tpl = "\n".join(x for x in system if x) + "\n" + tpl
        try:
            check_template(tpl)
        except ValueError as e:
            raise APIError(400, f"{e} (text parts may not hold other {{placeholders}})", param="messages") from None
        ext = body.get("w2p") or {}
        if not isinstance(ext, dict):
            raise APIError(400, "'w2p' must be an object such as {\"readout\": true}", param="w2p")
        max_new = max_tokens(body.get("max_completion_tokens", body.get("max_tokens")), 64)
        _, feats = await run_in_threadpool(audio_features, audio, "input_audio")
        res = await run(feats, tpl, max_new, bool(ext.get("readout")))
        out = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
               "model": config.model_id,
               "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                            "finish_reason": "length" if res.completion_tokens >= max_new else "stop"}],
               "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                         "total_tokens": res.prompt_tokens + res.completion_tokens}}
        if ext:
            out["w2p"] = {"template": tpl, "batch_size": res.batch_size}
            if res.readout is not None:
                out["w2p"]["readout"] = [res.readout]
        return out

    async def audio_task(request: Request, task: str):
        form = await read_form(request)
        if "file" not in form or not isinstance(form["file"], tuple):
            raise APIError(400, "missing required field 'file' (the audio upload)", param="file", code="missing_field")
        check_model(form.get("model"))
        check_decoding(form.get("temperature"), None)
        fmt = form.get("response_format") or "json"
        if fmt not in ("json", "text", "verbose_json"):
            raise APIError(400, f"response_format {fmt!r}: json, text or verbose_json", param="response_format")
        name, data = form["file"]
        tpl, default = task_template(task, None, None)
        x, feats = await run_in_threadpool(audio_features, data, name)
        res = await run(feats, tpl, default, fmt == "verbose_json")
        if fmt == "text":
            return PlainTextResponse(res.text + "\n")
        if fmt == "json":
            return {"text": res.text}
        return {"task": "transcribe" if task == "asr" else "translate", "duration": round(len(x) / SAMPLE_RATE, 3),
                "text": res.text, "w2p": {"template": tpl, "readout": [res.readout]}}

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        return await audio_task(request, "asr")

    @app.post("/v1/audio/translations")
    async def translations(request: Request):
        return await audio_task(request, "st")

    @app.post("/v1/w2p/run")
    async def w2p_run(request: Request):
        form = await read_form(request)
        if "file" not in form or not isinstance(form["file"], tuple):
            raise APIError(400, "missing required field 'file' (the audio upload)", param="file", code="missing_field")
        template = (form.get("template") or "").strip() or None
        tpl, default = task_template(form.get("task"), template, form.get("question"))
        max_new = max_tokens(form.get("max_tokens"), default)
        name, data = form["file"]
        x, feats = await run_in_threadpool(audio_features, data, name)
        t0 = time.monotonic()
        res = await run(feats, tpl, max_new, True)
        # the page draws the waveform from this outline (peak |sample| per bucket), so it needs no audio decoder
        n = max(1, min(1000, len(x)))
        peaks = np.abs(x[: len(x) // n * n].reshape(n, -1)).max(1) if len(x) >= n else np.abs(x)
        return {"text": res.text, "template": tpl, "duration": round(len(x) / SAMPLE_RATE, 3),
                "seconds": round(time.monotonic() - t0, 3), "readout": res.readout,
                "waveform": [round(float(p), 4) for p in peaks]}

    return app
