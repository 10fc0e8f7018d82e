"""sma run end to end on the tiny smoke assets: the results layout, the criterion and protection deciding the
plan, a reloaded model reproducing its reported metrics, seeded reruns."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from analysis.stats import retention_interval
from sma import prepare as prepare_mod
from sma.config import RunConfig, apply_overrides
from sma.evaluate import evaluate_model, split_agreement
from sma.metrics import PHASES
from sma.model import BiEncoder
from sma.pipeline import prepare as prepare_phase1
from sma.pipeline import run, run_sparsity
from sma.prepare import load_run_data, prepare
from sma.prune import UnitScores, encoder_sparsity, load_pruned

Unit = tuple[str, int, int]


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
    saved = json.loads((out / "results.json").read_text())
    assert saved["sparsities"] == json.loads(json.dumps(results["sparsities"])) and saved["complete"] is True
    table = capsys.readouterr().out
    assert "Sparsity" in table and "Retention" in table and "Speedup" in table
    shared = prepare(cfg)  # data and teacher embeddings, from the cache
    for row in results["sparsities"]:
        s = row["sparsity"]
        assert abs(row["actual_sparsity"] - s) <= 0.005 + 1e-9
        assert row["test_retention"] == pytest.approx(row["test_ndcg_at_10"] / row["test_dense_ndcg_at_10"])
        folder = out / "phase2" / f"s{s:.2f}"
        plans = json.loads((folder / "plan.json").read_text())
        assert [p["target"] for p in plans][-1] == s and len(plans) == 3  # gentleness 0.5 -> 3 steps
        model = load_pruned(folder / "model")
        assert encoder_sparsity(model).sparsity == pytest.approx(row["actual_sparsity"], abs=1e-9)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert set(metrics["per_query"]["test"]) == {"q9", "q10", "q11"}
        # the dense teacher's per-query numbers beside the student's, for paired statistics over queries
        for split in ("dev", "test"):
            dense = metrics["dense_per_query"][split]
            assert dense == shared.teacher.metrics[split].per_query
            assert sum(v["ndcg_at_10"] for v in dense.values()) / len(dense) == pytest.approx(
                metrics[f"{split}_dense_ndcg_at_10"])
        assert "dense_per_query" not in row
        # retention's interval over the test queries, from those per-query numbers, printed in the table
        low, high = retention_interval({q: v["ndcg_at_10"] for q, v in metrics["per_query"]["test"].items()},
                                       {q: v["ndcg_at_10"] for q, v in metrics["dense_per_query"]["test"].items()})
        assert (row["test_retention_low"], row["test_retention_high"]) == (low, high)
        assert low <= row["test_retention"] <= high
        assert f"{100 * low:.1f}-{100 * high:.1f}" in table
        # the saved model, reloaded as any user would, reproduces the reported test numbers exactly
        reloaded = BiEncoder.from_config(cfg.model, name=str(folder / "model"))
        again, emb = evaluate_model(reloaded, shared.data, cfg)
        assert again["test"].mean["ndcg_at_10"] == row["test_ndcg_at_10"] == metrics["test_ndcg_at_10"]
        assert again["test"].per_query == metrics["per_query"]["test"]
        agree = split_agreement(emb, shared.teacher_eval)["test"]  # nDCG on 3 queries is coarse; cosines are not
        assert (agree.corpus_cosine, agree.query_cosine) == (row["corpus_cosine"], row["test_query_cosine"])
        # where the time went: every phase timed, and together no longer than the whole sparsity
        phases = {k: v for k, v in row.items() if k.startswith("seconds_")}
        assert set(phases) == {f"seconds_{p}" for p in PHASES if p != "int8"}  # int8 is not measured here
        assert all(v >= 0 for v in phases.values()) and sum(phases.values()) <= row["seconds"] + 0.2
    # the collection under the config's cuts, logged with every row
    assert all(row["documents"] == len(shared.data.corpus) for row in results["sparsities"])
    # 6 judged training queries (< 50): a pseudo-query per document joins the 24 documents and the 6 queries
    assert all(row["pseudo_queries_per_document"] == 1.0 for row in results["sparsities"])
    assert len(shared.texts.texts) == 24 + 24 + 6
    assert saved["collection"]["judged_queries"] == {s: len(q) for s, q in shared.data.qrels.items()}
    assert saved["seconds_baseline"] >= 0 and saved["seconds_prepare"] >= 0
    assert saved["seconds_baseline"] + saved["seconds_prepare"] <= saved["seconds"]
    assert (out / "config.json").is_file()
    assert (out / "phase1" / "importance_scores.json").is_file() and (out / "phase1" / "circuits.json").is_file()
    assert not (out / "phase1" / "phase1").exists()


def test_same_seed_gives_identical_results(tiny_model_dir, tiny_beir, tmp_path):
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{"bench.enabled": False, "sparsity": "0.5"})
    prep = prepare(cfg)
    a = run_sparsity(cfg, 0.5, prepared=prep, out_dir=tmp_path / "a")
    b = run_sparsity(cfg, 0.5, prepared=prepare(cfg), out_dir=tmp_path / "b")
    assert not prepare(cfg).teacher_computed  # cached: trials never retrain the teacher
    for k in ("dev_ndcg_at_10", "test_ndcg_at_10", "actual_sparsity", "per_query", "structure"):
        assert a[k] == b[k]


def test_another_seed_reuses_an_untouched_teacher_but_not_a_fine_tuned_one(tiny_model_dir, tiny_beir, tmp_path):
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
    res = run_sparsity(cfg, 0.3, out_dir=tmp_path / "x", reporter=lambda row, student: rows.append(row))
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["dev_retention"] == pytest.approx(res["dev_retention"])
    for key in ("corpus_cosine", "dev_query_cosine", "dev_top10_overlap"):  # agreement, epoch by epoch
        assert rows[-1][key] == pytest.approx(res[key], abs=1e-6)


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


def test_phase1_files_land_in_the_runs_phase1_folder_whoever_prepares(tiny_model_dir, tiny_beir, tmp_path):
    """``sma tune`` and ``sma ablate`` prepare with ``analysis_dir=<run dir>/phase1`` (as ``sma run`` does)."""
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{"prune.criterion": "magnitude"})
    phase1 = cfg.run_dir / "phase1"
    prepare_phase1(cfg, analysis_dir=phase1)
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == ["phase1"]
    assert (phase1 / "importance_scores.json").is_file() and (phase1 / "circuits.json").is_file()
    assert not (phase1 / "phase1").exists()
    with pytest.raises(ValueError, match="phase1"):
        prepare_phase1(cfg, analysis_dir=cfg.run_dir)


def _phase1_scores(phase1: Path, method: str) -> dict[Unit, float]:
    m = json.loads((phase1 / "importance_scores.json").read_text())["methods"][method]
    return {(kind, layer, unit): score for kind in ("head", "neuron")
            for layer, row in enumerate(m[f"{kind}s"]) for unit, score in enumerate(row)}


def _removed_by_step(folder: Path) -> list[set[Unit]]:
    """Per step of plan.json, every unit removed so far (original ids)."""
    out: list[set[Unit]] = []
    gone: set[Unit] = set()
    for step in json.loads((folder / "plan.json").read_text()):
        for kind in ("head", "neuron"):
            gone |= {(kind, int(layer), u) for layer, ids in step["plan"][f"{kind}s"].items() for u in ids}
        out.append(set(gone))
    return out


def _assert_lowest_scored_go(removed: set[Unit], scores: dict[Unit, float], protected: set[Unit]) -> None:
    """Per layer and kind (per_layer/proportional: a layer's heads and its neurons each lose their share),
    no removed unit scores above a kept unprotected one."""
    for layer in {u[1] for u in scores}:
        for kind in ("head", "neuron"):
            gone = [s for u, s in scores.items() if u[:2] == (kind, layer) and u in removed]
            kept = [s for u, s in scores.items() if u[:2] == (kind, layer) and u not in removed | protected]
            assert gone, f"layer {layer} lost no {kind}"
            assert not kept or max(gone) <= min(kept), (kind, layer, max(gone), min(kept))


ANALYSED = {"mechanistic": "attribution", "magnitude": "magnitude", "random": "random"}


def test_the_criterion_decides_the_plan(tiny_model_dir, tiny_beir, tmp_path):
    removed = {}
    for criterion, method in ANALYSED.items():
        cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{
            "experiment": criterion, "prune.criterion": criterion, "prune.protect_circuits": False,
            "sparsity": "0.5", "bench.enabled": False, "distill.post_prune_epochs": 0, "prune.step_epochs": 0.25})
        run(cfg)
        scores = _phase1_scores(cfg.run_dir / "phase1", method)
        steps = _removed_by_step(cfg.run_dir / "phase2" / "s0.50")
        for gone in steps:
            _assert_lowest_scored_go(gone, scores, protected=set())
        for step in json.loads((cfg.run_dir / "phase2" / "s0.50" / "plan.json").read_text()):
            for d in step["plan"]["decisions"]:  # the plan records the scores it ranked by
                assert d["score"] == scores[(d["kind"], d["layer"], d["unit"])]
        removed[criterion] = steps[-1]
    assert len({frozenset(r) for r in removed.values()}) == len(ANALYSED)


def _weakest(scores: UnitScores, share: float) -> set[Unit]:
    """The lowest-scored ``share`` of each layer's heads and of its neurons (at least one of each)."""
    out: set[Unit] = set()
    for kind, rows in (("head", scores.heads), ("neuron", scores.neurons)):
        for layer, row in enumerate(rows):
            order = sorted(range(len(row)), key=lambda u: row[u])
            out |= {(kind, layer, u) for u in order[:max(1, int(share * len(row)))]}
    return out


@pytest.mark.parametrize("criterion", ["mechanistic", "attribution"])
def test_protected_circuit_units_survive_every_step(criterion, tiny_model_dir, tiny_beir, tmp_path, monkeypatch):
    """The circuit made of the units the criterion scores lowest: without protection they would go first, as they
    do under ``attribution`` (the same scores, never protected)."""
    get_importance = prepare_mod.get_importance
    circuits: list[set[Unit]] = []

    def weakest_are_the_circuit(cfg, data, teacher, *, out_dir=None):
        importance = get_importance(cfg, data, teacher, out_dir=out_dir)
        circuits.append(_weakest(importance.scores_for(cfg.prune.criterion), 0.25))
        return replace(importance, circuit=frozenset(circuits[-1]))

    monkeypatch.setattr(prepare_mod, "get_importance", weakest_are_the_circuit)
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{
        "prune.criterion": criterion, "sparsity": "0.5", "bench.enabled": False, "distill.post_prune_epochs": 0,
        "prune.step_epochs": 0.25})
    run(cfg)
    (circuit,) = circuits
    assert len(circuit) == 2 * (1 + 16)  # 2 layers: 1 of 4 heads, 16 of 64 neurons each
    scores = _phase1_scores(cfg.run_dir / "phase1", "attribution")
    protected = circuit if criterion == "mechanistic" else set()
    for gone in _removed_by_step(cfg.run_dir / "phase2" / "s0.50"):
        assert not gone & protected
        _assert_lowest_scored_go(gone, scores, protected=protected)
    assert (gone & circuit) == (set() if protected else circuit)  # unprotected, the weakest all went


