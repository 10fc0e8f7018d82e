import json

import pytest
from conftest import TINY_CORPUS, TINY_QRELS, write_beir

from sma.data import (
    DataError,
    doc_text,
    load_beir_folder,
    load_beir_hub,
    load_data,
    resolve_dataset,
    subsample,
)


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
