"""w2p serve: a real server (``python -m w2p.bin.serve``) on a free localhost port, called with the official openai
client, plain HTTP and a headless Chromium.

The served model is the tiny packed model of conftest (untrained) whose CIF weight predictor is fitted for a
fraction of a second to fire on speech frames and not on silence, which is what training teaches it; so firing
times can be checked against audio with a known silence without a trained model in CI.
"""
import base64
import concurrent.futures as cf
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "tiny"
SR = 16000


pytestmark = pytest.mark.usefixtures("one_thread")


def _say(text: str, path: str) -> np.ndarray:
    from w2p.data.audio import load_audio

    subprocess.run(["espeak-ng", "-v", "en-us", "-w", path, text], check=True, capture_output=True)
    return load_audio(path)


def _silence(sec: float) -> np.ndarray:
    return np.zeros(int(SR * sec), np.float32)


def _fit_cif_to_speech(model, clips: list[np.ndarray], features) -> None:
    """Fit the CIF weight predictor (only) so alpha is ~0.3 on speech frames (a token every ~130 ms) and at its
    floor on silence; speech/silence of an encoder frame from the fbank energy of its 4 fbank frames."""
    from w2p.decode import pad_feats

    feats, lens = pad_feats([features((c, SR)) for c in clips])
    with torch.no_grad():
        h, h_lens, _ = model.encode(feats, lens)
    target = torch.zeros(h.shape[:2])
    mask = torch.arange(h.shape[1])[None] < h_lens[:, None]
    for i in range(len(clips)):
        n, e = int(h_lens[i]), feats[i, :int(lens[i])].mean(1)
        speech = torch.nn.functional.pad((e > e.max() - 8).float(), (0, 4 * n))[:4 * n].view(n, 4).amax(1)
        target[i, :n] = 0.05 + 0.25 * speech
    opt = torch.optim.Adam(model.predictor.parameters(), lr=1e-2)
    model.train()
    for _ in range(200):
        loss = ((model.predictor(h, mask) - target) ** 2)[mask].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert float(loss.detach()) < 1e-3, float(loss.detach())


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Utterances (paths and 16 kHz arrays): a, b, a + 1 s silence + b, and a few more for the load test."""
    d = tmp_path_factory.mktemp("serve_wavs")
    texts = ["turn on the lights", "what time is it", "open the door", "call my sister please",
             "how is the weather today", "stop"]
    out = {}
    for i, t in enumerate(texts):
        out[f"u{i}"] = (str(d / f"u{i}.wav"), _say(t, str(d / f"u{i}.wav")))
    a, b = out["u0"][1], out["u1"][1]
    joined = np.concatenate([a, _silence(1.0), b])
    sf.write(str(d / "joined.wav"), joined, SR, subtype="PCM_16")
    out["joined"] = (str(d / "joined.wav"), joined)
    fit = [_say(t, str(d / f"fit{i}.wav")) for i, t in enumerate(["play some music", "set an alarm for seven",
                                                                   "read my messages", "book a table for two"])]
    out["_fit"] = [np.concatenate([_silence(0.3), fit[0], _silence(0.8), fit[1]]),
                   np.concatenate([fit[2], _silence(0.5), fit[3], _silence(0.4)])]
    return out


@pytest.fixture(scope="module")
def serve_pack(packed, llm, speech, tmp_path_factory):
    """(pack dir, in-process pipeline on the same weights): conftest's pack with a speech-aware CIF."""
    from safetensors.torch import save_file

    from w2p.infer import Wav2PromptPipeline

    out = str(tmp_path_factory.mktemp("serve") / MODEL)
    shutil.copytree(packed[0], out)
    pipe = Wav2PromptPipeline.from_pretrained(out, llm=llm)
    _fit_cif_to_speech(pipe.model, speech["_fit"], pipe.features)
    save_file({k: v.contiguous() for k, v in pipe.model.state_dict().items()}, os.path.join(out, "model.safetensors"))
    return out, pipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc=None, timeout: float = 180.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if json.load(r)["status"] == "ok":
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.3)
    raise RuntimeError(f"server at {url} not up after {timeout} s")


