"""``run_analysis`` end to end on the hand-built tiny model: files, determinism, cache, circuits."""

from __future__ import annotations

import json

import pytest
import torch

from sma.circuits import AnalysisConfig, run_analysis
from sma.circuits.probe import build_probe
from sma.circuits.synthetic import KEY_HEAD, tiny_biencoder, tiny_collection

CFG = AnalysisConfig(probe_queries=12, positives_per_query=2, negatives_per_query=2, ablation_queries=8,
                     neuron_group_size=4, attribution_steps=2, seed=7)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("run")
    return run_analysis(tiny_biencoder(), tiny_collection(), CFG, out, cache_dir=cache), out, cache


def test_probe_is_seeded_and_uses_training_queries_only_by_default():
    data = tiny_collection()
    a, b = build_probe(data, cfg=CFG), build_probe(data, cfg=CFG)
    assert a == b
    assert set(a.query_ids) == set(data.qrels["train"])  # all 12, none of dev (kept unbiased) or test
    with_dev = build_probe(data, cfg=AnalysisConfig(probe_queries=18, probe_splits=("train", "dev")))
    assert set(with_dev.query_ids) == set(data.qrels["train"]) | set(data.qrels["dev"])
    for qi, negatives in enumerate(a.negatives):
        relevant = {i for i, _ in a.relevant[qi]}
        assert len(negatives) == 2 and not relevant & set(negatives)
        assert set(a.positives[qi]) <= relevant
    other = build_probe(data, cfg=AnalysisConfig(probe_queries=12, seed=8))
    assert other.query_ids != a.query_ids
    with pytest.raises(ValueError):
        AnalysisConfig(probe_splits=("train", "test"))


def test_a_probe_short_of_judged_queries_is_topped_up_with_pseudo_queries_cut_from_their_positive():
    from dataclasses import replace

    data = tiny_collection()
    judged = build_probe(data, cfg=replace(CFG, probe_queries=20))
    assert len(judged.query_ids) == 12  # the 12 training queries: the flag is off by default
    topped = build_probe(data, cfg=replace(CFG, probe_queries=20, probe_pseudo_queries=True))
    assert topped.query_ids[:12] == judged.query_ids and topped.query_texts[:12] == judged.query_texts
    assert len(topped.query_ids) == 20 and len(set(topped.query_ids)) == 20
    for q in range(12, 20):
        qid, text = topped.query_ids[q], topped.query_texts[q]
        (pos,) = topped.positives[q]
        source = topped.doc_ids[pos]
        assert qid == "pseudo:" + source and topped.relevant[q] == ((pos, 1),)
        words = text.split()
        assert 6 <= len(words) <= 20 and text in " ".join(topped.doc_texts[pos].split())  # a span of its positive
        assert len(topped.negatives[q]) == 2 and pos not in topped.negatives[q]
    assert topped == build_probe(data, cfg=replace(CFG, probe_queries=20, probe_pseudo_queries=True))
    assert len(build_probe(data, cfg=replace(CFG, probe_pseudo_queries=True)).query_ids) == 12  # enough judged


def test_a_collection_without_training_queries_is_probed_with_pseudo_queries_alone():
    from dataclasses import replace

    from sma.data import RetrievalData

    full = tiny_collection()
    data = RetrievalData(name=full.name, corpus=full.corpus, queries=full.queries,
                         qrels={s: q for s, q in full.qrels.items() if s != "train"})
    probe = build_probe(data, cfg=replace(CFG, probe_pseudo_queries=True))
    assert len(probe.query_ids) == 12 and all(q.startswith("pseudo:") for q in probe.query_ids)
    with pytest.raises(ValueError, match="no probe queries in train and analysis.probe_pseudo_queries is off"):
        build_probe(data, cfg=CFG)


def test_files_hold_every_unit_of_every_method(first_run):
    result, out, _ = first_run
    phase1 = out / "phase1"
    scores = json.loads((phase1 / "importance_scores.json").read_text())
    assert set(scores["methods"]) == {"ablation", "attribution", "magnitude", "random"}
    for m in scores["methods"].values():
        assert [len(h) for h in m["heads"]] == [4, 4]
        assert [len(n) for n in m["neurons"]] == [8, 8]
    assert scores["probe"]["queries"] == 12 and scores["config"]["seed"] == 7
    circuits = json.loads((phase1 / "circuits.json").read_text())
    assert set(circuits["circuits"]) == set(scores["methods"])
    for c in circuits["circuits"].values():
        assert {"units", "retained_share", "faithfulness", "keep_fraction", "top_units"} <= set(c)
    for name in ("heads_ablation.png", "neurons_ablation.png", "heads_random.png", "faithfulness.md"):
        assert (phase1 / name).stat().st_size > 0
    assert all(p.exists() for p in result.files)


