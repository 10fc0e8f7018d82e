"""plan_for_sparsity: hits targets, respects protection and head minimums, works on pruned models; JSON."""

from __future__ import annotations

import random

import pytest
import torch

from sma.prune import (
    PruningPlan,
    UnitScores,
    apply_plan,
    encoder_sparsity,
    first_n_scores,
    magnitude_scores,
    plan_for_sparsity,
    unit_ids,
)
from sma.tiny import FFN, HEADS, LAYERS, tiny_model

# all-MiniLM-L6-v2 shape: per layer 12 heads of 32 dims, 1536 neurons, hidden 384. By hand:
MINI_HEAD = 4 * 384 * 32 + 3 * 32  # 49,248
MINI_NEURON = 2 * 384 + 1  # 769
MINI_LAYER = 12 * MINI_HEAD + 1536 * MINI_NEURON + 6 * 384  # + 2 output biases + 2 LayerNorms


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def minilm_shaped():
    """Random-free MiniLM-shaped encoder on the meta device: shapes and counts only, no weights."""
    with torch.device("meta"):
        return tiny_model(layers=6, heads=12, hidden=384, intermediate=1536, vocab_size=30522, perturb=0.0)


def random_scores(model, seed: int) -> UnitScores:
    rng = random.Random(seed)
    layers = len(unit_ids(model))
    from sma.prune import dense_sizes

    h, n = dense_sizes(model)
    return UnitScores(heads=[[rng.random() for _ in range(h)] for _ in range(layers)],
                      neurons=[[rng.random() * 0.01 for _ in range(n)] for _ in range(layers)], method="random")


def test_minilm_hand_count(minilm_shaped):
    rep = encoder_sparsity(minilm_shaped)
    assert rep.dense_encoder_params == 6 * MINI_LAYER == 10_646_784


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("allocation", ["global", "per_layer"])
@pytest.mark.parametrize("split", ["joint", "proportional"])
@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_hits_target(target, allocation, split, which, minilm_shaped):
    model = tiny_model() if which == "tiny" else minilm_shaped
    if which == "minilm":
        import copy

        model = copy.deepcopy(model)
    plan = plan_for_sparsity(model, random_scores(model, 1), target, allocation=allocation, split=split)
    apply_plan(model, plan)
    actual = encoder_sparsity(model).sparsity
    assert abs(actual - target) <= 0.005
    assert plan.expected_sparsity == pytest.approx(actual, abs=1e-12)
    assert plan.allocation == f"{allocation}/{split}"
    assert len(plan.decisions) == plan.num_heads + plan.num_neurons
    assert sum(d.params for d in plan.decisions) == encoder_sparsity(model).dense_encoder_params - \
        encoder_sparsity(model).encoder_params


def test_per_layer_proportional_is_uniform(minilm_shaped):
    import copy

    model = copy.deepcopy(minilm_shaped)
    rng = random.Random(2)
    # heads far less important per parameter than neurons: "joint" would strip heads first
    scores = UnitScores(heads=[[rng.random() * 1e-3 for _ in range(12)] for _ in range(6)],
                        neurons=[[rng.random() for _ in range(1536)] for _ in range(6)], method="heads-weak")
    assert plan_for_sparsity(model, scores, 0.5, allocation="per_layer").num_heads > 36
    plan = plan_for_sparsity(model, scores, 0.5, allocation="per_layer", split="proportional")
    assert all(len(plan.heads[i]) == 6 for i in range(6))
    # the rest of each layer's half comes from neurons: (0.5 * layer - 6 heads) / neuron, rounded up
    need = (0.5 * MINI_LAYER - 6 * MINI_HEAD) / MINI_NEURON
    assert all(len(plan.neurons[i]) in (int(need), int(need) + 1) for i in range(6))


def test_least_important_per_parameter_go_first():
    model = tiny_model()
    # neurons all far more important per parameter than heads, one head per layer least important
    scores = UnitScores(heads=[[1.0, 0.1, 1.0, 1.0]] * LAYERS, neurons=[[100.0] * FFN] * LAYERS, method="t")
    plan = plan_for_sparsity(model, scores, 0.1)
    # 0.1 * 25,632 = 2,563.2 params: two weak heads (2 * 1,048) fit, a third would overshoot by 581, so the
    # gap of 467.2 is closed with 8 neurons (8 * 65 = 520; all equal, so the first ids of the first layer)
    assert plan.heads == {0: (1,), 1: (1,)}
    assert plan.neurons == {0: tuple(range(8))}
    d = plan.decisions[0]
    assert d.kind == "head" and d.unit == 1 and d.score == 0.1 and "low importance" in d.reason