def test_int8_float_layers_keeps_the_planned_layers_float_in_evaluation_and_benchmark(tiny_model_dir, tiny_beir,
                                                                                    tmp_path, monkeypatch):
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    from sma import bench, pipeline

    evaluated, timed = [], []
    monkeypatch.setattr(pipeline, "evaluate_model", lambda model, *a, **kw: (
        evaluated.append(sum(isinstance(m, Int8Linear) for m in model.modules())), evaluate_model(model, *a, **kw))[1])
    real_runtimes = bench._runtimes

    def runtimes(*args, **kwargs):
        out = real_runtimes(*args, **kwargs)
        timed.append(sum(isinstance(m, Int8Linear) for m in out[0][1].modules()))
        return out

    monkeypatch.setattr(bench, "_runtimes", runtimes)
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{"bench.int8": True, "bench.int8_float_layers": 2,
                                                          "prune.gentleness": 0.0})
    res = run_sparsity(cfg, 0.5, out_dir=tmp_path / "x")
    plan = res["int8_plan"]
    reloaded = BiEncoder.from_config(cfg.model, name=str(tmp_path / "x" / "model"))
    linears = sum(isinstance(m, torch.nn.Linear) and m.weight.numel() > 0 for m in reloaded.modules())
    assert len(plan["keep_float"]) == 2 and len(plan["sensitivity"]) == linears
    assert plan["texts"] == len(prepare(cfg).data.corpus)  # the tiny corpus is under the 128-document sample
    ranked = sorted(plan["sensitivity"], key=lambda n: -plan["sensitivity"][n])
    assert plan["keep_float"] == ranked[:2]
    assert evaluated[-1] == linears - 2 and timed[-1] == linears - 2


