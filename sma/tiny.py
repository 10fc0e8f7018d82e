"""Tiny offline assets for ``--smoke-test`` modes and tests: a small BEIR collection, tiny random encoders.

One factory builds every tiny encoder (:func:`tiny_model`: BERT, RoBERTa or DistilBERT, any size, seeded);
:func:`make_tiny_model_dir` saves one with a word-level tokenizer; :func:`smoke_assets` is the pair the
``--smoke-test`` modes run on. The planted-circuit model of :mod:`sma.circuits.synthetic` builds on
:func:`tiny_model` too. :func:`inputs`, :func:`run` and :func:`random_plan` serve the pruning tests.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# --- collection -------------------------------------------------------------------------------------------

WORDS = (
    "wing lift drag flow boundary layer heat transfer shock wave supersonic subsonic pressure "
    "buckling shell plate panel flutter nozzle jet turbulence laminar transition cone cylinder "
    "what how are the of a in on at for and is with by"
).split()

TINY_CORPUS = {
    f"d{i}": {"title": f"doc {i}", "text": " ".join(WORDS[(i * 3 + k) % 30] for k in range(8))} for i in range(24)
}
TINY_QUERIES = {f"q{i}": " ".join(WORDS[(i * 3 + k) % 30] for k in range(3)) for i in range(12)}


def _tiny_qrels(qids: range) -> dict[str, dict[str, int]]:
    return {f"q{i}": {f"d{i}": 2, f"d{(i + 12) % 24}": 1} for i in qids}


TINY_QRELS = {"train": _tiny_qrels(range(0, 6)), "dev": _tiny_qrels(range(6, 9)), "test": _tiny_qrels(range(9, 12))}


def write_beir(folder: Path, corpus=TINY_CORPUS, queries=TINY_QUERIES, qrels=TINY_QRELS) -> Path:
    """Write ``(corpus, queries, qrels)`` (by default the tiny collection) as a BEIR folder."""
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w") as fh:
        for did, doc in corpus.items():
            fh.write(json.dumps({"_id": did, **doc}) + "\n")
    with (folder / "queries.jsonl").open("w") as fh:
        for qid, text in queries.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    for split, sq in qrels.items():
        with (folder / "qrels" / f"{split}.tsv").open("w") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for q, docs in sq.items():
                for d, r in docs.items():
                    fh.write(f"{q}\t{d}\t{r}\n")
    return folder


# --- encoders ---------------------------------------------------------------------------------------------

HIDDEN, HEADS, LAYERS, FFN, VOCAB = 32, 4, 3, 64, 100
"""Default sizes of :func:`tiny_model`: hidden 32, 4 heads of 8, 3 layers, FFN 64, 100 token ids."""
HEAD_SIZE = HIDDEN // HEADS


def tiny_config(family: str = "bert", *, layers: int = LAYERS, heads: int = HEADS, hidden: int = HIDDEN,
                intermediate: int = FFN, vocab_size: int = VOCAB, **extra):
    """Config of a ``bert``, ``roberta`` or ``distilbert`` encoder of the given sizes, 64 positions;
    ``extra`` goes to the config class as is (e.g. ``type_vocab_size=1``)."""
    from transformers import BertConfig, DistilBertConfig, RobertaConfig

    if family == "distilbert":
        return DistilBertConfig(vocab_size=vocab_size, dim=hidden, n_layers=layers, n_heads=heads,
                                hidden_dim=intermediate, max_position_embeddings=64, **extra)
    if family not in ("bert", "roberta"):
        raise ValueError(f"unknown family {family!r}: bert, roberta or distilbert")
    cls = RobertaConfig if family == "roberta" else BertConfig
    return cls(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
               intermediate_size=intermediate, max_position_embeddings=64, **extra)


def tiny_model(family: str = "bert", seed: int = 0, *, perturb: float = 0.05, pooler: bool = True,
               attention: str | None = None, **sizes):
    """A random encoder in eval mode: ``torch.manual_seed(seed)`` (global), the library's initialisation,
    then every parameter (biases and LayerNorms too) plus ``perturb`` times standard normal noise, so that
    emptied blocks are visible in the output (``perturb=0``: the plain initialisation).

    ``sizes`` (``layers``, ``heads``, ``hidden``, ``intermediate``, ``vocab_size`` and any other config
    field) go to :func:`tiny_config`; ``pooler=False`` leaves out BERT's pooler; ``attention`` picks the
    attention implementation (e.g. ``"eager"``)."""
    import torch
    from transformers import AutoModel

    cfg = tiny_config(family, **sizes)
    if attention is not None:
        cfg._attn_implementation = attention
    torch.manual_seed(seed)
    kwargs = {} if pooler or family == "distilbert" else {"add_pooling_layer": False}
    model = AutoModel.from_config(cfg, **kwargs).eval()
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb * torch.randn_like(p))
    return model


def _word_vocab() -> list[str]:
    """The word-level vocabulary of the saved tiny models: special tokens, :data:`WORDS`, the digits 0..29."""
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), *[str(i) for i in range(30)]]


def make_tiny_model_dir(folder: Path, *, family: str = "bert", layers: int = 2, heads: int = 4, hidden: int = 32,
                        intermediate: int = 64, seed: int = 0, perturb: float = 0.0) -> Path:
    """Save a :func:`tiny_model` (by default the smoke model: a plain random 2-layer BERT) with a word-level
    tokenizer covering :data:`WORDS` to ``folder``."""
    from transformers import BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _word_vocab()
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    tiny_model(family, seed, layers=layers, heads=heads, hidden=hidden, intermediate=intermediate,
               vocab_size=len(vocab), perturb=perturb).save_pretrained(folder)
    return folder


def smoke_assets(root: Path) -> tuple[Path, Path]:
    """``(model_dir, beir_dir)`` under ``root``, created once: the smoke model and the tiny collection."""
    root = Path(root)
    model_dir, beir_dir = root / "tiny-bert", root / "tiny-beir"
    if not (model_dir / "config.json").is_file():
        make_tiny_model_dir(model_dir)
    if not (beir_dir / "corpus.jsonl").is_file():
        write_beir(beir_dir)
    return model_dir, beir_dir


# --- pruning-test helpers ---------------------------------------------------------------------------------


def inputs(seed: int = 0, batch: int = 3, length: int = 9) -> dict[str, torch.Tensor]:
    """Seeded random token ids below :data:`VOCAB`; the first sequence ends in 3 padding positions."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length - 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def run(model, batch) -> torch.Tensor:
    """``last_hidden_state`` without gradients."""
    import torch

    with torch.no_grad():
        return model(**batch).last_hidden_state


def random_plan(model, seed: int, *, empty_layers: bool = True):
    """Random subsets of the units the model still holds; with ``empty_layers`` layer 0 loses every head,
    layer 1 every neuron and the last layer both (when the model has them)."""
    from sma.prune.schema import PruningPlan
    from sma.prune.units import unit_ids

    rng = random.Random(seed)
    heads, neurons = {}, {}
    ids = unit_ids(model)
    for layer, units in enumerate(ids):
        h, n = list(units.heads), list(units.neurons)
        heads[layer] = rng.sample(h, rng.randint(0, len(h)))
        neurons[layer] = rng.sample(n, rng.randint(0, len(n)))
    if empty_layers:
        heads[0] = list(ids[0].heads)
        neurons[1] = list(ids[1].neurons)
        heads[len(ids) - 1], neurons[len(ids) - 1] = list(ids[-1].heads), list(ids[-1].neurons)
    return PruningPlan(heads=heads, neurons=neurons)