def test_protected_units_go_only_when_unavoidable(minilm_shaped):
    import copy

    model = copy.deepcopy(minilm_shaped)
    scores = random_scores(model, 3)
    weakest = sorted(((s / MINI_NEURON, ("neuron", layer, i)) for layer, row in enumerate(scores.neurons)
                      for i, s in enumerate(row)))[:50]
    protected = [u for _, u in weakest]
    plan = plan_for_sparsity(model, scores, 0.5, protected=protected)
    assert not any(i in plan.neurons.get(layer, ()) for _, layer, i in protected)
    # FFN is 2/3 of the encoder: protecting every head forces some heads out at 0.7, but not at 0.5
    all_heads = [("head", layer, h) for layer in range(6) for h in range(12)]
    assert plan_for_sparsity(model, scores, 0.5, protected=all_heads).num_heads == 0
    plan = plan_for_sparsity(model, scores, 0.7, protected=all_heads)
    assert plan.num_neurons == 6 * 1536 and plan.num_heads > 0
    heads = [d for d in plan.decisions if d.kind == "head"]
    assert all(d.reason.startswith("protected unit removed") for d in heads)
    assert "protected units had to be removed" in plan.summary()


def test_min_heads_per_layer(minilm_shaped):
    import copy

    model = copy.deepcopy(minilm_shaped)
    scores = UnitScores(heads=[[0.0] * 12] * 6, neurons=[[1.0] * 1536] * 6, method="heads-first")
    plan = plan_for_sparsity(model, scores, 0.3, min_heads_per_layer=3)
    apply_plan(model, plan)
    assert [len(u.heads) for u in unit_ids(model)] == [3] * 6
    assert abs(encoder_sparsity(model).sparsity - 0.3) <= 0.005
    with pytest.raises(ValueError, match="unreachable"):
        plan_for_sparsity(model, scores, 0.95, min_heads_per_layer=3)


@pytest.mark.parametrize("allocation", ["global", "per_layer"])
def test_gradual_schedule_on_a_pruned_model(allocation, minilm_shaped):
    import copy

    model = copy.deepcopy(minilm_shaped)
    scores = random_scores(model, 4)
    seen: set[tuple[str, int, int]] = set()
    for target in (0.2, 0.45, 0.7):
        plan = plan_for_sparsity(model, scores, target, allocation=allocation)
        units = {(d.kind, d.layer, d.unit) for d in plan.decisions}
        assert not units & seen, "a plan may only list units still present"
        seen |= units
        apply_plan(model, plan)
        assert abs(encoder_sparsity(model).sparsity - target) <= 0.005
    again = plan_for_sparsity(model, scores, 0.6)
    assert again.is_empty and "already" in again.notes[0]


def test_scores_must_use_original_ids():
    model = tiny_model()
    apply_plan(model, PruningPlan(heads={0: (0, 2)}, neurons={1: tuple(range(10))}))
    current = magnitude_scores(model)  # built through UnitScores.from_current
    assert len(current.heads[0]) == HEADS and current.heads[0][0] != current.heads[0][0]  # nan for removed
    assert current.neurons[1][:10] == tuple([float("nan")] * 10) or all(x != x for x in current.neurons[1][:10])
    short = UnitScores(heads=[[1.0, 2.0]] + [[1.0] * HEADS] * (LAYERS - 1), neurons=[[1.0] * FFN] * LAYERS)
    with pytest.raises(ValueError, match="ORIGINAL ids"):
        plan_for_sparsity(model, short, 0.5)
    plan = plan_for_sparsity(model, current, 0.5)
    assert 0 not in plan.heads.get(0, ()) and 2 not in plan.heads.get(0, ())


def test_json_round_trips():
    model = tiny_model()
    scores = magnitude_scores(model)
    assert UnitScores.from_json(scores.to_json()) == scores
    plan = plan_for_sparsity(model, scores, 0.4, allocation="per_layer", min_heads_per_layer=1)
    back = PruningPlan.from_json(plan.to_json(indent=1))
    assert back == plan
    assert back.decision(back.decisions[0].kind, back.decisions[0].layer, back.decisions[0].unit) == plan.decisions[0]
    assert "PruningPlan(method=magnitude" in plan.summary()
    first = plan_for_sparsity(model, first_n_scores(model), 0.5, allocation="per_layer", split="proportional")
    assert all(ids == tuple(range(HEADS - len(ids), HEADS)) for ids in first.heads.values())