def test_int8_metrics_are_those_of_the_saved_model_quantized(tiny_model_dir, tiny_beir, tmp_path, monkeypatch):
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    from sma import pipeline
    from sma.quantize import quantize_int8

    evaluated = []  # the models the pipeline evaluates: the float32 student, then its int8 copy
    kinds = []  # the classes of their int8 layers: torch's own 7-bit-input layer for bench.int8_activations=reduced

    outputs = []  # what each evaluation returned

    def spy(model, *args, **kwargs):
        evaluated.append(sum(isinstance(m, Int8Linear) for m in model.modules()))
        kinds.append({type(m) for m in model.modules() if isinstance(m, Int8Linear)})
        outputs.append(evaluate_model(model, *args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(pipeline, "evaluate_model", spy)
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{"bench.int8": True, "prune.gentleness": 0.0,
                                                      "bench.int8_activations": "reduced", "bench.int8_engine": "x86"})
    res = run_sparsity(cfg, 0.5, out_dir=tmp_path / "x")
    reloaded = BiEncoder.from_config(cfg.model, name=str(tmp_path / "x" / "model"))
    linears = sum(isinstance(m, torch.nn.Linear) and m.weight.numel() > 0 for m in reloaded.modules())
    assert evaluated[-2] == 0 and evaluated[-1] == linears > 0  # every linear layer with weights int8
    assert kinds[-1] == {Int8Linear}
    again, emb = evaluate_model(quantize_int8(reloaded, activations="reduced", engine="x86"), prepare(cfg).data, cfg)
    assert torch.equal(outputs[-1][1].docs, emb.docs)  # the int8 copy packed by the configured engine
    if "onednn" in torch.backends.quantized.supported_engines:  # which is not the other engine's
        _, onednn = evaluate_model(quantize_int8(reloaded, activations="reduced", engine="onednn"),
                                   prepare(cfg).data, cfg)
        assert not torch.equal(onednn.docs, emb.docs)
    _, float32 = evaluate_model(reloaded, prepare(cfg).data, cfg)
    cosines = (emb.docs * float32.docs).sum(1) / (emb.docs.norm(dim=1) * float32.docs.norm(dim=1))
    assert res["int8_corpus_cosine"] == pytest.approx(cosines.mean().item(), abs=1e-6)
    assert res["test_ndcg_at_10_int8"] == again["test"].mean["ndcg_at_10"]
    assert res["dev_ndcg_at_10_int8"] == again["dev"].mean["ndcg_at_10"]
    saved = json.loads((tmp_path / "x" / "metrics.json").read_text())["int8_per_query"]  # for the report's interval
    assert saved["test"] == again["test"].per_query and set(saved) == {"dev", "test"}
    assert res["test_retention_int8"] == pytest.approx(res["test_ndcg_at_10_int8"] / res["test_dense_ndcg_at_10"])
    assert res["memory_ratio_int8"] < res["memory_ratio"] / 3 and res["speedup_int8"] > 0
    assert res["bench_int8"]["dtype"] == "int8" and res["int8_activations"] == "reduced"
    assert res["int8_engine"] == "x86"
    assert res["int8_plan"] == {"keep_float": [], "texts": 0, "sensitivity": {}}  # nothing kept: nothing measured
    table = pipeline.format_table({"model": "m", "dataset": "d", "num_documents": 1, "sparsities": [res],
                                   "baseline": {"metrics": {}}, "config": {"train": {"baseline_epochs": 0}}})
    assert f"{100 * res['test_retention_int8']:.2f}" in table.split("int8 linear layers")[1]


def test_the_pipeline_rounds_neuron_counts_when_asked(tiny_model_dir, tiny_beir, tmp_path):
    from sma.prune import unit_ids

    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{"bench.enabled": False, "prune.neuron_multiple": 4,
                                                       "prune.gentleness": 0.5, "distill.post_prune_epochs": 0})
    run_sparsity(cfg, 0.6, out_dir=tmp_path / "x")
    kept = [len(u.neurons) for u in unit_ids(load_pruned(tmp_path / "x" / "model"))]
    plain = _cfg(tiny_model_dir, tiny_beir, tmp_path / "plain", **{"bench.enabled": False, "prune.gentleness": 0.5,
                                                                    "distill.post_prune_epochs": 0})
    run_sparsity(plain, 0.6, out_dir=tmp_path / "y")
    exact = [len(u.neurons) for u in unit_ids(load_pruned(tmp_path / "y" / "model"))]
    # 4 is the most a layer of 64 neurons rounds to (a 16th of it); each layer keeps the multiple nearest the exact plan
    assert all(k % 4 == 0 for k in kept) and any(e % 4 for e in exact), (kept, exact)
    assert all(abs(k - e) <= 2 for k, e in zip(kept, exact, strict=True)), (kept, exact)


