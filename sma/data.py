"""BEIR-layout retrieval data: ``(corpus, queries, qrels)`` dicts, from a folder, the package or the HF hub.

Shapes follow BEIR: ``corpus[doc_id] = {"title": str, "text": str}``, ``queries[qid] = str``,
``qrels[qid][doc_id] = int``. Every file may also be gzip-compressed (``corpus.jsonl.gz``...).
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sma.model_source import looks_like_path

Corpus = dict[str, dict[str, str]]
Queries = dict[str, str]
Qrels = dict[str, dict[str, int]]

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
HUB_OWNER = "BeIR/"
"""The HF hub owner of the BEIR collections :func:`load_beir_hub` downloads."""

EMBEDDED_DIR = Path(__file__).resolve().parent / "datasets"
"""Collections shipped inside the package (``sma/datasets/<name>/``, BEIR layout, gzip-compressed)."""


class DataError(ValueError):
    """A data file is missing, malformed or empty."""


@dataclass(frozen=True)
class RetrievalData:
    """A whole BEIR collection: one corpus, all queries, qrels per split."""

    name: str
    corpus: Corpus
    queries: Queries
    qrels: dict[str, Qrels]

    def split(self, name: str) -> tuple[Corpus, Queries, Qrels]:
        """``(corpus, queries, qrels)`` for one split; queries restricted to the judged ones."""
        if name not in self.qrels:
            raise DataError(f"{self.name}: no qrels for split {name!r} (have: {', '.join(self.qrels)})")
        qrels = self.qrels[name]
        if not qrels:
            raise DataError(f"{self.name}: split {name!r} is empty")
        return self.corpus, {q: self.queries[q] for q in qrels}, qrels


def doc_text(doc: dict[str, str]) -> str:
    """Document text as BEIR encodes it: title + " " + text (title omitted when empty)."""
    title = (doc.get("title") or "").strip()
    text = doc.get("text") or ""
    return f"{title} {text}".strip() if title else text


def _find(folder: Path, name: str) -> Path | None:
    """``folder/name``, else its gzip-compressed ``folder/name.gz``, else ``None``."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _lines(path: Path, *, newline: str | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file, plain or ``.gz``; unreadable data is a :class:`DataError`."""
    lineno = 0
    try:
        with (gzip.open(path, "rt", encoding="utf-8", newline=newline) if path.suffix == ".gz"
              else path.open(encoding="utf-8", newline=newline)) as fh:
            for lineno, line in enumerate(fh, start=1):
                yield lineno, line
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}:{lineno + 1}: not UTF-8 text ({exc.reason})") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}:{lineno + 1}: cannot read ({type(exc).__name__}: {exc})") from None


def _read_jsonl(folder: Path, name: str, kind: str) -> dict[str, dict]:
    path = _find(folder, name)
    if path is None:
        raise DataError(f"{folder / name}: file not found (nor {name}.gz)")
    records: dict[str, dict] = {}
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: malformed {kind} record: {exc.msg}") from None
        if not isinstance(rec, dict) or "_id" not in rec:
            raise DataError(f"{path}:{lineno}: {kind} record has no '_id' field")
        if "text" not in rec or not isinstance(rec["text"], str):
            raise DataError(f"{path}:{lineno}: {kind} record {rec['_id']!r} has no string 'text' field")
        records[str(rec["_id"])] = rec
    if not records:
        raise DataError(f"{path}: no {kind} records")
    return records


def _read_qrels(path: Path) -> Qrels:
    qrels: Qrels = {}
    reader = csv.reader((line for _, line in _lines(path, newline="")), delimiter="\t")
    for lineno, row in enumerate(reader, start=1):
        if not row or not "".join(row).strip():
            continue
        if lineno == 1 and row[0] == "query-id":
            continue
        if len(row) != 3:
            raise DataError(f"{path}:{lineno}: expected 3 tab-separated fields, got {len(row)}")
        qid, did, score = row
        try:
            rel = int(float(score))
        except ValueError:
            raise DataError(f"{path}:{lineno}: relevance {score!r} is not a number") from None
        qrels.setdefault(qid, {})[did] = rel
    return qrels


def _drop_unknown(name: str, split: str, qrels: Qrels, corpus: Corpus, queries: Queries) -> Qrels:
    """Remove judgements that point at unknown ids, counting and reporting them."""
    unknown_q = [q for q in qrels if q not in queries]
    unknown_d = sum(1 for q, docs in qrels.items() for d in docs if d not in corpus)
    if unknown_q or unknown_d:
        log.warning(
            "%s/%s: dropped qrels with %d unknown query ids and %d judgements of unknown documents",
            name, split, len(unknown_q), unknown_d,
        )
    clean = {
        q: {d: r for d, r in docs.items() if d in corpus}
        for q, docs in qrels.items()
        if q in queries
    }
    return {q: docs for q, docs in clean.items() if docs}


