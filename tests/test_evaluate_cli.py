"""``sma evaluate``: a model saved by ``sma run`` measured again gives the run's own numbers; on another
collection and as an int8 copy it gives what the dense and pruned models score there, worked out here."""

import json

import pytest
import torch

from sma.cli import main
from sma.config import RunConfig, apply_overrides
from sma.evaluate import evaluate_model
from sma.model import BiEncoder
from sma.pipeline import run
from sma.prepare import load_run_data
from sma.quantize import quantize_int8
from sma.tiny import TINY_CORPUS, TINY_QUERIES, _tiny_qrels, write_beir


@pytest.fixture(scope="module")
def saved_run(tiny_model_dir, tiny_beir, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    cfg = apply_overrides(RunConfig(), {
        "model.name": str(tiny_model_dir), "data.dataset": str(tiny_beir), "output_dir": str(root / "results"),
        "experiment": "e", "cache_dir": str(root / "cache"), "sparsity": "0.5", "track": False,
        "eval.show_progress": False, "deterministic": True, "distill.batch_size": 8, "distill.max_length": 16,
        "distill.post_prune_epochs": 1, "prune.gentleness": 0.0, "analysis.probe_queries": 6,
        "analysis.ablation_queries": 4, "analysis.neuron_group_size": 16, "analysis.batch_size": 8,
        "bench.enabled": False, "bench.seq_len": 16, "bench.batch_size": 2, "bench.repeats": 1,
        "bench.threads": 1})
    run(cfg)
    return cfg, root / "results" / "e" / "phase2" / "s0.50"


def test_the_saved_model_gives_the_runs_own_numbers(saved_run, capsys):
    cfg, folder = saved_run
    assert main(["evaluate", str(folder)]) == 0
    tiny = cfg.data.dataset.rstrip("/").rsplit("/", 1)[-1]
    got = json.loads((folder / f"evaluation-{tiny}.json").read_text())["sparsities"][0]
    ran = json.loads((folder / "metrics.json").read_text())
    for key in ("test_ndcg_at_10", "test_dense_ndcg_at_10", "test_retention", "dev_retention", "corpus_cosine",
                "test_top10_overlap", "test_query_cosine", "actual_sparsity", "documents"):
        assert got[key] == ran[key], key
    assert got["per_query"]["test"] == ran["per_query"]["test"]
    assert "Retention" in capsys.readouterr().out


def test_another_collection_and_the_int8_copy(saved_run, tmp_path):
    cfg, folder = saved_run
    # the same documents, other judgements: queries 0-5 become the test split
    other = write_beir(tmp_path / "other", TINY_CORPUS, TINY_QUERIES,
                       {"train": _tiny_qrels(range(6, 9)), "dev": _tiny_qrels(range(9, 12)),
                        "test": _tiny_qrels(range(0, 6))})
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(folder), "--dataset", str(other), "--set", "bench.int8=true",
                 "--output", str(out)]) == 0
    got = json.loads(out.read_text())
    row = got["sparsities"][0]
    assert got["dataset"] == "other" and set(row["per_query"]["test"]) == {f"q{i}" for i in range(6)}
    # worked out here: dense, pruned and int8-pruned nDCG@10 on the other collection's test split
    ocfg = apply_overrides(cfg, {"data.dataset": str(other)})
    data = load_run_data(ocfg)
    dense = evaluate_model(BiEncoder.from_config(cfg.model), data, ocfg)[0]["test"].mean["ndcg_at_10"]
    pruned_model = BiEncoder.from_config(cfg.model, name=str(folder / "model"))
    (res, emb), (res8, emb8) = (evaluate_model(m, data, ocfg) for m in (pruned_model, quantize_int8(pruned_model)))
    pruned, int8 = (r["test"].mean["ndcg_at_10"] for r in (res, res8))
    cosine = torch.nn.functional.cosine_similarity(emb.docs, emb8.docs, dim=-1).mean().item()
    assert not torch.equal(emb.docs, emb8.docs)  # int8 moved the documents' embeddings a little
    assert row["int8_corpus_cosine"] == pytest.approx(cosine, abs=1e-6)
    assert row["test_dense_ndcg_at_10"] == pytest.approx(dense, abs=1e-6)
    assert row["test_ndcg_at_10"] == pytest.approx(pruned, abs=1e-6)
    assert row["test_retention"] == pytest.approx(pruned / dense, abs=1e-6)
    assert row["test_retention_int8"] == pytest.approx(int8 / dense, abs=1e-6)


def test_a_folder_without_a_model_is_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a pruned model folder" in err


