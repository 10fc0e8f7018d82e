import gzip
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

import sma.data
from sma.data import (
    EMBEDDED_DIR,
    DataError,
    RetrievalData,
    doc_text,
    embedded_datasets,
    load_beir_folder,
    load_beir_hub,
    load_data,
    resolve_dataset,
    subsample,
)
from sma.tiny import TINY_CORPUS, TINY_QRELS, write_beir

BEIR_FILES = ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/dev.tsv", "qrels/test.tsv")


def test_loads_all_splits(tiny_beir):
    data = load_beir_folder(tiny_beir)
    assert len(data.corpus) == 24 and len(data.queries) == 12
    assert set(data.qrels) == {"train", "dev", "test"}
    corpus, queries, qrels = data.split("dev")
    assert corpus is data.corpus
    assert sorted(queries) == ["q6", "q7", "q8"]
    assert qrels["q6"] == {"d6": 2, "d18": 1}


def test_doc_text_is_title_space_text():
    assert doc_text({"title": "A title", "text": "body"}) == "A title body"
    assert doc_text({"title": "", "text": "body"}) == "body"


def test_malformed_corpus_line_names_file_and_line(tmp_path):
    folder = write_beir(tmp_path / "bad")
    lines = (folder / "corpus.jsonl").read_text().splitlines()
    lines[4] = '{"_id": "d4", "text": broken'
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:5: malformed corpus record"):
        load_beir_folder(folder)


def test_record_without_id_names_line(tmp_path):
    folder = write_beir(tmp_path / "bad")
    with (folder / "queries.jsonl").open("a") as fh:
        fh.write(json.dumps({"text": "no id"}) + "\n")
    with pytest.raises(DataError, match=r"queries\.jsonl:13: query record has no '_id'"):
        load_beir_folder(folder)


def test_malformed_qrels_line(tmp_path):
    folder = write_beir(tmp_path / "bad")
    with (folder / "qrels" / "test.tsv").open("a") as fh:
        fh.write("q9\td1\n")
    with pytest.raises(DataError, match=r"test\.tsv:8: expected 3 tab-separated fields"):
        load_beir_folder(folder)


def test_unknown_ids_are_counted_and_dropped(tmp_path, caplog):
    qrels = {s: {q: dict(d) for q, d in sq.items()} for s, sq in TINY_QRELS.items()}
    qrels["test"]["q9"]["nope"] = 1
    qrels["test"]["q99"] = {"d1": 1}
    folder = write_beir(tmp_path / "x", qrels=qrels)
    with caplog.at_level("WARNING"):
        data = load_beir_folder(folder)
    assert "1 unknown query ids and 1 judgements of unknown documents" in caplog.text
    assert "q99" not in data.qrels["test"] and "nope" not in data.qrels["test"]["q9"]


def test_empty_split_is_an_error(tmp_path):
    folder = write_beir(tmp_path / "x")
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(DataError, match="split 'dev' is empty"):
        load_beir_folder(folder)


def test_resolve_by_name_under_data_dir(tiny_beir, monkeypatch):
    monkeypatch.setenv("SMA_DATA_DIR", str(tiny_beir.parent))
    assert len(resolve_dataset("tiny").corpus) == 24


def test_hub_failure_is_one_clear_error(monkeypatch, tmp_path):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"cannot load BEIR dataset 'nfcorpus' from the HF hub.*SMA_DATA_DIR"):
        load_beir_hub("nfcorpus", cache=tmp_path)


def test_hub_loader_writes_a_beir_cache(monkeypatch, tmp_path):
    import datasets

    def fake_load(name, config=None, split=None):
        if name == "BeIR/tiny" and config == "corpus":
            return [{"_id": d, "title": v["title"], "text": v["text"]} for d, v in TINY_CORPUS.items()]
        if name == "BeIR/tiny" and config == "queries":
            return [{"_id": "q1", "text": "wing lift"}]
        assert name == "BeIR/tiny-qrels"
        return {"test": [{"query-id": "q1", "corpus-id": "d1", "score": 1}]}

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    data = load_beir_hub("tiny", cache=tmp_path)
    assert data.qrels == {"test": {"q1": {"d1": 1}}}
    monkeypatch.setattr(datasets, "load_dataset", None)  # second call must come from the cache
    assert load_beir_hub("tiny", cache=tmp_path).qrels == data.qrels


