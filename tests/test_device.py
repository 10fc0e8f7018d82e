"""The run's device: resolution and validation everywhere; on a CUDA machine the whole pipeline runs there.

The CUDA tests are skipped without a GPU (CI has none); they were run on lent H100 and H200 machines (README, Tests).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from sma.config import BenchConfig, ConfigError, RunConfig, apply_overrides
from sma.device import resolve_device
from sma.train import contrastive_loss

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_auto_is_the_cpu_without_cuda_and_explicit_names_are_kept(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_an_accelerator_that_is_not_there_is_an_error_not_a_silent_cpu_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CUDA", "", "cpu:0:1"])
def test_unknown_device_names_are_rejected_by_the_config(name):
    with pytest.raises(ValueError, match="device: must be"):
        RunConfig(device=name)
    with pytest.raises(ValueError, match="device: must be"):
        BenchConfig(device=name)
    with pytest.raises(ValueError, match="device: must be"):
        resolve_device(name)


def test_device_overrides_parse():
    cfg = apply_overrides(RunConfig(), {"device": "cuda:1", "bench.device": "auto"})
    assert (cfg.device, cfg.bench.device) == ("cuda:1", "auto")
    with pytest.raises((ConfigError, ValueError)):
        apply_overrides(RunConfig(), {"device": "tpu"})


def test_contrastive_loss_by_hand_masks_other_positives():
    # 2 queries x 3 docs, temperature 1: q0's positive is d0, d1 is also relevant to q0 (masked out).
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    qrels = {"a": {"x": 1, "y": 1}, "b": {"z": 1}}
    loss = contrastive_loss(q, d, qids=["a", "b"], dids=["x", "y", "z"], pos_index=torch.tensor([0, 2]),
                            qrels=qrels, temperature=1.0)
    # q0: logits (1, -, 0) -> log(e + 1) - 1; q1: logits (0, .5, 1) -> log(1 + e^.5 + e) - 1
    expected = ((math.log(math.e + 1) - 1) + (math.log(1 + math.exp(0.5) + math.e) - 1)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------------ CUDA only


def _cfg(tiny_model_dir, tiny_beir, tmp_path, **extra):
    return apply_overrides(RunConfig(), {
        "model.name": str(tiny_model_dir), "data.dataset": str(tiny_beir), "output_dir": str(tmp_path / "results"),
        "experiment": "e", "cache_dir": str(tmp_path / "cache"), "sparsity": "0.5", "device": "cuda",
        "eval.show_progress": False, "distill.batch_size": 8, "distill.max_length": 16,
        "distill.post_prune_epochs": 1, "prune.step_epochs": 0.5, "prune.gentleness": 0.5,
        "analysis.probe_queries": 6, "analysis.ablation_queries": 4, "analysis.neuron_group_size": 16,
        "analysis.batch_size": 8, "bench.repeats": 2, "bench.seq_len": 16, "bench.batch_size": 2,
        "bench.threads": 1, "bench.device": "cuda", "track": False, **extra,  # the GPU machine may lack MLflow
    })


@cuda
def test_the_whole_pipeline_runs_on_cuda(tiny_model_dir, tiny_beir, tmp_path):
    """Baseline fine-tuning, analysis, gradual pruning, layer and batch distillation with the task loss,
    evaluation and a CUDA benchmark, all with the models on the GPU."""
    from sma.pipeline import run
    from sma.prepare import prepare
    from sma.prune import encoder_sparsity, load_pruned

    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{
        "train.baseline_epochs": 1, "distill.alpha": 0.7, "distill.hidden_weight": 1.0,
        "distill.neighbor_share": 0.5, "distill.neighbors": 2})
    results = run(cfg)
    assert prepare(cfg).load_teacher().device.type == "cuda"
    row = results["sparsities"][0]
    assert abs(row["actual_sparsity"] - 0.5) <= 0.005 + 1e-9
    assert row["test_retention"] == pytest.approx(row["test_ndcg_at_10"] / row["test_dense_ndcg_at_10"])
    metrics = json.loads((tmp_path / "results" / "e" / "phase2" / "s0.50" / "metrics.json").read_text())
    assert "NVIDIA" in metrics["bench"]["device"] or "cuda" in metrics["bench"]["device"].lower()
    model = load_pruned(tmp_path / "results" / "e" / "phase2" / "s0.50" / "model")
    assert encoder_sparsity(model).sparsity == pytest.approx(row["actual_sparsity"], abs=1e-9)


@cuda
def test_analysis_scores_on_cuda_match_the_cpu(tiny_model_dir, tiny_beir, tmp_path):
    from sma.prepare import prepare

    gpu = prepare(_cfg(tiny_model_dir, tiny_beir, tmp_path / "gpu")).importance
    cpu = prepare(_cfg(tiny_model_dir, tiny_beir, tmp_path / "cpu", device="cpu")).importance
    a, b = gpu.scores_for("mechanistic"), cpu.scores_for("mechanistic")
    for x, y in zip(a.heads + a.neurons, b.heads + b.neurons, strict=True):
        torch.testing.assert_close(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64),
                                   rtol=1e-2, atol=1e-6, equal_nan=True)


@cuda
def test_pruned_model_on_cuda_equals_the_masked_dense_model():
    from sma.prune import apply_plan, masked
    from sma.tiny import inputs, random_plan, run, tiny_model

    for seed in range(3):
        dense = tiny_model("bert", seed=seed).cuda()
        plan = random_plan(dense, seed)
        batch = {k: v.cuda() for k, v in inputs(seed).items()}
        with masked(dense, plan):
            expected = run(dense, batch)
        pruned = apply_plan(dense, plan)
        assert next(pruned.parameters()).device.type == "cuda"
        torch.testing.assert_close(run(pruned, batch), expected, rtol=1e-4, atol=1e-5)


def test_the_device_flag_reaches_the_config():
    from sma.cli import make_parser
    from sma.config.options import run_config

    assert run_config(make_parser().parse_args(["run"])).device == "auto"
    assert run_config(make_parser().parse_args(["run", "--device", "cuda:0"])).device == "cuda:0"
    with pytest.raises(ValueError, match="device: must be"):
        run_config(make_parser().parse_args(["run", "--device", "gpu0"]))
