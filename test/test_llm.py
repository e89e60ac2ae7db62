"""FrozenLLM: offline conversion/caching, frozen parameters, exact speech splice, CE gradients, generation."""
import os

import pytest
import torch

from w2p.llm import DEFAULT_LLM, resolve_llm

TEMPLATE = "Repeat the following sentence exactly.\n{speech}"


def test_default_llm_is_cached_as_safetensors(llm):
    path = resolve_llm(DEFAULT_LLM)
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    assert os.path.isfile(os.path.join(path, "config.json"))
    assert llm.embed_dim == 576 and llm.vocab_size == 49152
    # a HF dir is accepted as is
    assert resolve_llm(path) == path


def test_unknown_source_has_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="unknown LLM source"):
        resolve_llm("no-such-llm", cache_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        resolve_llm(str(tmp_path / "x.gguf"), cache_root=str(tmp_path))


def test_frozen_and_always_eval(llm):
    assert all(not p.requires_grad for p in llm.model.parameters())
    llm.train()
    assert not llm.model.training
    # the HF model is not a registered submodule: holders never checkpoint/optimise the LLM
    holder = torch.nn.Module()
    holder.llm = llm
    assert len(holder.state_dict()) == 0 and len(list(holder.parameters())) == 0


def test_tokenize_has_no_special_tokens(llm):
    ids = llm.tokenize(["hello world", "the cat sat on the mat"])
    specials = set(llm.tokenizer.all_special_ids)
    assert all(i not in specials for seq in ids for i in seq)
    assert llm.tokenizer.decode(ids[1]) == "the cat sat on the mat"


def test_splice_is_exact(llm):
    sents = ["the weather is nice today", "please call my sister tomorrow morning"]
    speech = [llm.embed(torch.tensor(ids)) for ids in llm.tokenize(sents)]
    spliced = llm.build_inputs(TEMPLATE, speech)
    text = llm.build_inputs(TEMPLATE, sents)
    assert torch.equal(spliced.attention_mask, text.attention_mask)
    assert torch.equal(spliced.inputs_embeds, text.inputs_embeds)
    # ...and both equal the plain chat prompt tokenised in one go (left-padded)
    for i, s in enumerate(sents):
        plain = llm.render(TEMPLATE.replace("{speech}", s))
        ids = llm.tokenizer(plain, add_special_tokens=False)["input_ids"]
        n = len(ids)
        assert int(text.attention_mask[i].sum()) == n
        assert torch.equal(text.inputs_embeds[i, -n:], llm.embed(torch.tensor(ids)))
    out_speech = llm.generate(spliced, max_new_tokens=10, num_beams=2)
    out_text = llm.generate(text, max_new_tokens=10, num_beams=2)
    assert out_speech == out_text
    assert all(len(o) > 0 for o in out_text)


def test_padding_does_not_change_generation(llm):
    short, long = "good morning", "could you tell me the way to the nearest train station please"
    alone = llm.generate(llm.build_inputs(TEMPLATE, [short]), max_new_tokens=10, num_beams=1)
    batched = llm.generate(llm.build_inputs(TEMPLATE, [long, short]), max_new_tokens=10, num_beams=1)
    assert alone[0] == batched[1]


def test_padding_does_not_change_beam_search(llm):
    """The server batches requests of different prompt lengths and templates: left padding, the attention mask and
    the position ids, with or without the shared prefix cache, must leave every row's beam search as it is alone
    (the one-at-a-time oracle)."""
    texts = ["could you tell me the way to the nearest train station please", "stop", "good morning"]
    templates = [TEMPLATE, TEMPLATE, "Say it in German: {speech}"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CPU: one thread is much faster under contention
    try:
        inputs = llm.build_inputs(templates, texts)
        assert inputs.prefix_ids and len(inputs.prefix_ids) > 5  # the chat system turn at least
        together = llm.generate(inputs, max_new_tokens=6, num_beams=2)
        shared = llm.generate(inputs, max_new_tokens=6, num_beams=2, share_prefix=True)
        alone = [llm.generate(llm.build_inputs(tpl, [t]), max_new_tokens=6, num_beams=2)[0]
                 for tpl, t in zip(templates, texts)]
    finally:
        torch.set_num_threads(n)
    assert together == alone and shared == alone


def test_fields_and_errors(llm):
    inp = llm.build_inputs("Answer {question} about {speech}", ["x"], question=["why"])
    assert inp.inputs_embeds.shape[0] == 1
    with pytest.raises(ValueError, match="question"):
        llm.build_inputs("Answer {question} about {speech}", ["x"])
    with pytest.raises(ValueError, match="placeholder"):
        llm.build_inputs("no slot", ["x"])
    with pytest.raises(ValueError, match=r"speech\[0\]"):
        llm.build_inputs(TEMPLATE, [torch.zeros(3, 7)])


def test_ce_loss_grads_reach_speech_only(llm):
    sents = ["turn on the lights", "what time is it"]
    speech = [llm.embed(torch.tensor(ids)).clone().requires_grad_(True) for ids in llm.tokenize(sents)]
    loss = llm.ce_loss(TEMPLATE, speech, sents)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in speech)
    assert all(p.grad is None for p in llm.model.parameters())
    # the true-text prompt makes repeating easy: lower CE than a random prompt
    noise = [torch.randn_like(s) * 0.05 for s in speech]
    assert llm.ce_loss(TEMPLATE, noise, sents).item() > loss.item()


def test_ce_loss_equals_its_full_forward_oracle(llm):
    """The grouped, prefix-cached, right-padded CE == one forward of the left-padded decoding prompt; the prompt
    split is exactly the one build_inputs (decoding) splices."""
    torch.manual_seed(0)
    sents = ["turn on the lights", "what time is it now", "stop"]
    speech = [torch.randn(4, llm.embed_dim) * 0.02, "what time is it", torch.randn(9, llm.embed_dim) * 0.02]
    ref = llm.ce_loss_reference(TEMPLATE, speech, sents)
    assert torch.allclose(llm.ce_loss(TEMPLATE, speech, sents), ref, atol=1e-5)
    # per-utterance mean: the same as the mean of single-utterance losses
    singles = torch.stack([llm.ce_loss_reference(TEMPLATE, [s], [t]) for s, t in zip(speech, sents)]).mean()
    assert torch.allclose(ref, singles, atol=1e-5)
    tok = llm.ce_loss_reference(TEMPLATE, speech, sents, reduction="token")
    assert torch.allclose(llm.ce_loss(TEMPLATE, speech, sents, reduction="token"), tok, atol=1e-5)
    assert not torch.allclose(tok, ref, atol=1e-3)  # the targets differ in length: the two means differ
    with pytest.raises(ValueError, match="reduction"):
        llm.ce_loss(TEMPLATE, speech, sents, reduction="sum")
    inp = llm.build_inputs(TEMPLATE, speech[:1])
    before, after = llm._template_parts(TEMPLATE)
    want = torch.cat([llm.embed(before), speech[0], llm.embed(after)])
    assert torch.equal(inp.inputs_embeds[0], want)


def test_nearest_tokens_read_back_embeddings(llm):
    ids = llm.tokenize(["the grey whale is near the kitchen"])[0]
    assert llm.nearest_tokens(llm.embed(ids) * 3.0) == ids  # cosine: the scale does not matter
    assert llm.decode(ids) == "the grey whale is near the kitchen"
    assert llm.token_strings(ids)[1].startswith("▁") and llm.nearest_tokens(torch.zeros(0, llm.embed_dim)) == []


def test_cached_beam_search_matches_hf_generate(llm):
    sents = ["Emma went to the forest with Sophie on Sunday", "The grey whale is near the kitchen"]
    inp = llm.build_inputs(TEMPLATE, sents)
    for beams, pen in ((1, 1.0), (3, 1.5)):
        ours = llm.generate(inp, max_new_tokens=8, num_beams=beams, repetition_penalty=pen)
        ref = llm.generate(inp, max_new_tokens=8, num_beams=beams, repetition_penalty=pen, impl="hf")
        assert ours == ref, (beams, pen)
    with pytest.raises(ValueError, match="impl"):
        llm.generate(inp, impl="nope")