def test_subsample_is_seeded_and_keeps_judged_docs(tiny_beir):
    data = load_beir_folder(tiny_beir)
    a = subsample(data, max_queries=2, seed=1, distractor_ratio=0.5)
    b = subsample(data, max_queries=2, seed=1, distractor_ratio=0.5)
    assert a == b
    assert all(len(q) == 2 for q in a.qrels.values())
    judged = {d for sq in a.qrels.values() for docs in sq.values() for d in docs}
    assert judged <= set(a.corpus)
    assert len(a.corpus) == len(judged) + round(0.5 * len(judged))
    assert load_data(str(tiny_beir), max_samples=2, seed=1, distractor_ratio=0.5) == a


def _gzip_folder(src: Path, dst: Path) -> Path:
    """``src`` with every BEIR file gzip-compressed (``corpus.jsonl.gz``...)."""
    for rel in BEIR_FILES:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / f"{rel}.gz").write_bytes(gzip.compress((src / rel).read_bytes()))
    return dst


def _ordered(data: RetrievalData) -> bytes:
    """Everything the loader returns, order included (dict equality ignores order)."""
    return pickle.dumps((data.name, list(data.corpus.items()), list(data.queries.items()),
                         [(s, [(q, list(d.items())) for q, d in sq.items()]) for s, sq in data.qrels.items()]))


def _reference_cranfield() -> Path | None:
    """The uncompressed offline copy the embedded one was made from, where this machine has it."""
    env = os.environ.get("SMA_DATA_DIR")
    candidates = [Path(env) / "cranfield"] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data" / "cranfield")
    return next((c for c in candidates if (c / "corpus.jsonl").is_file()), None)


def test_gzip_and_plain_files_load_the_same(tiny_beir, tmp_path):
    plain = load_beir_folder(tiny_beir)
    packed = load_beir_folder(_gzip_folder(tiny_beir, tmp_path / "tiny"))
    assert _ordered(packed) == _ordered(plain)
    mixed = tmp_path / "mixed" / "tiny"
    shutil.copytree(tiny_beir, mixed)
    (mixed / "corpus.jsonl").unlink()
    shutil.copy(tmp_path / "tiny" / "corpus.jsonl.gz", mixed / "corpus.jsonl.gz")
    assert _ordered(load_beir_folder(mixed)) == _ordered(plain)


