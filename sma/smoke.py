"""Tiny offline assets for ``--smoke-test`` modes and tests: a small BEIR collection and a random BERT."""

from __future__ import annotations

import json
from pathlib import Path

import torch

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
    """Write ``(corpus, queries, qrels)`` as a BEIR folder."""
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


def make_tiny_model_dir(folder: Path, *, layers: int = 2, heads: int = 4, hidden: int = 32,
                        intermediate: int = 64, seed: int = 0) -> Path:
    """A randomly initialised BERT with a word-level vocabulary covering :data:`WORDS`."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), *[str(i) for i in range(30)]]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    return folder


def smoke_assets(root: Path) -> tuple[Path, Path]:
    """``(model_dir, beir_dir)`` under ``root``, created once."""
    root = Path(root)
    model_dir, beir_dir = root / "tiny-bert", root / "tiny-beir"
    if not (model_dir / "config.json").is_file():
        make_tiny_model_dir(model_dir)
    if not (beir_dir / "corpus.jsonl").is_file():
        write_beir(beir_dir)
    return model_dir, beir_dir