@pytest.mark.parametrize("frozen", [True, False])
def test_the_saved_student_keeps_the_teachers_word_embeddings_when_they_are_frozen(frozen, tiny_model_dir, tiny_beir,
                                                                                  tmp_path):
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{"bench.enabled": False, "prune.gentleness": 0.0,
                                                       "distill.freeze_word_embeddings": frozen})
    run_sparsity(cfg, 0.5, out_dir=tmp_path / "x")
    table = load_pruned(tmp_path / "x" / "model").get_input_embeddings().weight
    teacher = BiEncoder.from_pretrained(str(tiny_model_dir)).encoder.get_input_embeddings().weight
    assert torch.equal(table, teacher) is frozen  # trained, AdamW's weight decay alone moves every row


def test_the_pipeline_empties_whole_layers_when_asked(tiny_model_dir, tiny_beir, tmp_path):
    from sma.prune import unit_ids

    # one shot: half of the 2 layers' parameters holds one whole layer (its LayerNorms stay), the other loses ~2 %
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{"bench.enabled": False, "prune.whole_layers": 1,
                                                       "prune.gentleness": 0.0, "distill.post_prune_epochs": 0})
    res = run_sparsity(cfg, 0.5, out_dir=tmp_path / "x")
    plans = json.loads((tmp_path / "x" / "plan.json").read_text())
    emptied = plans[-1]["plan"]["layers"]
    assert len(plans) == 1 and len(emptied) == 1
    units = unit_ids(load_pruned(tmp_path / "x" / "model"))
    assert [i for i, u in enumerate(units) if not u.heads and not u.neurons] == emptied
    assert abs(res["actual_sparsity"] - 0.5) <= 0.005


