"""Physical pruning equals the masked simulation; structure, ids and parameter counts stay true."""

from __future__ import annotations

import pytest
import torch

from sma.prune import (
    EmptyAttention,
    PruningPlan,
    apply_plan,
    encoder_layers,
    encoder_sparsity,
    masked,
    structure,
    unit_ids,
)
from sma.tiny import FFN, HEAD_SIZE, HEADS, HIDDEN, LAYERS, inputs, random_plan, run, tiny_model

FAMILIES = ["bert", "roberta", "distilbert"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
# Parameters, worked out by hand for hidden 32, 4 heads of 8, FFN 64 (BERT/RoBERTa/DistilBERT layers alike):
HEAD_PARAMS = 3 * (HIDDEN * HEAD_SIZE + HEAD_SIZE) + HEAD_SIZE * HIDDEN  # Q/K/V rows + biases, out columns
NEURON_PARAMS = HIDDEN + 1 + HIDDEN  # FFN input row + bias, output column
FIXED_PARAMS = HIDDEN + 2 * HIDDEN + HIDDEN + 2 * HIDDEN  # both output biases, both LayerNorms
LAYER_PARAMS = HEADS * HEAD_PARAMS + FFN * NEURON_PARAMS + FIXED_PARAMS


def test_hand_counts_match_the_dense_model():
    assert HEAD_PARAMS == 4 * HIDDEN * HEAD_SIZE + 3 * HEAD_SIZE == 1048
    assert LAYER_PARAMS == 8544
    for family in FAMILIES:
        rep = encoder_sparsity(tiny_model(family))
        assert rep.encoder_params == rep.dense_encoder_params == LAYERS * LAYER_PARAMS
        assert rep.sparsity == 0.0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", range(4))
def test_pruned_equals_masked_for_random_plans(family, seed):
    model, batch = tiny_model(family, seed), inputs(seed)
    plan = random_plan(model, seed, empty_layers=seed % 2 == 0)
    dense = run(model, batch)
    with masked(model, plan):
        expected = run(model, batch)
    assert not torch.equal(run(model, batch), expected) or plan.is_empty
    assert torch.equal(run(model, batch), dense), "masking hooks must be removed on exit"
    apply_plan(model, plan)
    torch.testing.assert_close(run(model, batch), expected, atol=1e-5, rtol=0)
    # sizes and counts follow the plan exactly
    rep = encoder_sparsity(model)
    assert rep.encoder_params == LAYERS * LAYER_PARAMS - plan.num_heads * HEAD_PARAMS - plan.num_neurons * NEURON_PARAMS
    for layer, (p, s) in enumerate(zip(encoder_layers(model), structure(model), strict=True)):
        n_heads = HEADS - len(plan.heads.get(layer, ()))
        assert s == {"heads": n_heads, "neurons": FFN - len(plan.neurons.get(layer, ()))}
        heads_attr = "n_heads" if family == "distilbert" else "num_attention_heads"
        assert getattr(p.attention, heads_attr) == n_heads
        assert p.query.out_features == p.attn_out.in_features == n_heads * HEAD_SIZE
        if family != "distilbert":
            assert p.attention.all_head_size == n_heads * HEAD_SIZE
        assert isinstance(p.attention, EmptyAttention) == (n_heads == 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_emptied_layers_keep_only_biases_and_residual(family):
    model, batch = tiny_model(family), inputs()
    everything = PruningPlan(heads={i: range(HEADS) for i in range(LAYERS)},
                             neurons={i: range(FFN) for i in range(LAYERS)})
    with masked(model, everything):
        expected = run(model, batch)
    apply_plan(model, everything)
    out = run(model, batch)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert encoder_sparsity(model).encoder_params == LAYERS * FIXED_PARAMS


def test_empty_plan_changes_nothing():
    model, batch = tiny_model(), inputs()
    before = run(model, batch)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    apply_plan(model, PruningPlan())
    assert torch.equal(run(model, batch), before)
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    assert [u.heads for u in unit_ids(model)] == [tuple(range(HEADS))] * LAYERS


@pytest.mark.parametrize("family", ["bert", "distilbert"])
@pytest.mark.parametrize("seed", range(3))
def test_two_steps_keep_original_ids(family, seed):
    model, batch = tiny_model(family, seed), inputs(seed)
    first = PruningPlan(heads={0: (1,), 1: (0, 2), 2: tuple(range(HEADS))}, neurons={0: (3, 7, 60), 2: (0,)})
    apply_plan(model, first)
    assert unit_ids(model)[1].heads == (1, 3)
    second = random_plan(model, seed + 10, empty_layers=False)  # drawn from the ids still present
    apply_plan(model, second)
    after = run(model, batch)
    union = first.union(second)
    dense = tiny_model(family, seed)
    with masked(dense, union):
        expected = run(dense, batch)
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=0)
    for layer, units in enumerate(unit_ids(model)):
        assert units.heads == tuple(h for h in range(HEADS) if h not in union.heads.get(layer, ()))
        assert units.neurons == tuple(n for n in range(FFN) if n not in union.neurons.get(layer, ()))
    # masking a plan on the pruned model (original ids) equals pruning it too
    third = random_plan(model, seed + 20, empty_layers=False)
    with masked(model, third):
        sim = run(model, batch)
    apply_plan(model, third)
    torch.testing.assert_close(run(model, batch), sim, atol=1e-5, rtol=0)


def test_invalid_plan_is_rejected_before_any_change():
    model = tiny_model()
    apply_plan(model, PruningPlan(heads={0: (2,)}))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for bad in (PruningPlan(heads={1: (0,), 0: (2,)}), PruningPlan(neurons={0: (FFN,)}),
                PruningPlan(heads={LAYERS: (0,)})):
        with pytest.raises(ValueError, match="not present|layers"):
            apply_plan(model, bad)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="duplicate"):
        PruningPlan(heads={0: (1, 1)})


