"""The hand-built tiny BERT whose relevance signal runs through one head: every mechanistic method must
find that head, and the numbers must match an independent recomputation."""

from __future__ import annotations

import math

import pytest
import torch

from sma.circuits.ablation import ablation_scores
from sma.circuits.attribution import attribution_scores
from sma.circuits.config import AnalysisConfig
from sma.circuits.controls import magnitude_scores, random_scores
from sma.circuits.objective import evaluate_probe, tokenize_probe
from sma.circuits.patching import collecting_stats, local_effects
from sma.circuits.probe import build_probe
from sma.circuits.synthetic import KEY_HEAD, tiny_biencoder, tiny_collection
from sma.prune.arch import encoder_layers
from sma.prune.gates import gated

CFG = AnalysisConfig(probe_queries=16, positives_per_query=2, negatives_per_query=2, neuron_group_size=1,
                     ablation="zero", temperature=0.05)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    model = tiny_biencoder()
    probe = build_probe(tiny_collection(), cfg=CFG)
    return model, probe, tokenize_probe(model, probe, cfg=CFG)


def _hand_loss(model, probe, head_values=None) -> float:
    """InfoNCE over the probe written out pair by pair, with heads removed by the pruning engine's gates."""
    with torch.no_grad(), gated(model, head_values=head_values):
        q = model.embed(list(probe.query_texts), kind="query").double()
        d = model.embed(list(probe.doc_texts), kind="doc").double()
    total, pairs = 0.0, 0
    for qi, positives in enumerate(probe.positives):
        relevant = {i for i, _ in probe.relevant[qi]}
        for p in positives:
            cands = [p] + [j for j in range(len(probe.doc_ids)) if j not in relevant]
            logits = [float(q[qi] @ d[j]) / CFG.temperature for j in cands]
            top = max(logits)
            total += top + math.log(sum(math.exp(x - top) for x in logits)) - logits[0]
            pairs += 1
    return total / pairs


def test_the_dense_tiny_model_retrieves_by_topic(tiny):
    model, _, batches = tiny
    score = evaluate_probe(model, batches, temperature=CFG.temperature)
    assert score.ndcg > 0.9
    assert score.loss < 0.05


def test_ablation_ranks_the_key_head_first_and_matches_a_hand_computation(tiny):
    model, probe, batches = tiny
    with collecting_stats(model) as stats:
        base = evaluate_probe(model, batches, temperature=CFG.temperature, stats=stats)
    _, local_neurons = local_effects(model, stats, ablation="zero")
    res = ablation_scores(model, batches, temperature=CFG.temperature, means=None, local_neurons=local_neurons,
                          group_size=1)
    assert res.effect == "kl"
    layer, head = KEY_HEAD
    flat = [(v, (layer_, h)) for layer_, row in enumerate(res.scores.heads) for h, v in enumerate(row)]
    assert max(flat)[1] == KEY_HEAD
    # by ranking divergence every other head (and every neuron) matters at least 5x less
    assert all(v < res.scores.heads[layer][head] / 5 for v, unit in flat if unit != KEY_HEAD)
    assert max(max(n) for n in res.scores.neurons) < res.scores.heads[layer][head] / 5
    # the key head also tops the loss increase (by 20x) and the nDCG@10 drop
    for name in ("loss", "ndcg"):
        values = [(getattr(e, name), (n, h)) for n, row in enumerate(res.heads) for h, e in enumerate(row)]
        assert max(values)[1] == KEY_HEAD
    assert all(e.loss < res.heads[layer][head].loss / 20 for n, row in enumerate(res.heads)
               for h, e in enumerate(row) if (n, h) != KEY_HEAD)
    assert res.heads[layer][head].ndcg > 0.3
    # independent recomputation: pair-by-pair InfoNCE with the head removed by sma.prune.gates
    values = [torch.ones(p.num_heads) for p in encoder_layers(model)]
    values[layer][head] = 0.0
    assert _hand_loss(model, probe) == pytest.approx(base.loss, rel=1e-4, abs=1e-6)
    ablated = _hand_loss(model, probe, head_values=values)
    assert res.heads[layer][head].loss == pytest.approx(ablated - base.loss, rel=1e-4)


@pytest.mark.parametrize("steps", [1, 2])
def test_attribution_ranks_the_key_head_first(tiny, steps):
    model, _, batches = tiny
    res = attribution_scores(model, batches, temperature=CFG.temperature, means=None, steps=steps)
    flat = sorted(((v, (n, h)) for n, row in enumerate(res.scores.heads) for h, v in enumerate(row)), reverse=True)
    assert flat[0][1] == KEY_HEAD


def test_magnitude_and_random_are_deterministic_and_cover_every_unit(tiny):
    model, _, _ = tiny
    mag = magnitude_scores(model)
    p = encoder_layers(model)[0]
    d = p.head_size
    h = KEY_HEAD[1]
    by_hand = sum(float(lin.weight.detach()[h * d:(h + 1) * d].pow(2).sum()) for lin in (p.query, p.key, p.value))
    by_hand += float(p.attn_out.weight.detach()[:, h * d:(h + 1) * d].pow(2).sum())
    assert mag.heads[0][h] == pytest.approx(math.sqrt(by_hand), rel=1e-6)
    a, b, c = random_scores(model, seed=1), random_scores(model, seed=1), random_scores(model, seed=2)
    assert a == b and a != c
    assert len(a.heads) == 2 and all(len(h) == 4 for h in a.heads) and all(len(n) == 8 for n in a.neurons)