@pytest.mark.parametrize(("threshold", "length"), [(4, 24), (20, 20)])
def test_an_unset_distillation_length_is_derived_from_the_documents(threshold, length, tiny_model_dir, tiny_beir,
                                                                     tmp_path, monkeypatch):
    """Every tiny document is 12 tokens: past a threshold of 4 most are long, and the student and its teacher
    targets are cut at the evaluation length (24); under a threshold of 20 none is, and they are cut at 20."""
    from sma import collection_profile, pipeline

    monkeypatch.setattr(collection_profile, "DISTILL_LENGTH", threshold)
    targets, students = [], []
    embeddings, epochs = prepare_mod.teacher_embeddings, pipeline.distill_epochs
    monkeypatch.setattr(prepare_mod, "teacher_embeddings",
                        lambda teacher, texts, *, max_length, **kw: targets.append(max_length) or embeddings(
                            teacher, texts, max_length=max_length, **kw))
    monkeypatch.setattr(pipeline, "distill_epochs", lambda model, texts, cfg, **kw: students.append(
        cfg.max_length) or epochs(model, texts, cfg, **kw))
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{"model.doc_max_length": 24, "bench.enabled": False})
    cfg = replace(cfg, distill=replace(cfg.distill, max_length=None))
    prep = prepare(cfg)
    assert set(prep.profile.doc_lengths.values()) == {12}
    res = run_sparsity(cfg, 0.5, out_dir=tmp_path / "s", prepared=prep)
    assert targets == [length] and students and set(students) == {length}
    assert res["distill_length"] == length
