"""Serve a packed model over HTTP: OpenAI-compatible chat/transcription endpoints and a web page.

  w2p serve --model exp/packed [--port 8000] [--host 127.0.0.1]
  then open http://127.0.0.1:8000/ , or use the openai client with base_url="http://127.0.0.1:8000/v1"

Endpoints: POST /v1/chat/completions (a user message with text parts and one input_audio part: the text around the
audio is the template, the audio is {speech}; "w2p": {"readout": true} adds the nearest LLM token, cosine and
firing time of every prompt vector), POST /v1/audio/transcriptions (asr), POST /v1/audio/translations (st),
POST /v1/w2p/run (the page's call), GET /health, GET /v1/models, GET / (the page).
Requests arriving within --batch_window_ms are batched (up to --max_batch); beyond --max_queue waiting requests the
server answers 503. The server binds to 127.0.0.1 unless --host says otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from w2p.errors import cli_main, nonnegative_float, positive_float, positive_int


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="packed model dir (w2p pack-model / recipe stage 10)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the server to the network)")
    p.add_argument("--port", type=positive_int, default=8000)
    p.add_argument("--model_name", default=None, help="model id clients send (default: the pack dir's name)")
    p.add_argument("--llm", default=None, help="override the LLM source named in the pack's llm.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max_batch", type=positive_int, default=16, help="requests run together at most")
    p.add_argument("--batch_window_ms", type=nonnegative_float, default=10.0,
                   help="how long the first waiting request waits for others to join its batch")
    p.add_argument("--max_queue", type=positive_int, default=64, help="waiting requests beyond which 503 is sent")
    p.add_argument("--max_seconds", type=positive_float, default=30.0, help="longest audio accepted (s)")
    p.add_argument("--max_request_mb", type=positive_float, default=20.0, help="largest request body accepted (MiB)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def build(args):
    """(app, pipe) for parsed ``args`` (also used by the benchmark)."""
    import torch

    from w2p.infer import Wav2PromptPipeline
    from w2p.serve.app import ServeConfig, create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}, but this torch sees no CUDA device; use --device cpu")
    with contextlib.redirect_stdout(sys.stderr):
        pipe = Wav2PromptPipeline.from_pretrained(args.model, llm_source=args.llm, device=args.device,
                                                  max_seconds=args.max_seconds)
    name = args.model_name or os.path.basename(os.path.abspath(args.model))
    conf = ServeConfig(model_id=name, max_batch=args.max_batch, window_ms=args.batch_window_ms,
                       max_queue=args.max_queue, max_seconds=args.max_seconds, max_request_mb=args.max_request_mb)
    return create_app(pipe, conf), pipe


@cli_main
def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(levelname)s %(name)s %(message)s")
    import uvicorn

    app, _ = build(args)
    print(f"w2p serve: model '{app.state.config.model_id}' on http://{args.host}:{args.port}/ "
          f"(OpenAI base_url http://{args.host}:{args.port}/v1)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