def test_ablation_circuit_holds_the_key_head_and_is_faithful(first_run):
    result, _, _ = first_run
    circuit = result.circuit("ablation")
    assert ("head", *KEY_HEAD) in circuit
    c = result.circuits["ablation"]
    f = c["faithfulness"]
    assert c["retained_share"] >= CFG.circuit_share
    assert f["circuit_only"]["loss"] < f["circuit_removed"]["loss"]
    assert f["full"]["loss"] <= f["circuit_only"]["loss"] + 1e-9 or c["keep_fraction"] < 1
    assert f["circuit_removed"]["ndcg_at_10"] < f["full"]["ndcg_at_10"]
    assert c["top_units"][0]["unit"] == ["head", *KEY_HEAD]
    # the key head's circuit is smaller than what the random control needs for the same share
    assert c["keep_fraction"] <= result.circuits["random"]["keep_fraction"]


def test_rerun_hits_the_cache_and_a_fresh_run_is_identical(first_run, tmp_path):
    result, _, cache = first_run
    assert not result.from_cache
    again = run_analysis(tiny_biencoder(), tiny_collection(), CFG, tmp_path / "a", cache_dir=cache)
    assert again.from_cache and again.cache_key == result.cache_key and again.scores == result.scores
    fresh = run_analysis(tiny_biencoder(), tiny_collection(), CFG, tmp_path / "b", use_cache=False)
    assert not fresh.from_cache
    assert fresh.scores == result.scores and fresh.circuits == result.circuits
    other = run_analysis(tiny_biencoder(seed=1), tiny_collection(), CFG, None, cache_dir=cache)
    assert not other.from_cache and other.cache_key != result.cache_key


def test_circuit_is_a_valid_protected_set(first_run):
    result, _, _ = first_run
    model = tiny_biencoder()
    circuit = result.circuit("ablation")
    assert all(kind in ("head", "neuron") and 0 <= layer < 2 and 0 <= i < (4 if kind == "head" else 8)
               for kind, layer, i in circuit)
    from sma.prune import plan_for_sparsity

    plan = plan_for_sparsity(model, result.scores["random"], 0.5, allocation="per_layer", protected=circuit)
    removed = {("head", n, i) for n, ids in plan.heads.items() for i in ids}
    removed |= {("neuron", n, i) for n, ids in plan.neurons.items() for i in ids}
    assert removed and not removed & set(circuit)


def test_compare_prunes_by_each_method_and_reports_retention(tmp_path):
    from sma.circuits.compare import compare_methods

    model = tiny_biencoder()
    result = compare_methods(model, tiny_collection(), CFG, sparsity=0.5, random_seeds=2, out_dir=tmp_path,
                             cache_dir=tmp_path / "cache", show_progress=False)
    methods = [r.method for r in result.rows]
    assert methods == ["ablation", "attribution", "magnitude", "random(seed=7)", "random(seed=8)", "first_n"]
    for r in result.rows:
        assert r.retention == pytest.approx(r.ndcg_at_10 / result.dense_ndcg_at_10)
        assert abs(r.actual_sparsity - 0.5) < 0.05
    by = {r.method: r for r in result.rows}
    # both mechanistic methods keep the key head; first-N (heads 0 and 1 kept) happens to keep it too
    assert by["ablation"].retention > 0.9 and by["attribution"].retention > 0.9
    assert json.loads((tmp_path / "phase1" / "compare_s0.50.json").read_text())["rows"][0]["method"] == "ablation"
    assert "| ablation |" in (tmp_path / "phase1" / "compare_s0.50.md").read_text()


def test_cli_smoke_test_writes_phase1(tmp_path):
    from sma.circuits.cli import run_cli
    from sma.cli import build_config, make_parser

    args = make_parser().parse_args(["analyze", "--smoke-test", "--output-dir", str(tmp_path / "out"),
                              "--cache-dir", str(tmp_path / "cache"), "--methods", "attribution", "random",
                              "--set", "analysis.attribution_steps=1"])
    assert run_cli(args, build_config(args)) == 0
    phase1 = tmp_path / "out" / "smoke-test" / "phase1"
    scores = json.loads((phase1 / "importance_scores.json").read_text())
    assert set(scores["methods"]) == {"attribution", "random"}
    assert scores["config"]["attribution_steps"] == 1
    assert (phase1 / "compare_s0.50.md").is_file() and (phase1 / "heads_attribution.png").is_file()


def test_each_part_is_cached_on_its_own(tmp_path):
    from dataclasses import replace

    cache = tmp_path / "cache"
    only = replace(CFG, methods=("attribution",))
    a = run_analysis(tiny_biencoder(), tiny_collection(), only, None, cache_dir=cache)
    assert len(list((cache / "analysis").glob("*.json"))) == 2  # activation statistics + attribution
    b = run_analysis(tiny_biencoder(), tiny_collection(), replace(CFG, methods=("attribution", "random")), None,
                     cache_dir=cache)
    assert not b.from_cache and len(list((cache / "analysis").glob("*.json"))) == 3
    assert b.scores["attribution"] == a.scores["attribution"]
    # attribution does not depend on the ablation method's neuron groups: still a cache hit
    c = run_analysis(tiny_biencoder(), tiny_collection(), replace(only, neuron_group_size=2), None, cache_dir=cache)
    assert c.from_cache and c.scores == a.scores
