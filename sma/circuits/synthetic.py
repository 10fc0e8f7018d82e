"""A tiny hand-built BERT bi-encoder whose relevance signal runs through one known head, and a matching
synthetic BEIR collection. For tests and smoke runs: everything here is built in memory, offline.

Collection: ``topics`` topic words (``t0``, ``t1``...) and filler words (``f0``...). Each document and
query holds one topic word among fillers; a query is relevant to the documents of its topic.

Model: hidden size 16, 4 heads of size 4, 2 layers. Topic words embed as a small one-hot in dims 0..3
(balanced by its negative in dims 4..7); every word has a large zero-mean random part in dims 8..15. In
layer 0, head ``KEY_HEAD`` attends uniformly and its value path copies dims 0..3 with gain ``gain`` into
dims 0..3 of the residual stream, so the pooled embedding's topic component comes from that head; the
other heads copy random mixtures of the filler dims (noise). Layer 1's attention and both FFNs are small
random weights. Without the key head the embedding is dominated by filler noise and retrieval collapses.

Both models here take their architecture from :func:`sma.tiny.tiny_model` (no pooler, eager attention, no
dropout, one token type) and overwrite every weight from their own seeded generator.
"""

from __future__ import annotations

import random

import torch

from sma.data import RetrievalData
from sma.tiny import tiny_model

KEY_HEAD = (0, 1)
"""``(layer, head)`` that carries the relevance signal in :func:`tiny_biencoder`."""


def _vocab(topics: int, fillers: int) -> dict[str, int]:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"t{i}" for i in range(topics)] + [f"f{i}" for i in range(fillers)]
    return {w: i for i, w in enumerate(words)}


def _bert(vocab: dict[str, int], *, seed: int, layers: int, hidden: int, heads: int, intermediate: int):
    """The architecture both models share; every weight is overwritten by the caller."""
    return tiny_model("bert", seed, layers=layers, heads=heads, hidden=hidden, intermediate=intermediate,
                      vocab_size=len(vocab), perturb=0.0, pooler=False, attention="eager", type_vocab_size=1,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _biencoder(model, vocab: dict[str, int]):
    from transformers import BertTokenizer

    from sma.model import BiEncoder

    return BiEncoder(model.eval(), BertTokenizer(vocab=vocab, do_lower_case=True), pooling="mean",
                     query_max_length=16, doc_max_length=24)


def tiny_biencoder(*, topics: int = 4, fillers: int = 24, gain: float = 20.0, seed: int = 0, layers: int = 2,
                   intermediate: int = 8):
    """The hand-built model (see the module docstring); deterministic for a given ``seed``."""
    if topics > 4:
        raise ValueError("the hand-built model encodes at most 4 topics")
    vocab = _vocab(topics, fillers)
    model = _bert(vocab, seed=seed, layers=layers, hidden=16, heads=4, intermediate=intermediate)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        emb = model.embeddings
        emb.word_embeddings.weight.zero_()
        noise = torch.randn(len(vocab), 8, generator=gen)
        emb.word_embeddings.weight[:, 8:] = noise - noise.mean(1, keepdim=True)  # zero-mean: LN adds no shift
        for i in range(topics):
            emb.word_embeddings.weight[vocab[f"t{i}"], i] = 0.5
            emb.word_embeddings.weight[vocab[f"t{i}"], 4 + i] = -0.5
        emb.position_embeddings.weight.zero_()
        emb.token_type_embeddings.weight.zero_()
        for ln in [emb.LayerNorm] + [m for layer in model.encoder.layer
                                     for m in (layer.attention.output.LayerNorm, layer.output.LayerNorm)]:
            ln.weight.fill_(1.0)
            ln.bias.zero_()
        att = model.encoder.layer[0].attention
        att.self.query.weight.zero_()
        att.self.query.bias.zero_()
        att.self.key.weight.zero_()
        att.self.key.bias.zero_()
        att.self.value.weight.zero_()
        att.self.value.bias.zero_()
        att.output.dense.weight.zero_()
        att.output.dense.bias.zero_()
        _, head = KEY_HEAD
        for d in range(4):
            att.self.value.weight[head * 4 + d, d] = gain
            att.output.dense.weight[d, head * 4 + d] = 1.0
        for h in range(4):
            if h == head:
                continue
            att.self.value.weight[h * 4:(h + 1) * 4, 8:] = 0.2 * torch.randn(4, 8, generator=gen)
            att.output.dense.weight[4:8, h * 4:(h + 1) * 4] = torch.randn(4, 4, generator=gen)
    return _biencoder(model, vocab)


def tiny_random_biencoder(*, seed: int = 0, layers: int = 2, hidden: int = 16, heads: int = 4,
                          intermediate: int = 12):
    """A small random BERT over the same vocabulary (for gradient checks: every unit matters a little):
    weights N(0, 0.3), plus 1 on every vector of the hidden size (LayerNorm gains, among others)."""
    vocab = _vocab(4, 24)
    model = _bert(vocab, seed=seed, layers=layers, hidden=hidden, heads=heads, intermediate=intermediate)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if p.ndim == 1 and p.shape[0] == hidden else 0))
    return _biencoder(model, vocab)


def tiny_collection(*, topics: int = 4, fillers: int = 24, docs_per_topic: int = 6, queries_per_topic: int = 6,
                    words: int = 6, seed: int = 0) -> RetrievalData:
    """Synthetic BEIR collection; queries split round-robin into train/dev/test."""
    rng = random.Random(seed)

    def text(topic: int) -> str:
        tokens = [f"f{rng.randrange(fillers)}" for _ in range(words - 1)]
        tokens.insert(rng.randrange(words), f"t{topic}")
        return " ".join(tokens)

    corpus = {f"d{t}_{i}": {"title": "", "text": text(t)} for t in range(topics) for i in range(docs_per_topic)}
    queries = {f"q{t}_{i}": text(t) for t in range(topics) for i in range(queries_per_topic)}
    qrels: dict[str, dict[str, dict[str, int]]] = {"train": {}, "dev": {}, "test": {}}
    for n, q in enumerate(sorted(queries)):
        t = int(q[1:].split("_")[0])
        split = ("train", "train", "dev", "test")[n % 4]
        qrels[split][q] = {f"d{t}_{i}": 1 + (i % 2) for i in range(docs_per_topic)}
    return RetrievalData(name="tiny", corpus=corpus, queries=queries, qrels=qrels)
