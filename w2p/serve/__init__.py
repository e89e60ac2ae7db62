"""Serving a packed model over HTTP (``w2p serve``): OpenAI-compatible endpoints, dynamic batching, a web page.

* :mod:`w2p.serve.audio`  request bytes -> 16 kHz mono float samples (soundfile, else ffmpeg for webm/opus/mp3...)
* :mod:`w2p.serve.engine` the dynamic batcher: requests gathered for a short window run through the encoder and
  the frozen LLM together; the readout (nearest LLM token, cosine, firing time of every prompt vector)
* :mod:`w2p.serve.app`    the FastAPI application (endpoints, limits, JSON errors) and the page under ``static/``
"""