@pytest.fixture(scope="module")
def server(serve_pack):
    """``python -m w2p.bin.serve`` on a free port (small limits, so the bad-request tests can reach them)."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "w2p.bin.serve", "--model", serve_pack[0], "--port", str(port), "--threads", "1",
           "--max_seconds", "8", "--max_request_mb", "1", "--batch_window_ms", "50", "--max_batch", "8",
           "--max_queue", "64", "--log_level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _post(url: str, body: bytes | None, ctype: str | None = "application/json", timeout: float = 120):
    """(status, parsed JSON or text) of a POST, for error statuses too."""
    req = urllib.request.Request(url, data=body if body is not None else b"", method="POST",
                                 headers={"Content-Type": ctype} if ctype else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw.decode()


def _multipart(fields: dict) -> tuple[bytes, str]:
    """A multipart/form-data body; a value given as (filename, bytes) is a file part."""
    boundary = "w2pTestBoundary7MA4YWxkTrZu0gW"
    buf = io.BytesIO()
    for k, v in fields.items():
        buf.write(f"--{boundary}\r\n".encode())
        if isinstance(v, tuple):
            buf.write(f'Content-Disposition: form-data; name="{k}"; filename="{v[0]}"\r\n'
                      "Content-Type: application/octet-stream\r\n\r\n".encode())
            buf.write(v[1])
        else:
            buf.write(f'Content-Disposition: form-data; name="{k}"\r\n\r\n{v}'.encode())
        buf.write(b"\r\n")
    buf.write(f"--{boundary}--\r\n".encode())
    return buf.getvalue(), f"multipart/form-data; boundary={boundary}"


def _chat_body(audio: bytes, text: str = "Repeat the following sentence:", max_tokens: int = 8, **extra) -> bytes:
    return json.dumps(dict({"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
        {"type": "text", "text": text},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(audio).decode(), "format": "wav"}}]}]},
        **extra)).encode()


def _wav_bytes(x: np.ndarray) -> bytes:
    b = io.BytesIO()
    sf.write(b, x, SR, format="WAV", subtype="PCM_16")
    return b.getvalue()


def _chat(url, path, **kw):
    status, j = _post(url + "/v1/chat/completions", _chat_body(open(path, "rb").read(), **kw))
    assert status == 200, j
    return j


# -- the openai client -----------------------------------------------------------------------------------------
def test_openai_client_chat_transcriptions_translations(server, serve_pack, speech):
    from openai import OpenAI

    _, pipe = serve_pack
    path = speech["u0"][0]
    client = OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]
    audio = base64.b64encode(open(path, "rb").read()).decode()
    r = client.chat.completions.create(model=MODEL, max_tokens=6, temperature=0, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Translate into French:"},
        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]}],
        extra_body={"w2p": {"readout": True}})
    # the text parts around the audio are the template: the same answer as the Python API with that template
    want = pipe.generate([path], template="Translate into French: {speech}", max_new_tokens=6)[0]
    assert r.choices[0].message.content == want and want
    assert r.choices[0].message.role == "assistant" and r.model == MODEL
    assert 1 <= r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 10
    ext = r.model_extra["w2p"]
    assert ext["template"] == "Translate into French: {speech}"
    toks = ext["readout"][0]["tokens"]
    assert len(toks) == pipe.prompts([path])[0].shape[0] > 0
    assert all(-1 <= t["cosine"] <= 1 and isinstance(t["token"], str) for t in toks)

    with open(path, "rb") as f:
        tr = client.audio.transcriptions.create(model=MODEL, file=f)
    assert tr.text == pipe.generate([path], task="asr")[0]
    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # this client marks translations deprecated; it works
        st = client.audio.translations.create(model=MODEL, file=f)
    assert st.text == pipe.generate([path], task="st")[0]
    with urllib.request.urlopen(server + "/health") as h:
        assert json.load(h)["status"] == "ok"


def test_max_tokens_and_the_page_endpoint(server, serve_pack, speech):
    _, pipe = serve_pack
    path = speech["u1"][0]
    j = _chat(server, path, max_tokens=3)
    assert j["usage"]["completion_tokens"] <= 3 and j["choices"][0]["finish_reason"] in ("length", "stop")
    body, ctype = _multipart({"file": ("u1.wav", open(path, "rb").read()), "task": "sqa",
                              "question": "What is asked?", "max_tokens": "5"})
    status, j = _post(server + "/v1/w2p/run", body, ctype)
    assert status == 200, j
    assert j["template"] == "{speech}\nWhat is asked? Answer in a few words."
    assert j["text"] == pipe.generate([path], task="sqa", question="What is asked?", max_new_tokens=5)[0]
    assert abs(j["duration"] - len(speech["u1"][1]) / SR) < 1e-3 and 0 < len(j["waveform"]) <= 1000
    # transcriptions: verbose_json carries the readout, text is the bare answer
    body, ctype = _multipart({"file": ("u1.wav", open(path, "rb").read()), "model": MODEL,
                              "response_format": "verbose_json"})
    status, v = _post(server + "/v1/audio/transcriptions", body, ctype)
    assert status == 200 and v["text"] == pipe.generate([path], task="asr")[0], v
    assert [t["id"] for t in v["w2p"]["readout"][0]["tokens"]] == \
        pipe.llm.nearest_tokens(pipe.prompts([path])[0])
    body, ctype = _multipart({"file": ("u1.wav", open(path, "rb").read()), "model": MODEL, "response_format": "text"})
    assert _post(server + "/v1/audio/transcriptions", body, ctype) == (200, v["text"] + "\n")


# -- bad requests ----------------------------------------------------------------------------------------------
def test_bad_requests_get_a_4xx_json_error_and_the_server_goes_on(server, speech, tmp_path):
    wav = open(speech["u0"][0], "rb").read()
    truncated = wav[:len(wav) // 3]
    long_audio = _wav_bytes(np.tile(speech["u1"][1], 10)[: SR * 10])  # 10 s > --max_seconds 8, < 1 MiB
    assert len(long_audio) < 1024 * 1024
    big = _wav_bytes(np.zeros(SR * 40, np.float32))  # 1.3 MB > --max_request_mb 1
    # an HLS playlist would make an unrestricted ffmpeg read a server-side file: only audio demuxers are allowed
    playlist = f"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:1.0,\nfile://{speech['u0'][0]}\n#EXT-X-ENDLIST\n".encode()
    chat, tr, run = server + "/v1/chat/completions", server + "/v1/audio/transcriptions", server + "/v1/w2p/run"
    cases = [  # (what, url, body, content type, status, words the message must hold)
        ("not audio (chat)", chat, _chat_body(b"hello, this is text"), "application/json", 400, "not decodable"),
        ("not base64", chat, _chat_body(wav).replace(b'"data": "', b'"data": "%%'), "application/json", 400,
         "base64"),
        ("not audio (upload)", tr, *_multipart({"file": ("notes.txt", b"just text"), "model": MODEL}), 400,
         "notes.txt"),
        ("a playlist naming a local file", tr, *_multipart({"file": ("list.m3u8", playlist), "model": MODEL}), 400,
         "not decodable"),
        ("truncated wav", tr, *_multipart({"file": ("cut.wav", truncated), "model": MODEL}), 400, "truncated"),
        ("over the length limit", chat, _chat_body(long_audio), "application/json", 400, "over the limit of 8"),
        ("over the size limit", tr, *_multipart({"file": ("big.wav", big), "model": MODEL}), 413, "over the limit"),
        ("unknown model", tr, *_multipart({"file": ("a.wav", wav), "model": "whisper-1"}), 404, "whisper-1"),
        ("unknown task", run, *_multipart({"file": ("a.wav", wav), "task": "summarise"}), 400, "unknown task"),
        ("choice task", run, *_multipart({"file": ("a.wav", wav), "task": "slu"}), 400, "closed-set"),
        ("template without {speech}", run, *_multipart({"file": ("a.wav", wav), "template": "Translate this"}),
         400, "{speech}"),
        ("chat without input_audio", chat, json.dumps({"model": MODEL, "messages": [
            {"role": "user", "content": "hello"}]}).encode(), "application/json", 400, "input_audio"),
        ("missing field: messages", chat, json.dumps({"model": MODEL}).encode(), "application/json", 400,
         "messages"),
        ("missing field: model", tr, *_multipart({"file": ("a.wav", wav)}), 400, "model"),
        ("missing field: file", tr, *_multipart({"model": MODEL}), 400, "file"),
        ("sqa without its question", run, *_multipart({"file": ("a.wav", wav), "task": "sqa"}), 400, "question"),
        ("empty body (chat)", chat, b"", "application/json", 400, "empty"),
        ("empty body (upload)", tr, b"", None, 400, "multipart"),
        ("not JSON", chat, b"{model: tiny", "application/json", 400, "not valid JSON"),
        ("temperature > 0", chat, _chat_body(wav, temperature=0.8), "application/json", 400, "temperature"),
        ("n = 2", chat, _chat_body(wav, n=2), "application/json", 400, "n=2"),
        ("temperature not a number", chat, _chat_body(wav, temperature="hot"), "application/json", 400,
         "temperature"),
        ("max_tokens = 0", chat, _chat_body(wav, max_tokens=0), "application/json", 400, "max_tokens"),
        ("unknown route", server + "/v1/completions", b"{}", "application/json", 404, "no route"),
    ]
    seen = []
    for what, url, body, ctype, want, words in cases:
        status, j = _post(url, body, ctype)
        seen.append(f"{status} {what}")
        assert status == want, (what, status, j)
        assert isinstance(j, dict) and set(j["error"]) >= {"message", "type", "param", "code"}, (what, j)
        assert words.lower() in j["error"]["message"].lower(), (what, j)
    print("\n".join(seen))  # the list in the note (pytest -s)
    # the server still answers a good request
    assert _chat(server, speech["u0"][0])["choices"][0]["message"]["content"]


# -- batching --------------------------------------------------------------------------------------------------
def test_concurrent_load_equals_one_at_a_time(server, speech):
    paths = [speech[f"u{i}"][0] for i in range(6)]

    def ask(p):
        j = _chat(server, p, max_tokens=8, w2p={"readout": True})
        return j["choices"][0]["message"]["content"], [t["id"] for t in j["w2p"]["readout"][0]["tokens"]]

    alone = {p: ask(p) for p in paths}
    with urllib.request.urlopen(server + "/health") as h:
        before = json.load(h)["batches"]
    jobs = [paths[i % len(paths)] for i in range(16)]
    with cf.ThreadPoolExecutor(8) as ex:  # 16 requests from 8 clients; every one must come back
        futs = [ex.submit(ask, p) for p in jobs]
        got = [f.result(timeout=300) for f in futs]
    assert len(got) == len(jobs)
    for p, g in zip(jobs, got):
        assert g == alone[p], (p, g, alone[p])
    with urllib.request.urlopen(server + "/health") as h:
        health = json.load(h)
    assert health["max_batch_seen"] > 1 and health["batches"] - before < len(jobs)  # they really were batched


def test_batched_beam_search_equals_one_at_a_time(serve_pack, speech):
    """The engine's batch (padded encoder pass, left-padded prompts of different lengths, beam 3) gives every request
    the answer and readout it gets alone."""
    from w2p.serve.engine import BatchEngine, Request

    _, pipe = serve_pack
    pipe.decode = dict(pipe.decode, beam=3)
    try:
        eng = BatchEngine(pipe, max_batch=8)
        reqs = [Request(pipe.features((speech[k][1], SR)), tpl, 6, readout=True)
                for k, tpl in [("u4", "Say {speech} in German"), ("joined", "Repeat the following sentence: {speech}"),
                               ("u5", "{speech}")]]
        together = eng.run_batch(reqs)
        for r, t in zip(reqs, together):
            alone = eng.run_batch([Request(r.feats, r.template, 6, readout=True)])[0]
            assert t.text == alone.text and t.batch_size == 3
            assert [x["id"] for x in t.readout["tokens"]] == [x["id"] for x in alone.readout["tokens"]]
            assert [x["time"] for x in t.readout["tokens"]] == [x["time"] for x in alone.readout["tokens"]]
    finally:
        pipe.decode = dict(pipe.decode, beam=1)


def test_queue_bound_answers_503(serve_pack, speech):
    """A server whose queue holds one request: concurrent requests beyond it get 503 at once, nothing waits
    unboundedly, and the server answers normally afterwards."""
    import uvicorn

    from w2p.serve.app import ServeConfig, create_app

    _, pipe = serve_pack
    app = create_app(pipe, ServeConfig(model_id=MODEL, max_batch=1, window_ms=0, max_queue=1))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, timeout=30)
        body = _chat_body(open(speech["u3"][0], "rb").read(), max_tokens=16)
        with cf.ThreadPoolExecutor(8) as ex:
            got = list(ex.map(lambda _: _post(url + "/v1/chat/completions", body), range(8)))
        codes = sorted(s for s, _ in got)
        assert 503 in codes and 200 in codes and set(codes) == {200, 503}, codes
        assert all(j["error"]["code"] == "queue_full" for s, j in got if s == 503)
        answers = {j["choices"][0]["message"]["content"] for s, j in got if s == 200}
        assert len(answers) == 1
        assert _post(url + "/v1/chat/completions", body)[0] == 200
    finally:
        srv.should_exit = True
        th.join(30)


# -- timestamps ------------------------------------------------------------------------------------------------
def test_readout_timestamps_follow_the_audio(server, speech):
    def times(key):
        j = _chat(server, speech[key][0], max_tokens=1, w2p={"readout": True})
        ro = j["w2p"]["readout"][0]
        return [t["time"] for t in ro["tokens"]], ro

    a, b = len(speech["u0"][1]) / SR, len(speech["u1"][1]) / SR
    tb, _ = times("u1")
    tj, ro = times("joined")
    dur = a + 1.0 + b
    assert ro["frame_shift"] == pytest.approx(0.04)  # 10 ms fbank shift x 4 (subsampling)
    assert len(ro["alphas"]) == pytest.approx(dur / 0.04, abs=2)
    for t in (tb, tj):
        assert t == sorted(t) and len(set(t)) == len(t), t  # one firing per encoder frame at most, in order
        assert all(0 <= x <= dur for x in t), t
    sil_start, sil_end = a, a + 1.0
    # the second utterance's tokens (as many as it has alone) all fire after the silence, at about the times they
    # fire alone shifted by where it starts; the silence itself holds at most one firing (alpha's floor 0.05 x 25)
    second = tj[-len(tb):]
    assert all(x >= sil_end - 0.04 for x in second), (tj, sil_end)
    assert np.allclose(np.array(second) - sil_end, tb, atol=0.2), (second, tb)
    assert sum(sil_start + 0.1 < x < sil_end - 0.04 for x in tj) <= 1, tj
    assert sum(x < sil_start + 0.1 for x in tj) >= 3, tj  # the first utterance's tokens fire before it


def test_webm_opus_from_a_browser_recorder_is_decoded(server, speech, tmp_path):
    src = speech["u0"][0]
    webm = str(tmp_path / "rec.webm")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", src, "-c:a", "libopus", "-f", "webm", webm],
                   check=True)
    body, ctype = _multipart({"file": ("recording.webm", open(webm, "rb").read()), "task": "asr"})
    status, j = _post(server + "/v1/w2p/run", body, ctype)
    assert status == 200, j
    assert abs(j["duration"] - len(speech["u0"][1]) / SR) < 0.08 and j["readout"]["tokens"]


# -- the page in a real browser --------------------------------------------------------------------------------
def test_page_in_headless_chromium(server, speech, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert chromium and driver, "tools/install.sh installs Debian's chromium and chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    path = speech["joined"][0]
    # the microphone: Chromium's fake capture device plays a wav into getUserMedia, MediaRecorder makes webm/opus
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1180,1220",
              "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
              f"--use-file-for-fake-audio-capture={path}"):
        opts.add_argument(a)
    body, ctype = _multipart({"file": ("joined.wav", open(path, "rb").read()), "task": "asr"})
    status, want = _post(server + "/v1/w2p/run", body, ctype)
    assert status == 200
    d = webdriver.Chrome(options=opts, service=Service(driver))
    try:
        d.get(server + "/")
        WebDriverWait(d, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#task option"))
        d.find_element(By.ID, "file").send_keys(path)
        d.find_element(By.ID, "run").click()
        WebDriverWait(d, 120).until(lambda d: d.find_element(By.ID, "status").text != "running...")
        assert d.find_element(By.ID, "status").text == "done", d.find_element(By.ID, "status").text
        assert d.find_element(By.ID, "answer").text == want["text"] != ""
        toks = d.find_elements(By.CSS_SELECTOR, "#tokens text.tok")
        assert [t.text for t in toks] == [t["token"] for t in want["readout"]["tokens"]]
        xs = [float(t.get_attribute("x")) for t in toks]
        assert xs == sorted(xs)  # laid out along the time axis
        assert d.find_elements(By.CSS_SELECTOR, "#timeline polyline.alpha")
        assert len(d.find_elements(By.CSS_SELECTOR, "#timeline line.fire")) == len(toks)
        d.execute_script("document.getElementById('answer').scrollIntoView()")
        shot = os.environ.get("W2P_SERVE_SCREENSHOT") or str(tmp_path / "serve_page.png")
        assert d.save_screenshot(shot) and os.path.getsize(shot) > 10000

        # record from the microphone for ~1.5 s, stop, run: the browser's webm/opus goes through ffmpeg
        d.find_element(By.ID, "rec").click()
        WebDriverWait(d, 10).until(lambda d: d.find_element(By.ID, "recinfo").text == "recording...")
        time.sleep(1.5)
        d.find_element(By.ID, "rec").click()
        WebDriverWait(d, 10).until(lambda d: d.find_element(By.ID, "recinfo").text.startswith("recorded"))
        d.find_element(By.ID, "run").click()
        WebDriverWait(d, 120).until(lambda d: d.find_element(By.ID, "status").text != "running...")
        assert d.find_element(By.ID, "status").text == "done", d.find_element(By.ID, "status").text
        dur = float(d.find_element(By.ID, "template_used").text.split("(")[1].split(" s of audio")[0])
        assert 0.8 < dur < len(speech["joined"][1]) / SR - 0.5, dur  # the recording, not the uploaded file
        assert d.find_elements(By.CSS_SELECTOR, "#tokens text.tok")
    finally:
        d.quit()
