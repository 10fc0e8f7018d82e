"""``sma export``: a pruned model as a folder that serving tools load without SMA.

    sma export results/<experiment>/phase2/s0.50 --format sentence-transformers --out minilm-s50-st
    sma export results/<experiment>/phase2/s0.50 --format onnx --out minilm-s50-onnx
    SentenceTransformer("minilm-s50-st", trust_remote_code=True).encode(["what is a wing"])

The sentence-transformers folder is the pruned model (weights, ``sma_structure.json``, tokenizer) with a
copy of :mod:`sma.stock_encoder` as its modelling code (``config.json``'s ``auto_map``: layers keep their own
head and neuron counts, so the speed-up stays), sentence-transformers' stock ``Transformer``, ``Pooling``
and (with cosine similarity) ``Normalize`` modules configured as :class:`sma.model.BiEncoder` encodes: with the
``model.*`` settings of the run that wrote the model (its ``config.json``) when there is one.
sentence-transformers runs code shipped with a model only with ``trust_remote_code=True``. It has one
maximum length: the documents' (``model.doc_max_length``); queries are cut there, not at
``model.query_max_length``, which only matters for queries longer than that.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections.abc import Collection
from importlib.metadata import version
from pathlib import Path

from sma.atomic import atomic_dir
from sma.config import ConfigError, RunConfig
from sma.config.sections import ModelConfig
from sma.layout import CONFIG_FILE, MODEL_DIR, PHASE2_DIR, STRUCTURE_FILE

FORMATS = ("sentence-transformers", "onnx")
LOADER = Path(__file__).with_name("stock_encoder.py")
AUTO_MAP = {"AutoConfig": f"{LOADER.stem}.SmaPrunedConfig", "AutoModel": f"{LOADER.stem}.SmaPrunedModel"}
ONNX_FILE = "model.onnx"
ONNX_OPSET = 23
"""Opset of the exported model: 23 has ONNX's own ``Attention`` operator, which ONNX Runtime (1.23 and later)
runs as one CPU kernel. Exported at opset 18, PyTorch's attention becomes MatMul, Softmax and a NaN guard
(``IsNaN`` and ``Where`` over every attention matrix) that alone took 40 % of a 50 % MiniLM's ONNX Runtime
time on 32 x 256 tokens."""


def model_dir(path: str | Path) -> Path:
    """The pruned model folder at ``path``: the folder itself, or its ``model/`` (a sparsity's result folder
    ``phase2/s0.50`` or a trial's checkpoint); one line naming ``path`` otherwise."""
    path = Path(path)
    for candidate in (path, path / MODEL_DIR):
        if (candidate / STRUCTURE_FILE).is_file():
            return candidate
    raise ConfigError(f"{str(path)!r} is not a pruned model folder (no {STRUCTURE_FILE} in it or in "
                      f"its {MODEL_DIR}/): give a folder written by sma run, e.g. results/<exp>/phase2/s0.50")


def _st_modules(model: ModelConfig) -> list[dict]:
    modules = [("", "sentence_transformers.models.Transformer"), ("1_Pooling", "sentence_transformers.models.Pooling")]
    if model.normalize:
        modules.append(("2_Normalize", "sentence_transformers.models.Normalize"))
    return [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (path, kind) in enumerate(modules)]


def export_sentence_transformers(source: Path, out: Path, model: ModelConfig) -> Path:
    """Write the sentence-transformers folder of the pruned model in ``source`` to ``out`` (replaced whole)."""
    config = json.loads((source / "config.json").read_text())
    width = int(config.get("hidden_size", config.get("dim", 0)))
    with atomic_dir(out) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        shutil.copy2(LOADER, tmp / LOADER.name)
        (tmp / "config.json").write_text(json.dumps({**config, "auto_map": AUTO_MAP}, indent=2, sort_keys=True))
        (tmp / "modules.json").write_text(json.dumps(_st_modules(model), indent=2))
        (tmp / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": model.doc_max_length, "do_lower_case": False}, indent=2))
        (tmp / "1_Pooling").mkdir()
        (tmp / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": width, "pooling_mode_cls_token": model.pooling == "cls",
            "pooling_mode_mean_tokens": model.pooling == "mean", "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
        if model.normalize:
            (tmp / "2_Normalize").mkdir()
        (tmp / "config_sentence_transformers.json").write_text(json.dumps({
            "__version__": {"sentence_transformers": version("sentence-transformers"),
                            "transformers": version("transformers"), "pytorch": version("torch")},
            "similarity_fn_name": "cosine" if model.normalize else "dot"}, indent=2))
    return out


def write_onnx(encoder_dir: Path, path: Path, *, pooling: str = "mean", normalize: bool = True) -> Path:
    """The ONNX model of the pruned encoder saved in ``encoder_dir`` at ``path``: inputs ``input_ids`` and
    ``attention_mask`` (int64 [batch, tokens], both dynamic), output ``sentence_embedding`` [batch, hidden],
    pooled and normalised as :class:`sma.model.BiEncoder` does, at opset :data:`ONNX_OPSET`. The exporter
    traces the stock-class rebuild."""
    import torch

    from sma.model import BiEncoder
    from sma.stock_encoder import load_encoder

    encoder = load_encoder(encoder_dir)
    pooled = BiEncoder(encoder, None, pooling=pooling, normalize=normalize).eval()
    ids = torch.randint(1, min(int(encoder.config.vocab_size), 1000), (2, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
    torch.onnx.export(pooled, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["sentence_embedding"], dynamic_shapes=({0: batch, 1: tokens}, {0: batch, 1: tokens}),
                      dynamo=True, opset_version=ONNX_OPSET)
    return path


def export_onnx(source: Path, out: Path, model: ModelConfig) -> Path:
    """Write ``out/model.onnx`` (:func:`write_onnx`), the tokenizer, and ``sma_export.json`` with the maximum
    lengths to tokenize queries and documents with."""
    from transformers import AutoTokenizer

    with atomic_dir(out) as tmp:
        write_onnx(source, tmp / ONNX_FILE, pooling=model.pooling, normalize=model.normalize)
        AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(tmp))
        (tmp / "sma_export.json").write_text(json.dumps({
            "pooling": model.pooling, "normalize": model.normalize, "query_max_length": model.query_max_length,
            "doc_max_length": model.doc_max_length, "inputs": ["input_ids", "attention_mask"],
            "output": "sentence_embedding"}, indent=2))
    return out


ONNX_SCOPES = "pkg.torch.onnx.name_scopes"
"""Node metadata in which the dynamo exporter records the module path a node was traced in."""
ONNX_ENCODER_PREFIX = "encoder."
"""Where :func:`write_onnx`'s pooled wrapper holds the bare encoder: module names inside the ONNX model are
the bare encoder's (those of :class:`sma.quantize.Int8Plan`) behind it."""


def onnx_linear_nodes(graph) -> dict[str, str]:
    """``{module name inside the bare encoder: MatMul node name}`` of the exported model's linear layers, from
    the module path the exporter records with each node (the weights themselves are renamed in the graph)."""
    import ast

    nodes: dict[str, str] = {}
    for node in (n for n in graph.node if n.op_type == "MatMul"):
        scopes = next((ast.literal_eval(m.value) for m in node.metadata_props if m.key == ONNX_SCOPES), None)
        if scopes and len(scopes) > 1 and scopes[-2].startswith(ONNX_ENCODER_PREFIX):  # [..., module, op name]
            nodes[scopes[-2].removeprefix(ONNX_ENCODER_PREFIX)] = node.name
    return nodes


def quantize_onnx(path: Path, out: Path, *, keep_float: Collection[str] = ()) -> Path:
    """``out``: the ONNX model at ``path`` with ONNX Runtime's dynamic int8 quantization (int8 weights of every
    matrix multiplication, activations quantized per batch at run time), for CPU serving; the linear layers
    named in ``keep_float`` (names inside the bare encoder, as in :class:`sma.quantize.Int8Plan`) stay float32.
    MatMuls only, the layers PyTorch's int8 copy quantizes (:func:`sma.quantize.quantize_int8`): int8 embedding
    tables (the quantizer's Gathers) cost a 70 % MiniLM 0.4 points of cranfield test retention more (3 seeds),
    and it would turn opset 23's ``Attention`` into ONNX Runtime's ``QAttention``, which does not take its
    attributes.

    Weights are quantized per output channel: on MiniLM, one scale per weight matrix (ONNX Runtime's default)
    moved embeddings to a cosine of 0.94-0.97 with the float model's, one per channel to 0.99."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(path), load_external_data=False).graph
    empty = {init.name for init in graph.initializer if 0 in init.dims}  # an emptied layer's weights
    skip = [node.name for node in graph.node if empty & set(node.input)]
    if keep_float:
        linears = onnx_linear_nodes(graph)
        unknown = sorted(set(keep_float) - set(linears))
        if unknown:
            raise ValueError(f"keep_float: {unknown[0]!r} is not a linear layer of the ONNX model at {path}")
        skip += [linears[name] for name in keep_float]
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs a line per tensor to the root logger at INFO
    try:
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=skip,
                         op_types_to_quantize=["MatMul"])
    finally:
        root.setLevel(level)
    return out


def onnx_session(encoder, *, threads: int, int8: bool = False, keep_float: Collection[str] = (),
                 pooling: str = "mean", normalize: bool = True):
    """An ONNX Runtime CPU session of ``encoder`` (an in-memory pruned encoder, pooled and normalised as
    :func:`write_onnx` does), int8-quantized with ``int8`` (:func:`quantize_onnx`, ``keep_float`` left in
    float32), for benchmarks and :class:`sma.onnx_encoder.OnnxBiEncoder`."""
    import tempfile

    import onnxruntime as ort

    from sma.prune import save_pruned

    with tempfile.TemporaryDirectory(prefix="sma-onnx-") as tmp:
        path = write_onnx(save_pruned(encoder, Path(tmp) / MODEL_DIR), Path(tmp) / ONNX_FILE, pooling=pooling,
                          normalize=normalize)
        if int8:
            path = quantize_onnx(path, Path(tmp) / f"int8-{ONNX_FILE}", keep_float=keep_float)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


WRITERS = {"sentence-transformers": export_sentence_transformers, "onnx": export_onnx}


def export_extras(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a pruned model folder, or a folder holding one in model/ (results/<exp>/phase2/s0.50)")
    p.add_argument("--format", choices=FORMATS, default="sentence-transformers", dest="export_format",
                   help="what to write")
    p.add_argument("--out", type=Path, default=None,
                   help="the folder to write (default: <path>/export-<format>; replaced whole)")


def out_dir(args: argparse.Namespace) -> Path:
    return args.out if args.out is not None else Path(args.path) / f"export-{args.export_format}"


def run_config_of(source: Path) -> Path | None:
    """The config of the ``sma run`` that wrote the model in ``source`` (``<run>/phase2/s0.50/model``)."""
    sparsity_folder = source.parent
    if sparsity_folder.parent.name == PHASE2_DIR and (sparsity_folder.parent.parent / CONFIG_FILE).is_file():
        return sparsity_folder.parent.parent / CONFIG_FILE
    return None


def run_cli(args: argparse.Namespace, cfg: RunConfig) -> int:
    from sma.config.options import run_config
    from sma.preflight import check_writable_dir

    source = model_dir(args.path)
    found = run_config_of(source) if args.config is None else None
    if found is not None:  # the run's pooling and lengths, then --set on top
        cfg = run_config(argparse.Namespace(**{**vars(args), "config": str(found)}), "export")
        print(f"model settings from {found}: pooling {cfg.model.pooling}, normalize {cfg.model.normalize}, "
              f"lengths {cfg.model.query_max_length}/{cfg.model.doc_max_length}")
    check_writable_dir(str(out_dir(args).parent), "--out")
    out = WRITERS[args.export_format](source, out_dir(args), cfg.model)
    how = {"sentence-transformers": f"SentenceTransformer({str(out)!r}, trust_remote_code=True)",
           "onnx": f"onnxruntime.InferenceSession({str(out / ONNX_FILE)!r}), tokenizer and lengths beside it"}
    print(f"wrote {out} ({args.export_format}); load it with {how[args.export_format]}")
    return 0