def test_the_int8_copy_in_onnx_runtime(saved_run, tmp_path, monkeypatch):
    """``bench.int8_runtime=onnxruntime``: the int8 numbers are those of the exported model quantized by ONNX
    Runtime, worked out here with onnxruntime's own quantizer, one padded batch per kind (the tiny collection
    fits one evaluation batch, and a dynamic int8 layer's input scale is per batch) and ir-measures."""
    ort = pytest.importorskip("onnxruntime")
    import ir_measures
    import numpy as np
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from sma.data import doc_text
    from sma.export import write_onnx
    from sma.onnx_encoder import OnnxBiEncoder

    cfg, folder = saved_run
    texts = []  # what ONNX Runtime embedded: the tiny model's int8 MatMuls move its embeddings too little to tell
    forward = OnnxBiEncoder.forward

    def spy(self, input_ids, attention_mask, token_type_ids=None):
        texts.append(len(input_ids))
        return forward(self, input_ids, attention_mask, token_type_ids)

    monkeypatch.setattr(OnnxBiEncoder, "forward", spy)
    from sma import export

    exports, real_session = [], export.onnx_session

    def counted_session(*args, **kwargs):
        exports.append(kwargs.get("int8"))
        return real_session(*args, **kwargs)

    monkeypatch.setattr(export, "onnx_session", counted_session)
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(folder), "--set", "bench.int8=true", "--set", "bench.int8_runtime=onnxruntime",
                 "--output", str(out)]) == 0
    row = json.loads(out.read_text())["sparsities"][0]
    assert row["int8_runtime"] == "onnxruntime" and row["bench_int8"]["dtype"] == "onnx-int8"
    assert "int8_activations" not in row  # ONNX Runtime quantizes inputs to 8 bits, whatever that setting says
    assert exports == [True]  # the benchmark timed the evaluated int8 session: one export and quantization

    (tmp_path / "fp32").mkdir()
    path = write_onnx(folder / "model", tmp_path / "fp32" / "model.onnx", pooling=cfg.model.pooling,
                      normalize=cfg.model.normalize)
    quantize_dynamic(str(path), str(tmp_path / "int8.onnx"), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"])
    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    pruned = BiEncoder.from_config(cfg.model, name=str(folder / "model"))
    data = load_run_data(cfg)
    assert len(data.corpus) <= cfg.eval.batch_size
    assert sum(texts) >= len(data.corpus) + len(data.qrels[cfg.data.test_split])  # corpus and queries through it

    def embed(texts, max_length):
        batch = pruned.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        return session.run(None, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})[0]

    dids = list(data.corpus)
    docs = embed([doc_text(data.corpus[d]) for d in dids], cfg.model.doc_max_length)
    qrels = data.qrels[cfg.data.test_split]
    qids = list(qrels)
    scores = embed([data.queries[q] for q in qids], cfg.model.query_max_length) @ docs.T
    run = {q: {d: float(s) for d, s in zip(dids, scores[i], strict=True)} for i, q in enumerate(qids)}
    ndcg = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10]
    float_docs = pruned.encode([doc_text(data.corpus[d]) for d in dids], kind="doc").numpy()
    cosine = float(np.mean((docs * float_docs).sum(-1) / np.linalg.norm(docs, axis=-1)
                           / np.linalg.norm(float_docs, axis=-1)))
    assert row["int8_corpus_cosine"] == pytest.approx(cosine, abs=1e-6)
    assert row["test_ndcg_at_10_int8"] == pytest.approx(ndcg, abs=1e-6)
    assert row["test_retention_int8"] == pytest.approx(ndcg / row["test_dense_ndcg_at_10"], abs=1e-6)


def test_the_model_served_in_bfloat16(saved_run, tmp_path, capsys):
    """``--dtype bfloat16``: the numbers are those of the saved model converted to bfloat16 (worked out here by
    converting it and evaluating), against the float32 dense model; its benchmark times the bfloat16 copy."""
    cfg, folder = saved_run
    assert main(["evaluate", str(folder), "--dtype", "bfloat16", "--set", "bench.enabled=true", "--set",
                 "bench.device=cpu"]) == 0
    tiny = cfg.data.dataset.rstrip("/").rsplit("/", 1)[-1]
    got = json.loads((folder / f"evaluation-{tiny}-bfloat16.json").read_text())  # beside a float32 evaluation
    row = got["sparsities"][0]
    assert got["dtype"] == "bfloat16" and row["bench"]["dtype"] == "cpu-bfloat16"
    assert row["bench"]["pruned"]["encoder_weight_bytes"] * 2 == 4 * row["bench"]["pruned"]["encoder_params"]
    data = load_run_data(cfg)
    dense = evaluate_model(BiEncoder.from_config(cfg.model), data, cfg)
    pruned = BiEncoder.from_config(cfg.model, name=str(folder / "model"))
    res32, emb32 = evaluate_model(pruned, data, cfg)
    res16, emb16 = evaluate_model(pruned.to(torch.bfloat16), data, cfg)
    assert not torch.equal(emb32.docs, emb16.docs)  # bfloat16 moved the embeddings
    cosine = torch.nn.functional.cosine_similarity(emb16.docs, dense[1].docs, dim=-1).mean().item()
    assert row["corpus_cosine"] == pytest.approx(cosine, abs=1e-6)
    for split in ("dev", "test"):
        want = res16[split].mean["ndcg_at_10"]
        assert row[f"{split}_ndcg_at_10"] == pytest.approx(want, abs=1e-6)
        assert row[f"{split}_retention"] == pytest.approx(want / dense[0][split].mean["ndcg_at_10"], abs=1e-6)
    capsys.readouterr()
    for flags, problem in ((["--set", "bench.int8=true"], "bench.int8"),
                           (["--set", "bench.enabled=true", "--set", "bench.device=cuda"], "bench.device=cpu")):
        assert main(["evaluate", str(folder), "--dtype", "bfloat16", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.count("--dtype bfloat16") == 1 and problem in err, err