def test_proportional_split_keeps_its_shape_when_protection_runs_out(minilm_shaped):
    import copy

    model = copy.deepcopy(minilm_shaped)
    scores = random_scores(model, 4)
    # protect 1,000 of each layer's 1,536 neurons: at 0.7 the neuron share cannot be met by the free ones
    protected = [("neuron", layer, i) for layer in range(6) for i in range(1000)]
    plan = plan_for_sparsity(model, scores, 0.7, allocation="per_layer", split="proportional", protected=protected)
    assert all(len(plan.heads[i]) == 8 for i in range(6))  # 0.7 * 12 = 8.4 -> 8 whole heads, as unprotected
    # by hand: each layer's neuron share is (0.7 * layer - 8 heads) / neuron, rounded up
    need = (0.7 * MINI_LAYER - 8 * MINI_HEAD) / MINI_NEURON
    assert all(len(plan.neurons[i]) in (int(need), int(need) + 1) for i in range(6))
    for layer in range(6):  # the 536 free neurons all go, then the least important protected ones
        gone = set(plan.neurons[layer])
        assert set(range(1000, 1536)) <= gone
        kept = [i for i in range(1000) if i not in gone]
        removed = [i for i in range(1000) if i in gone]
        assert max(scores.neurons[layer][i] for i in removed) <= min(scores.neurons[layer][i] for i in kept)
    assert "protected units had to be removed" in plan.summary()
    # the joint split meets the same target by taking more (unprotected) heads instead
    joint = plan_for_sparsity(model, scores, 0.7, allocation="per_layer", split="joint", protected=protected)
    assert joint.num_heads > 6 * 8


@pytest.mark.parametrize("multiple", [32, 64])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_neuron_counts_rounded_to_a_multiple_keep_the_most_important(target, multiple, minilm_shaped):
    import copy

    model = copy.deepcopy(minilm_shaped)
    scores = random_scores(model, 4)
    exact = plan_for_sparsity(model, scores, target, allocation="per_layer", split="proportional")
    plan = plan_for_sparsity(model, scores, target, allocation="per_layer", split="proportional",
                             neuron_multiple=multiple)
    assert plan.heads == exact.heads  # head counts stay whole and untouched
    for layer in range(6):
        kept_exact = 1536 - len(exact.neurons[layer])
        kept = 1536 - len(plan.neurons[layer])
        assert kept == multiple * int(kept_exact / multiple + 0.5)  # the nearest multiple
        order = sorted(range(1536), key=lambda u: scores.neurons[layer][u])  # least important first
        assert set(plan.neurons[layer]) == set(order[:1536 - kept])
    apply_plan(model, plan)
    actual = encoder_sparsity(model).sparsity
    assert plan.expected_sparsity == pytest.approx(actual, abs=1e-12)
    assert abs(actual - target) <= 6 * (multiple / 2) * MINI_NEURON / (6 * MINI_LAYER) + 0.005  # on average
    assert len(plan.decisions) == plan.num_heads + plan.num_neurons
    rounded = [d for d in plan.decisions if f"multiple of {multiple}" in d.reason]
    assert len(rounded) == sum(max(len(plan.neurons[i]) - len(exact.neurons[i]), 0) for i in range(6))


def test_the_neuron_multiple_is_at_most_a_sixteenth_of_the_layer():
    """MiniLM (1536 neurons) and BERT-base (3072) keep 64; narrower layers halve it until 16 of it fit, so
    rounding never moves a layer by more than a 32nd of its width; a tiny model with 64 neurons per layer
    rounded to 64 would otherwise keep all of them or none."""
    from sma.prune.plan import layer_multiple

    assert [layer_multiple(64, n) for n in (1536, 3072, 1024, 1000, 128, 64, 10)] == [64, 64, 64, 32, 8, 4, 1]
    assert layer_multiple(1, 1536) == 1 and layer_multiple(48, 1536) == 48
    model = tiny_model()  # 3 layers of 64 neurons
    scores = random_scores(model, 3)
    plan = plan_for_sparsity(model, scores, 0.5, allocation="per_layer", split="proportional", neuron_multiple=64)
    exact = plan_for_sparsity(model, scores, 0.5, allocation="per_layer", split="proportional")
    for layer in range(3):
        kept, kept_exact = 64 - len(plan.neurons.get(layer, ())), 64 - len(exact.neurons.get(layer, ()))
        assert kept == 4 * int(kept_exact / 4 + 0.5) and 0 < kept < 64, (kept, kept_exact)
    rounded = [d.reason for d in plan.decisions if "multiple of" in d.reason]
    assert all("multiple of 4 " in reason for reason in rounded), rounded


def test_rounding_takes_unprotected_neurons_first(minilm_shaped):
    import copy

    model = copy.deepcopy(minilm_shaped)
    scores = random_scores(model, 5)
    exact = plan_for_sparsity(model, scores, 0.6, allocation="per_layer", split="proportional")
    kept = 1536 - len(exact.neurons[0])
    assert kept % 64 and kept % 64 < 32, "the test needs layer 0 to round down"
    weakest_kept = min((u for u in range(1536) if u not in exact.neurons[0]), key=lambda u: scores.neurons[0][u])
    plan = plan_for_sparsity(model, scores, 0.6, allocation="per_layer", split="proportional", neuron_multiple=64,
                             protected=[("neuron", 0, weakest_kept)])
    assert (1536 - len(plan.neurons[0])) % 64 == 0 and weakest_kept not in plan.neurons[0]