def test_malformed_line_in_gzip_file_names_file_and_line(tiny_beir, tmp_path):
    folder = _gzip_folder(tiny_beir, tmp_path / "bad")
    lines = (tiny_beir / "corpus.jsonl").read_text().splitlines()
    lines[4] = '{"_id": "d4", "text": broken'
    (folder / "corpus.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(DataError, match=r"corpus\.jsonl\.gz:5: malformed corpus record"):
        load_beir_folder(folder)
    qrels = (tiny_beir / "qrels" / "test.tsv").read_text() + "q9\td1\n"
    (folder / "corpus.jsonl.gz").write_bytes(gzip.compress((tiny_beir / "corpus.jsonl").read_bytes()))
    (folder / "qrels" / "test.tsv.gz").write_bytes(gzip.compress(qrels.encode()))
    with pytest.raises(DataError, match=r"test\.tsv\.gz:8: expected 3 tab-separated fields"):
        load_beir_folder(folder)


def test_corrupt_gzip_file_is_a_data_error(tiny_beir, tmp_path):
    folder = _gzip_folder(tiny_beir, tmp_path / "bad")
    packed = (folder / "queries.jsonl.gz").read_bytes()
    (folder / "queries.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=r"queries\.jsonl\.gz:\d+: cannot read"):
        load_beir_folder(folder)


def test_missing_file_names_both_forms(tiny_beir, tmp_path):
    folder = shutil.copytree(tiny_beir, tmp_path / "x")
    (folder / "queries.jsonl").unlink()
    with pytest.raises(DataError, match=r"queries\.jsonl: file not found \(nor queries\.jsonl\.gz\)"):
        load_beir_folder(folder)


def test_embedded_cranfield_loads_without_data_dir(monkeypatch):
    monkeypatch.delenv("SMA_DATA_DIR", raising=False)
    assert "cranfield" in embedded_datasets()
    assert all(p.suffix == ".gz" for p in (EMBEDDED_DIR / "cranfield").rglob("*") if p.name != "README.md"
               and p.is_file())
    data = resolve_dataset("cranfield")
    assert data.name == "cranfield"
    assert len(data.corpus) == 1398 and len(data.queries) == 225
    assert {s: len(q) for s, q in data.qrels.items()} == {"train": 100, "dev": 25, "test": 100}
    assert _ordered(load_data("cranfield")) == _ordered(data)


def test_embedded_cranfield_equals_the_uncompressed_reference_copy():
    ref = _reference_cranfield()
    if ref is None:
        pytest.skip("no uncompressed cranfield folder on this machine")
    assert _ordered(load_beir_folder(EMBEDDED_DIR / "cranfield")) == _ordered(load_beir_folder(ref))


def test_data_dir_takes_precedence_over_the_embedded_copy(tmp_path, monkeypatch):
    write_beir(tmp_path / "cranfield")
    monkeypatch.setenv("SMA_DATA_DIR", str(tmp_path))
    assert len(resolve_dataset("cranfield").corpus) == 24


def test_a_path_takes_precedence_and_unknown_names_go_to_the_hub(tiny_beir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_beir(tmp_path / "cranfield")
    assert len(resolve_dataset("cranfield").corpus) == 24  # ./cranfield exists: a path
    assert len(resolve_dataset(str(tiny_beir)).corpus) == 24
    asked = []
    monkeypatch.setattr(sma.data, "load_beir_hub", lambda name, **kw: asked.append(name))
    monkeypatch.delenv("SMA_DATA_DIR", raising=False)
    resolve_dataset("nfcorpus")
    assert asked == ["nfcorpus"]


def test_every_embedded_file_is_declared_package_data():
    """What ``sma/datasets`` holds goes into wheels: ``[tool.setuptools.package-data]`` covers every file."""
    tomllib = pytest.importorskip("tomllib")
    repo = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["sma.datasets"]
    files = [p.relative_to(EMBEDDED_DIR) for p in EMBEDDED_DIR.rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert files and all(any(f.match(g) for g in globs) for f in files), files


def test_no_product_file_reaches_outside_the_repository_for_data():
    repo = Path(__file__).resolve().parents[1]
    product = [*repo.joinpath("sma").rglob("*.py"), *repo.joinpath("tune").rglob("*.py"), repo / "Makefile",
               repo / ".ci" / "run"]
    assert not [p for p in product if p.is_file() and "../shared" in p.read_text()]


def test_train_queries_keeps_a_seeded_share_of_the_training_split_only(tiny_beir):
    from sma.config import RunConfig
    from sma.config.sections import DataConfig
    from sma.prepare import configured_data

    full = load_beir_folder(tiny_beir)
    train = sorted(full.qrels["train"])
    assert len(train) > 2
    cfg = RunConfig(data=DataConfig(dataset=str(tiny_beir), train_queries=2), seed=7)
    few = configured_data(cfg)
    import random
    expected = sorted(random.Random(7).sample(train, 2))  # drawn independently of keep_queries
    assert sorted(few.qrels["train"]) == expected
    assert few.qrels["train"] == {q: full.qrels["train"][q] for q in expected}
    assert few.qrels["dev"] == full.qrels["dev"] and few.qrels["test"] == full.qrels["test"]
    assert few.corpus == full.corpus
    others = {q for s in ("dev", "test") for q in full.qrels[s]}
    assert set(few.queries) == set(full.queries) - (set(train) - set(expected))
    assert others <= set(few.queries)
    assert configured_data(cfg) == few  # seeded
    assert configured_data(RunConfig(data=DataConfig(dataset=str(tiny_beir), train_queries=99))).qrels == full.qrels
