"""Patching hooks, activation statistics and resumed forward passes on tiny models."""

from __future__ import annotations

import pytest
import torch

from sma.circuits.config import AnalysisConfig
from sma.circuits.objective import analysis_mode, tokenize_probe
from sma.circuits.patching import collecting_stats, local_effects, patched, zero_means
from sma.circuits.probe import build_probe
from sma.circuits.resume import cache_inputs, embed_from
from sma.circuits.synthetic import tiny_collection, tiny_random_biencoder
from sma.prune.arch import encoder_layers
from sma.prune.gates import gated

TEXTS = ["t0 f1 f2 f3", "f4 t1 f5", "f6 f7 t2 f8 f9 f10 f11", "t3"]

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def _embed(model, texts=TEXTS):
    with torch.no_grad():
        return model.embed(texts, kind="doc")


def test_gates_of_one_change_nothing_bit_for_bit():
    model = tiny_random_biencoder()
    layers = encoder_layers(model)
    ones_h = [torch.ones(p.num_heads) for p in layers]
    ones_n = [torch.ones(p.num_neurons) for p in layers]
    means = zero_means(model)
    means = type(means)(heads=tuple(m + 0.7 for m in means.heads), neurons=tuple(m - 0.3 for m in means.neurons))
    ref = _embed(model)
    with patched(model, head_gates=ones_h, neuron_gates=ones_n, means=means):
        assert torch.equal(_embed(model), ref)
    with patched(model, record=True, means=means):
        assert torch.equal(_embed(model), ref)
    assert torch.equal(_embed(model), ref)  # hooks gone


def test_zero_ablation_equals_gate_zero_of_the_pruning_engine():
    model = tiny_random_biencoder()
    hg = [torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 1.0, 1.0])]
    ng = [torch.tensor([1.0] * 6 + [0.0] * 6), torch.tensor([0.0, 1.0] * 6)]
    with gated(model, head_values=hg, neuron_values=ng):
        expected = _embed(model)
    with patched(model, head_gates=hg, neuron_gates=ng):
        got = _embed(model)
    assert torch.allclose(got, expected, atol=1e-6)


def test_mean_ablation_feeds_the_mean_to_the_output_projection():
    model = tiny_random_biencoder()
    p = encoder_layers(model)[1]
    means = zero_means(model)
    means = type(means)(heads=means.heads, neurons=(means.neurons[0], torch.arange(12, dtype=torch.float32)))
    gate = torch.ones(12)
    gate[[2, 5]] = 0.0
    seen = []
    with patched(model, neuron_gates=[torch.ones(12), gate], means=means):
        # registered after the patch hook, so it sees the patched activation
        handle = p.ffn_out.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
        try:
            _embed(model)
        finally:
            handle.remove()
    act = seen[0]
    assert torch.allclose(act[..., 2], torch.full_like(act[..., 2], 2.0), atol=1e-6)
    assert torch.allclose(act[..., 5], torch.full_like(act[..., 5], 5.0), atol=1e-6)
    assert act[..., 3].std() > 1e-3  # kept neurons vary


def test_resumed_pass_equals_full_pass_from_every_layer():
    model = tiny_random_biencoder(layers=3)
    cfg = AnalysisConfig(probe_queries=4, positives_per_query=1, negatives_per_query=1, batch_size=3)
    batches = tokenize_probe(model, build_probe(tiny_collection(), cfg=cfg), cfg=cfg)
    with analysis_mode(model):
        full = torch.cat([model(**b) for _, b in batches.docs])
        rows = [i for idx, _ in batches.docs for i in idx]
        cached = cache_inputs(model, batches.docs)
        for start in range(3):
            got = embed_from(model, cached, start=start)
            assert torch.allclose(got[rows], full, atol=1e-6)


def test_local_effect_is_the_exact_mean_squared_change_of_the_layer_output():
    model = tiny_random_biencoder()
    cfg = AnalysisConfig(probe_queries=6, positives_per_query=1, negatives_per_query=1)
    batches = tokenize_probe(model, build_probe(tiny_collection(), cfg=cfg), cfg=cfg)
    p = encoder_layers(model)[0]
    acts = []
    handle = p.ffn_out.register_forward_pre_hook(lambda mod, args: acts.append(args[0].detach()))
    try:
        with analysis_mode(model), collecting_stats(model) as stats, torch.no_grad():
            for _, b in batches.docs:
                stats.mask = b["attention_mask"]
                model(**b)
                acts[-1] = acts[-1][b["attention_mask"].bool()]
    finally:
        handle.remove()
    a = torch.cat(acts).double()  # (tokens, neurons)
    w = p.ffn_out.weight.detach().double()
    for ablation, base in (("mean", a.mean(0)), ("zero", torch.zeros(a.shape[1], dtype=torch.float64))):
        _, neurons = local_effects(model, stats, ablation=ablation)
        for i in (0, 5, 11):
            change = (a[:, i:i + 1] - base[i]) * w[:, i]  # (tokens, hidden): output change per token
            assert abs(float(neurons[0][i]) - float(change.pow(2).sum(1).mean())) < 1e-4 * (1 + float(neurons[0][i]))
