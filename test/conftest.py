"""Shared fixtures. ``llm``: the default frozen LLM, loaded once per test session (converted from the GGUF into
<repo>/tools/cache/llm/ the first time, ~20 s; later loads take about a second)."""
import pytest
import torch


@pytest.fixture(scope="session")
def llm():
    from w2p.llm import DEFAULT_LLM, FrozenLLM

    return FrozenLLM.load(DEFAULT_LLM, dtype=torch.float32, device="cpu")
