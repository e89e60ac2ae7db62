"""Benchmark w2p serve: requests/s and p50/p95 latency at 1, 8 and 32 concurrent clients, against w2p-infer once per
request.

  w2p benchmark-serve --model exp/packed/wav2prompt [--concurrency 1 8 32] [--task asr] [--wav a.wav ...]

The server (``python -m w2p.bin.serve``) runs in its own process on a free localhost port with --max_batch at the
largest concurrency. Each level sends a fixed number of /v1/chat/completions requests (the task's template around
the audio) from that many client threads, after two warm-up requests; requests/s = requests / wall time of the
level. The baseline starts ``python -m w2p.bin.infer`` for each request (what a user without the server does),
model loading included. Audio: the --wav files, or short espeak-ng sentences. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from w2p.errors import cli_main, nonnegative_float, nonnegative_int, positive_int

SENTENCES = ["turn on the lights in the kitchen", "what time is it now", "please open the door",
             "call my sister tomorrow morning", "how is the weather today", "play some music",
             "set an alarm for seven", "where is the nearest station"]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="packed model dir")
    p.add_argument("--concurrency", type=positive_int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=positive_int, default=None,
                   help="requests per level (default: max(8, 2 x clients))")
    p.add_argument("--task", default="asr", help="the task whose template is sent (generation tasks)")
    p.add_argument("--max_tokens", type=positive_int, default=None, help="default: the task's")
    p.add_argument("--wav", action="append", default=[], help="audio to send (repeatable; default: espeak-ng)")
    p.add_argument("--infer_runs", type=nonnegative_int, default=3, help="w2p-infer runs of the baseline (0: skip)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads of the server and w2p-infer")
    p.add_argument("--batch_window_ms", type=nonnegative_float, default=20.0)
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))]


def _chat_body(audio: bytes, template: str, model: str, max_tokens: int) -> bytes:
    before, after = template.split("{speech}")
    parts = ([{"type": "text", "text": before.strip()}] if before.strip() else []) + \
        [{"type": "input_audio", "input_audio": {"data": base64.b64encode(audio).decode(), "format": "wav"}}] + \
        ([{"type": "text", "text": after.strip()}] if after.strip() else [])
    return json.dumps({"model": model, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": parts}]}).encode()


def _post(url: str, body: bytes) -> dict:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.load(r)


def run_level(url: str, bodies: list[bytes], clients: int, n: int) -> dict:
    lat: list[float] = []
    lock = threading.Lock()

    def one(i):
        t0 = time.monotonic()
        _post(url, bodies[i % len(bodies)])
        with lock:
            lat.append(time.monotonic() - t0)

    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(clients) as ex:
        for f in [ex.submit(one, i) for i in range(n)]:
            f.result()
    wall = time.monotonic() - t0
    return {"requests": n, "rps": n / wall, "p50": _pct(lat, 0.5), "p95": _pct(lat, 0.95), "wall": wall}


@cli_main
def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    from w2p.tasks import get_task

    task = get_task(args.task)
    if task.mode != "generate" or task.fields:
        raise ValueError(f"--task {args.task}: give a generation task without extra fields (asr, st, sqqa)")
    max_tokens = args.max_tokens or task.max_new_tokens
    if not os.path.isfile(os.path.join(args.model, "model.safetensors")):
        raise FileNotFoundError(f"{args.model}: not a packed model dir")
    tmp = tempfile.mkdtemp(prefix="w2p-bench-")
    wavs = list(args.wav)
    if not wavs:
        for i, s in enumerate(SENTENCES):
            wavs.append(os.path.join(tmp, f"s{i}.wav"))
            subprocess.run(["espeak-ng", "-v", "en-us", "-w", wavs[-1], s], check=True, capture_output=True)
    model_id = "bench"
    bodies = [_chat_body(open(w, "rb").read(), task.template, model_id, max_tokens) for w in wavs]
    port = _free_port()
    threads = ["--threads", str(args.threads)] if args.threads else []
    cmd = [sys.executable, "-m", "w2p.bin.serve", "--model", args.model, "--model_name", model_id, "--port",
           str(port), "--max_batch", str(max(args.concurrency)), "--max_queue", str(4 * max(args.concurrency) + 64),
           "--batch_window_ms", str(args.batch_window_ms), "--log_level", "warning"] + threads
    log = open(os.path.join(tmp, "server.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode}); see {log.name}")
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() - t0 > 300:
                    raise RuntimeError(f"the server did not start in 300 s; see {log.name}") from None
                time.sleep(0.5)
        for b in bodies[:2]:  # warm-up
            _post(url + "/v1/chat/completions", b)
        for c in args.concurrency:
            n = args.requests or max(8, 2 * c)
            r = run_level(url + "/v1/chat/completions", bodies, c, n)
            rows.append((f"w2p serve, {c} client{'s' if c > 1 else ''}", r))
            print(f"# {rows[-1][0]}: {r['rps']:.2f} req/s", file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    if args.infer_runs:
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
        lat = []
        for i in range(args.infer_runs):
            t = time.monotonic()
            subprocess.run([sys.executable, "-m", "w2p.bin.infer", "--model", args.model, "--task", args.task,
                            "--max_new_tokens", str(max_tokens), "--wav", wavs[i % len(wavs)]], check=True,
                           capture_output=True, env=env)
            lat.append(time.monotonic() - t)
        rows.append(("w2p-infer per request (1 at a time)", {"requests": len(lat), "rps": len(lat) / sum(lat),
                                                               "p50": _pct(lat, 0.5), "p95": _pct(lat, 0.95)}))
    print(f"\nmodel {args.model}, task {args.task} (max_tokens {max_tokens}), {len(wavs)} distinct utterances, "
          f"torch threads {args.threads or 'default'}, batch window {args.batch_window_ms:g} ms\n")
    print("| setup | requests | requests/s | p50 latency (s) | p95 latency (s) |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['requests']} | {r['rps']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} |")
    by_c = {c: r for c, (_, r) in zip(args.concurrency, rows)}
    if 1 in by_c and max(args.concurrency) > 1:
        c = max(args.concurrency)
        print(f"\nthroughput at {c} clients / at 1 client: {by_c[c]['rps'] / by_c[1]['rps']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
