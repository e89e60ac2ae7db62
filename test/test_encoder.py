"""The speech encoder (w2p/models/encoder.py) with the mini_en recipe's config: batch invariance and the
guard on the ESPnet internals it patches."""
import importlib.metadata
import os

import pytest
import torch
import yaml

from w2p.models import encoder as enc_mod
from w2p.models.encoder import build_encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(ROOT, "egs", "mini_en", "w2p1", "conf", "train_wav2prompt.yaml")


def recipe_encoder_conf(**override) -> dict:
    with open(CONF) as f:
        conf = dict(yaml.safe_load(f)["model_conf"]["encoder"])
    conf.update(override)
    return conf


def make_encoder(**override):
    torch.manual_seed(0)
    encoder = build_encoder(recipe_encoder_conf(**override))
    # a few training-mode passes give the BatchNorm layers non-trivial running statistics
    encoder.train()
    with torch.no_grad():
        for _ in range(3):
            encoder(torch.randn(3, 120, 80) * 2 + 1, torch.tensor([120, 90, 70]))
    return encoder


def alone_and_batched(encoder, short=97, long=160):
    """Encoder output of a short utterance alone and as row 1 of a batch padded to a longer one."""
    g = torch.Generator().manual_seed(1)
    utt = torch.randn(1, short, 80, generator=g)
    other = torch.randn(1, long, 80, generator=g)
    # the padding is garbage, not zeros: nothing of it may reach the valid frames
    padded = torch.cat([utt, 50 * torch.randn(1, long - short, 80, generator=g)], dim=1)
    with torch.no_grad():
        h1, l1 = encoder(utt, torch.tensor([short]))
        hb, lb = encoder(torch.cat([other, padded]), torch.tensor([long, short]))
    return h1, l1, hb, lb


def assert_invariant(h1, l1, hb, lb):
    assert int(lb[1]) == int(l1[0]), f"output length {int(lb[1])} batched vs {int(l1[0])} alone"
    n = int(l1[0])
    assert n > 0 and h1.shape[1] == n
    diff = (hb[1, :n] - h1[0, :n]).abs().max().item()
    assert diff < 1e-5, f"batched output differs from the output alone by {diff}"


def test_recipe_config_is_batchnorm_macaron():
    # the invariance test below is about this architecture; fail loudly if the recipe moves away from it
    conf = recipe_encoder_conf()
    assert conf.get("conv_norm") == "batch_norm" and conf.get("macaron_style") is True, conf


def test_eval_output_does_not_depend_on_batch():
    encoder = make_encoder().eval()
    assert_invariant(*alone_and_batched(encoder))


def test_layer_norm_variant_is_batch_invariant_in_training_mode():
    # with conv_norm: layer_norm (and no dropout / SpecAugment) nothing mixes utterances even in training;
    # BatchNorm in training mode normalises with the batch's statistics, so it cannot be
    encoder = make_encoder(conv_norm="layer_norm").train()
    assert encoder.specaug is None
    assert_invariant(*alone_and_batched(encoder))


def test_batch_norm_training_mode_depends_on_batch():
    # documents the limit of the guarantee: training-mode BatchNorm sees the whole batch
    encoder = make_encoder().train()
    h1, l1, hb, lb = alone_and_batched(encoder)
    n = int(l1[0])
    assert int(lb[1]) == n
    assert (hb[1, :n] - h1[0, :n]).abs().max().item() > 1e-4


def test_output_length_is_exact_subsampling_of_the_input_length():
    encoder = make_encoder().eval()
    lens = torch.tensor([160, 97, 31, 7])
    with torch.no_grad():
        _, olens = encoder(torch.randn(4, 160, 80), lens)
    assert olens.tolist() == [((n - 1) // 2 - 1) // 2 for n in lens.tolist()]


def test_missing_espnet_attribute_is_named():
    encoder = make_encoder()
    del encoder.conformer.encoders[1].conv_module.depthwise_conv
    with pytest.raises(RuntimeError) as err:
        enc_mod.check_espnet_layout(encoder.conformer)
    msg = str(err.value)
    assert "ConformerEncoder.encoders[1].conv_module.depthwise_conv" in msg, msg
    assert f"espnet {importlib.metadata.version('espnet')}" in msg and "tools/requirements-nodeps.txt" in msg, msg
