import json

import pytest

from sma.config import RunConfig, apply_overrides
from sma.pipeline import run, run_sparsity
from sma.prepare import prepare
from sma.prune import encoder_sparsity, load_pruned


def _cfg(tiny_model_dir, tiny_beir, tmp_path, **extra):
    return apply_overrides(RunConfig(), {
        "model.name": str(tiny_model_dir), "data.dataset": str(tiny_beir), "output_dir": str(tmp_path / "results"),
        "experiment": "e", "cache_dir": str(tmp_path / "cache"), "sparsity": "0.3 0.5",
        "eval.show_progress": False, "deterministic": True, "distill.batch_size": 8, "distill.max_length": 16,
        "distill.post_prune_epochs": 1, "prune.step_epochs": 0.5, "prune.gentleness": 0.5,
        "analysis.probe_queries": 6, "analysis.ablation_queries": 4, "analysis.neuron_group_size": 16,
        "analysis.batch_size": 8, "bench.repeats": 1, "bench.seq_len": 16, "bench.batch_size": 2,
        "bench.threads": 1, **extra,
    })


def test_pipeline_end_to_end_writes_table_and_files(tiny_model_dir, tiny_beir, tmp_path, capsys):
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path)
    results = run(cfg)
    out = tmp_path / "results" / "e"
    assert json.loads((out / "results.json").read_text())["sparsities"] == json.loads(json.dumps(results["sparsities"]))
    table = capsys.readouterr().out
    assert "Sparsity" in table and "Retention" in table and "Speedup" in table
    for row in results["sparsities"]:
        s = row["sparsity"]
        assert abs(row["actual_sparsity"] - s) <= 0.005 + 1e-9
        assert row["test_retention"] == pytest.approx(row["test_ndcg_at_10"] / row["test_dense_ndcg_at_10"])
        folder = out / "phase2" / f"s{s:.2f}"
        plans = json.loads((folder / "plan.json").read_text())
        assert [p["target"] for p in plans][-1] == s and len(plans) == 3  # gentleness 0.5 -> 3 steps
        model = load_pruned(folder / "model")
        assert encoder_sparsity(model).sparsity == pytest.approx(row["actual_sparsity"], abs=1e-9)
        per_query = json.loads((folder / "metrics.json").read_text())["per_query"]
        assert set(per_query["test"]) == {"q9", "q10", "q11"}
        for key in ("corpus_cosine", "dev_query_cosine", "test_query_cosine", "dev_top10_overlap"):
            assert -1.0 <= row[key] <= 1.0 + 1e-6
    assert (out / "config.json").is_file()


def test_same_seed_gives_identical_results(tiny_model_dir, tiny_beir, tmp_path):
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{"bench.enabled": False, "sparsity": "0.5"})
    prep = prepare(cfg)
    a = run_sparsity(cfg, 0.5, prepared=prep, out_dir=tmp_path / "a")
    b = run_sparsity(cfg, 0.5, prepared=prepare(cfg), out_dir=tmp_path / "b")
    assert not prepare(cfg).teacher_computed  # cached: trials never retrain the teacher
    for k in ("dev_ndcg_at_10", "test_ndcg_at_10", "actual_sparsity", "per_query", "structure"):
        assert a[k] == b[k]


def test_another_seed_reuses_an_untouched_teacher_but_not_a_fine_tuned_one(tiny_model_dir, tiny_beir, tmp_path):
    from dataclasses import replace

    from sma.prepare import load_run_data
    from sma.teacher import teacher_key

    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path)
    data = load_run_data(cfg)
    assert teacher_key(cfg, data) == teacher_key(replace(cfg, seed=cfg.seed + 1), data)
    tuned = replace(cfg, train=replace(cfg.train, baseline_epochs=1))
    assert teacher_key(tuned, data) != teacher_key(replace(tuned, seed=cfg.seed + 1), data)
    assert teacher_key(tuned, data) != teacher_key(cfg, data)


def test_reporter_gets_each_post_prune_epoch(tiny_model_dir, tiny_beir, tmp_path):
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{"bench.enabled": False, "distill.post_prune_epochs": 2,
                                                       "distill.eval_every_epoch": True, "prune.gentleness": 0.0})
    rows = []
    res = run_sparsity(cfg, 0.3, out_dir=tmp_path / "x", reporter=rows.append)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["dev_retention"] == pytest.approx(res["dev_retention"])


def test_dense_only_run_reports_the_baseline_before_and_after_fine_tuning(tiny_model_dir, tiny_beir, tmp_path,
                                                                           capsys):
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{"sparsity": "[]", "train.baseline_epochs": 1,
                                                       "train.batch_size": 4, "train.learning_rate": 5e-3})
    results = run(cfg)
    assert results["sparsities"] == [] and not (tmp_path / "results" / "e" / "phase1").exists()  # no analysis
    pretrained = run(apply_overrides(cfg, {"train.baseline_epochs": 0, "experiment": "p"}))["baseline"]["metrics"]
    assert results["baseline"]["pretrained"] == pretrained
    assert results["baseline"]["metrics"] != pretrained and len(results["baseline"]["train_losses"]) > 0
    assert "after baseline fine-tuning; pretrained: dev" in capsys.readouterr().out


def test_a_student_left_dense_and_untrained_agrees_with_the_teacher_exactly(tiny_model_dir, tiny_beir, tmp_path):
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{"bench.enabled": False, "prune.gentleness": 0.0,
                                                       "distill.post_prune_epochs": 0})
    res = run_sparsity(cfg, 0.0, out_dir=tmp_path / "dense")
    assert res["actual_sparsity"] == 0.0 and res["test_retention"] == pytest.approx(1.0)
    for key in ("corpus_cosine", "dev_query_cosine", "test_query_cosine", "dev_top10_overlap", "test_top10_overlap"):
        assert res[key] == pytest.approx(1.0, abs=1e-5)