def test_training_after_pruning():
    model, batch = tiny_model(), inputs()
    model.train()
    apply_plan(model, PruningPlan(heads={0: range(HEADS), 1: (0, 3)}, neurons={1: range(FFN), 2: (5, 6)}))
    assert all(p.requires_grad for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # rebuilt after pruning, as documented
    before = {k: v.clone() for k, v in model.named_parameters()}
    loss = model(**batch).last_hidden_state.pow(2).mean()
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("pooler."):  # not on the path to last_hidden_state
            continue
        assert p.grad is not None and p.grad.shape == p.shape, name
    opt.step()
    changed = [n for n, p in model.named_parameters() if p.numel() and not torch.equal(p, before[n])]
    assert any("layer.1.attention.self.query" in n for n in changed)
    assert any("layer.0.attention.output.dense.bias" in n for n in changed)  # emptied attention still trains
    model.eval()
    assert run(model, batch).isfinite().all()


def test_bi_encoder_is_pruned_through_its_wrapper():
    from sma.model import BiEncoder

    class _Tok:  # the tokenizer is not used here
        pass

    model = BiEncoder(tiny_model(), _Tok())
    apply_plan(model, PruningPlan(heads={0: (0,)}))
    assert structure(model)[0]["heads"] == HEADS - 1
    assert unit_ids(model.encoder)[0].heads == (1, 2, 3)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("capture_before", [False, True])
def test_output_attentions_keep_one_entry_per_layer(family, capture_before):
    import copy

    model, batch = tiny_model(family), inputs()
    model.config._attn_implementation = "eager"
    if capture_before:  # transformers installs its capture hooks once, on first use
        assert len(model(**batch, output_attentions=True).attentions) == LAYERS
    apply_plan(model, PruningPlan(heads={1: tuple(range(HEADS)), 2: (0,)}))
    att = copy.deepcopy(model)(**batch, output_attentions=True).attentions
    assert [a.shape[1] for a in att] == [HEADS, 0, HEADS - 1]
    assert isinstance(encoder_layers(model)[1].attention, type(encoder_layers(model)[0].attention))
