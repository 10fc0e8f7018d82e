"""Attribution patching against finite differences, on a small random BERT.

``Attribution.total`` of a unit is the derivative of the probe loss with respect to one gate shared by all
of the unit's tokens, ``x -> x - (1 - g)(x - b)``, at ``g = 1``. Finite differences of the loss in ``g``
(central, step 1e-3, computed in float64) must agree within |fd - attr| <= 1e-4 * max|attr| + 1e-3 * |attr|.
"""

from __future__ import annotations

import pytest
import torch

from sma.circuits.attribution import attribution_scores
from sma.circuits.config import AnalysisConfig
from sma.circuits.objective import attribute, evaluate_probe, tokenize_probe
from sma.circuits.patching import collecting_stats
from sma.circuits.probe import build_probe
from sma.circuits.synthetic import tiny_collection, tiny_random_biencoder
from sma.prune.arch import encoder_layers

STEP = 1e-3
REL, ABS = 1e-3, 1e-4

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



@pytest.fixture(scope="module")
def setup():
    model = tiny_random_biencoder(seed=3).double()
    cfg = AnalysisConfig(probe_queries=8, positives_per_query=2, negatives_per_query=2, batch_size=5,
                         temperature=0.2)
    batches = tokenize_probe(model, build_probe(tiny_collection(), cfg=cfg), cfg=cfg)
    with collecting_stats(model) as stats:
        evaluate_probe(model, batches, temperature=cfg.temperature, stats=stats)
    return model, cfg, batches, stats.means()


def _loss(model, batches, temperature, means, kind, layer, unit, gate):
    layers = encoder_layers(model)
    hg = [torch.ones(p.num_heads, dtype=torch.float64) for p in layers]
    ng = [torch.ones(p.num_neurons, dtype=torch.float64) for p in layers]
    (hg if kind == "head" else ng)[layer][unit] = gate
    return evaluate_probe(model, batches, temperature=temperature, head_gates=hg, neuron_gates=ng,
                          means=means).loss


@pytest.mark.parametrize("baseline", ["zero", "mean"])
def test_attribution_matches_finite_differences(setup, baseline):
    model, cfg, batches, means = setup
    means = means if baseline == "mean" else None
    att = attribute(model, batches, temperature=cfg.temperature, means=means)
    heads, neurons = att.total
    scale = max(float(torch.cat([*heads, *neurons]).abs().max()), 1e-12)
    checked = 0
    for kind, table in (("head", heads), ("neuron", neurons)):
        for layer, values in enumerate(table):
            for unit in range(0, len(values), 3 if kind == "neuron" else 1):
                up = _loss(model, batches, cfg.temperature, means, kind, layer, unit, 1 + STEP)
                down = _loss(model, batches, cfg.temperature, means, kind, layer, unit, 1 - STEP)
                fd = (up - down) / (2 * STEP)
                a = float(values[unit])
                assert abs(fd - a) <= ABS * scale + REL * abs(a), (kind, layer, unit, fd, a)
                checked += 1
    assert checked >= 8 + 8
    assert scale > 1e-4  # the check is not vacuous


def test_per_sequence_statistics_bound_the_batch_total(setup):
    model, cfg, batches, means = setup
    att = attribute(model, batches, temperature=cfg.temperature, means=means)
    for pos in range(2):
        for total, abs_seq, abs_tok in zip(att.total[pos], att.abs_seq[pos], att.abs_token[pos], strict=True):
            assert torch.all(total.abs() <= abs_seq + 1e-9)
            assert torch.all(abs_seq <= abs_tok + 1e-9)


def test_iterative_rounds_ablate_the_requested_share_and_rank_survivors_first(setup):
    model, cfg, batches, means = setup
    res = attribution_scores(model, batches, temperature=cfg.temperature, means=means, steps=3, sparsity=0.5)
    assert [r["round"] for r in res.rounds] == [1, 2, 3]
    assert res.rounds[0]["ablated_heads"] == 0
    # round 3 scores the model with 2/3 of the final 50% ablated, per layer: floor(1/3 * 4) heads per layer
    assert res.rounds[2]["ablated_heads"] == 2 * 1 and res.rounds[2]["ablated_neurons"] == 2 * 4
    for values in res.scores.heads + res.scores.neurons:
        survivors = sorted(values, reverse=True)[: len(values) - int(len(values) * 1 / 3)]
        assert min(survivors) >= 3.0 > max(sorted(values)[: int(len(values) * 1 / 3)])