def load_beir_folder(folder: str | Path, *, splits: tuple[str, ...] = SPLITS) -> RetrievalData:
    """Load a BEIR folder (plain or ``.gz`` files); splits whose qrels file is absent are skipped, an empty
    one is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory")
    corpus_raw = _read_jsonl(folder, "corpus.jsonl", "corpus")
    queries_raw = _read_jsonl(folder, "queries.jsonl", "query")
    corpus = {k: {"title": str(v.get("title") or ""), "text": v["text"]} for k, v in corpus_raw.items()}
    queries = {k: v["text"] for k, v in queries_raw.items()}
    qrels: dict[str, Qrels] = {}
    for split in splits:
        path = _find(folder / "qrels", f"{split}.tsv")
        if path is None:
            continue
        raw = _read_qrels(path)
        if not raw:
            raise DataError(f"{path}: split {split!r} is empty")
        clean = _drop_unknown(folder.name, split, raw, corpus, queries)
        if not clean:
            raise DataError(f"{path}: split {split!r} has no judgements of known queries and documents")
        qrels[split] = clean
    if not qrels:
        raise DataError(f"{folder}/qrels: no qrels file for any of {', '.join(splits)}")
    return RetrievalData(name=folder.name, corpus=corpus, queries=queries, qrels=qrels)


def data_dir() -> Path | None:
    """``$SMA_DATA_DIR`` if set (a folder of BEIR folders), else ``None``."""
    env = os.environ.get("SMA_DATA_DIR")
    return Path(env) if env else None


def embedded_datasets() -> list[str]:
    """Names of the collections shipped inside the package (see :data:`EMBEDDED_DIR`)."""
    if not EMBEDDED_DIR.is_dir():
        return []
    return sorted(d.name for d in EMBEDDED_DIR.iterdir() if _find(d, "corpus.jsonl") is not None)


def embedded_dir(name: str) -> Path | None:
    """The folder of the embedded collection ``name``, or ``None`` when the package ships none so named."""
    return EMBEDDED_DIR / name if name in embedded_datasets() else None


def load_beir_hub(name: str, *, cache: str | Path | None = None) -> RetrievalData:
    """Download ``BeIR/<name>`` and ``BeIR/<name>-qrels`` through ``datasets``; keep them as a BEIR folder in the
    project cache rooted at ``cache`` (``RunConfig.cache_dir``; default ``$SMA_CACHE_DIR``, see :mod:`sma.cache`)."""
    from sma.cache import Cache

    found = cached_hub_folder(name, cache=cache)
    if found is not None:
        return load_beir_folder(found)
    import datasets  # heavy import; only on this path

    try:
        corpus = datasets.load_dataset(f"{HUB_OWNER}{name}", "corpus", split="corpus")
        queries = datasets.load_dataset(f"{HUB_OWNER}{name}", "queries", split="queries")
        qrels = datasets.load_dataset(f"{HUB_OWNER}{name}-qrels")
    except Exception as exc:  # noqa: BLE001 - the hub raises many types; all mean "not reachable"
        raise DataError(
            f"cannot load BEIR dataset {name!r} from the HF hub ({type(exc).__name__}: {exc}). "
            f"Offline, give a BEIR folder path or put one named {name!r} under $SMA_DATA_DIR."
        ) from None

    def write(tmp: Path) -> None:
        (tmp / "qrels").mkdir(parents=True, exist_ok=True)
        with (tmp / "corpus.jsonl").open("w") as fh:
            for rec in corpus:
                fh.write(json.dumps({"_id": str(rec["_id"]), "title": rec.get("title", ""), "text": rec["text"]})
                         + "\n")
        with (tmp / "queries.jsonl").open("w") as fh:
            for rec in queries:
                fh.write(json.dumps({"_id": str(rec["_id"]), "text": rec["text"]}) + "\n")
        for split_name, rows in qrels.items():
            split = "dev" if split_name == "validation" else split_name
            with (tmp / "qrels" / f"{split}.tsv").open("w") as fh:
                fh.write("query-id\tcorpus-id\tscore\n")
                for r in rows:
                    fh.write(f"{r['query-id']}\t{r['corpus-id']}\t{int(r['score'])}\n")

    store = Cache(cache)
    return load_beir_folder(store.build_folder("beir", store.key("beir", name), write))


def cached_hub_folder(name: str, *, cache: str | Path | None = None) -> Path | None:
    """The BEIR folder that :func:`load_beir_hub` keeps for ``BeIR/<name>`` in the cache, if it is there."""
    from sma.cache import Cache

    store = Cache(cache)
    return store.folder("beir", store.key("beir", name))


def locate_dataset(dataset: str) -> Path | str:
    """Where ``dataset`` lives, without reading it: an existing folder path, else a folder named so under
    ``$SMA_DATA_DIR``, else the collection of that name shipped inside the package (:func:`embedded_datasets`),
    else the name of a ``BeIR/<name>`` collection on the HF hub (returned as a string; ``BeIR/scifact`` and
    ``scifact`` both give ``scifact``). A value shaped like a path that is not a folder is a :class:`DataError`:
    it is never sent to the hub, which knows no such name."""
    path = Path(dataset).expanduser()
    if path.is_dir():
        return path
    root = data_dir()
    if root is not None and (root / dataset).is_dir():
        return root / dataset
    if path.exists():
        raise DataError(f"dataset {dataset!r}: a file, not a BEIR folder")
    hub_name = dataset.removeprefix(HUB_OWNER)
    if looks_like_path(dataset) or "/" in hub_name:
        raise DataError(f"dataset {dataset!r}: no such folder (a BEIR collection on the HF hub is named like "
                        f"'scifact' or 'BeIR/scifact')")
    embedded = embedded_dir(dataset)
    return embedded if embedded is not None else hub_name


def collection_name(dataset: object) -> str:
    """The last part of a dataset argument: ``path/to/cacm/`` -> ``cacm``, ``BeIR/scifact`` -> ``scifact``;
    ``""`` when no dataset was logged."""
    if not isinstance(dataset, str) or not dataset.strip():
        return ""
    return Path(dataset.strip().rstrip("/\\")).name


def resolve_dataset(dataset: str, *, cache_dir: str | Path | None = None) -> RetrievalData:
    """The collection :func:`locate_dataset` finds, loaded (a hub collection downloaded once into the cache
    rooted at ``cache_dir``)."""
    where = locate_dataset(dataset)
    return load_beir_folder(where) if isinstance(where, Path) else load_beir_hub(where, cache=cache_dir)


def subsample(data: RetrievalData, *, max_queries: int, seed: int, distractor_ratio: float = 4.0) -> RetrievalData:
    """Seeded subset: at most ``max_queries`` judged queries per split, every document they judge,
    and ``distractor_ratio`` times as many other documents sampled from the rest of the corpus."""
    rng = random.Random(seed)
    qrels: dict[str, Qrels] = {}
    for split, sq in data.qrels.items():
        qids = sorted(sq)
        keep = sorted(rng.sample(qids, min(max_queries, len(qids))))
        qrels[split] = {q: sq[q] for q in keep}
    judged = sorted({d for sq in qrels.values() for docs in sq.values() for d in docs})
    rest = sorted(set(data.corpus) - set(judged))
    n_extra = min(len(rest), int(round(distractor_ratio * len(judged))))
    kept = set(judged) | set(rng.sample(rest, n_extra))
    corpus = {d: data.corpus[d] for d in data.corpus if d in kept}
    queries = {q: data.queries[q] for sq in qrels.values() for q in sq}
    return RetrievalData(name=data.name, corpus=corpus, queries=queries, qrels=qrels)


def keep_queries(data: RetrievalData, split: str, n: int, *, seed: int) -> RetrievalData:
    """``data`` with a seeded subset of ``n`` judged queries of ``split`` (all when it has fewer); the other
    splits, their queries and the corpus untouched."""
    judged = data.qrels.get(split, {})
    keep = set(random.Random(seed).sample(sorted(judged), min(n, len(judged))))
    drop = set(judged) - keep - {q for s, sq in data.qrels.items() if s != split for q in sq}
    return RetrievalData(name=data.name, corpus=data.corpus,
                         queries={q: t for q, t in data.queries.items() if q not in drop},
                         qrels={**data.qrels, split: {q: judged[q] for q in sorted(keep)}})


def load_data(dataset: str, *, max_samples: int | None = None, seed: int = 42,
              distractor_ratio: float = 4.0, cache_dir: str | Path | None = None,
              train_queries: tuple[str, int] | None = None) -> RetrievalData:
    """The collection, subsampled when ``max_samples`` is set; ``train_queries`` = (split, n) keeps a seeded
    ``n`` of that split's judged queries (:func:`keep_queries`)."""
    data = resolve_dataset(dataset, cache_dir=cache_dir)
    if max_samples is not None:
        data = subsample(data, max_queries=max_samples, seed=seed, distractor_ratio=distractor_ratio)
    if train_queries is not None:
        data = keep_queries(data, *train_queries, seed=seed)
    return data