def _layered_scores(model, low: dict[int, float]) -> UnitScores:
    """Every unit of layer ``l`` scores ``low.get(l, 1.0)`` plus a small per-unit spread (seeded)."""
    rng = random.Random(7)
    from sma.prune import dense_sizes

    h, n = dense_sizes(model)
    return UnitScores(heads=[[low.get(la, 1.0) * 100 + rng.random() for _ in range(h)] for la in range(6)],
                      neurons=[[low.get(la, 1.0) + 0.01 * rng.random() for _ in range(n)] for la in range(6)])


UNITS_OF_A_LAYER = 12 * MINI_HEAD + 1536 * MINI_NEURON  # what emptying a MiniLM layer removes (LayerNorms stay)


def test_whole_layers_empty_the_least_important_layers_then_the_rest_share_the_target(minilm_shaped):
    import copy

    model = copy.deepcopy(minilm_shaped)
    plan = plan_for_sparsity(model, _layered_scores(model, {3: 0.01, 1: 0.1}), 0.8, allocation="per_layer",
                             split="proportional", whole_layers=2)
    assert plan.layers == (1, 3)
    assert all(len(plan.heads[la]) == 12 and len(plan.neurons[la]) == 1536 for la in (1, 3))
    assert all("whole layer" in d.reason for d in plan.decisions if d.layer in (1, 3))
    apply_plan(model, plan)
    assert abs(encoder_sparsity(model).sparsity - 0.8) <= MINI_NEURON / (6 * MINI_LAYER) + 1e-12
    # the four other layers share the rest: (0.8 * 6 layers - 2 emptied) / 4 of each one's parameters
    rest = (0.8 * 6 * MINI_LAYER - 2 * UNITS_OF_A_LAYER) / (4 * MINI_LAYER)
    for layer in (0, 2, 4, 5):
        gone = len(plan.heads[layer]) * MINI_HEAD + len(plan.neurons[layer]) * MINI_NEURON
        assert abs(gone - rest * MINI_LAYER) <= MINI_HEAD  # within a head of its share (whole heads, then neurons)
        assert len(plan.heads[layer]) == round(rest * 12) == 8  # its share of heads, the rest in neurons
    assert "whole layer" in plan.summary() and PruningPlan.from_json(plan.to_json()).layers == (1, 3)


def test_a_layer_holding_circuit_units_is_emptied_last(minilm_shaped):
    import copy

    model = copy.deepcopy(minilm_shaped)
    scores = _layered_scores(model, {3: 0.01, 1: 0.1, 4: 0.5})
    plan = plan_for_sparsity(model, scores, 0.8, allocation="per_layer", split="proportional", whole_layers=2,
                             protected=[("head", 3, 0)])
    assert plan.layers == (1, 4)


def test_the_target_caps_how_many_layers_go_and_emptied_layers_count_across_steps(minilm_shaped):
    import copy

    model = copy.deepcopy(minilm_shaped)
    scores = _layered_scores(model, {3: 0.01, 1: 0.1, 4: 0.5})
    first = plan_for_sparsity(model, scores, 0.3, allocation="per_layer", split="proportional", whole_layers=3)
    assert first.layers == (3,)  # 0.3 of 6 layers holds one whole layer, not two
    apply_plan(model, first)
    second = plan_for_sparsity(model, scores, 0.8, allocation="per_layer", split="proportional", whole_layers=3)
    assert second.layers == (1, 3, 4) and 3 not in second.heads  # layer 3 was already empty: nothing left there
    apply_plan(model, second)
    assert abs(encoder_sparsity(model).sparsity - 0.8) <= MINI_NEURON / (6 * MINI_LAYER) + 1e-12
    with pytest.raises(ValueError, match="min_heads_per_layer"):
        plan_for_sparsity(model, scores, 0.8, whole_layers=1, min_heads_per_layer=1)


def test_no_layer_is_emptied_when_the_others_are_already_pruned_beyond_their_new_share(minilm_shaped):
    import copy

    model = copy.deepcopy(minilm_shaped)
    scores = _layered_scores(model, {3: 0.01, 1: 0.1})
    apply_plan(model, plan_for_sparsity(model, scores, 0.75, allocation="per_layer", split="proportional"))
    plan = plan_for_sparsity(model, scores, 0.8, allocation="per_layer", split="proportional", whole_layers=2)
    # one layer: the other five need (0.8 * 6 - 1) / 5 = 0.76 each, beyond their 0.75; a second would ask 0.70
    assert plan.layers == (3,)
    apply_plan(model, plan)
    assert abs(encoder_sparsity(model).sparsity - 0.8) <= MINI_NEURON / (6 * MINI_LAYER) + 1e-12
