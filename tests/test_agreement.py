"""Student-teacher agreement: hand-computed cosines and top-k overlaps; 1.0 for an unpruned, untrained run."""

import math

import pytest
import torch

from sma.evaluate import EvalEmbeddings, agreement, split_agreement, top_k_overlap


def _unit(*rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_top_k_overlap_by_hand():
    docs_t = torch.eye(4)  # teacher: query i scores document i highest
    q_t = torch.tensor([[1.0, 0.5, 0.2, 0.0], [0.0, 0.1, 1.0, 0.9]])
    # teacher top 2: q0 -> {0, 1}, q1 -> {2, 3}
    q_s = torch.tensor([[1.0, 0.0, 0.6, 0.0], [0.0, 0.0, 1.0, 0.9]])
    # student (same documents) top 2: q0 -> {0, 2} (1 of 2 shared), q1 -> {2, 3} (2 of 2)
    assert top_k_overlap(q_s, docs_t, q_t, docs_t, k=2) == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert top_k_overlap(q_s, docs_t, q_t, docs_t, k=10) == 1.0  # k capped at the 4 documents: all shared


def test_agreement_cosines_by_hand():
    teacher_d = _unit([1, 0], [0, 1], [1, 1])
    student_d = _unit([1, 0], [1, 1], [1, 1])  # cosines 1, 1/sqrt(2), 1
    teacher_q = _unit([1, 0])
    student_q = _unit([0, 1])  # cosine 0
    a = agreement(student_q, student_d, teacher_q, teacher_d, k=1)
    assert a.corpus_cosine == pytest.approx((2 + 1 / math.sqrt(2)) / 3)
    assert a.query_cosine == pytest.approx(0.0, abs=1e-7)
    # teacher top 1 of [1,0]: doc 0 (1.0 beats 0.707); student top 1 of [0,1]: doc 1 or 2 (0.707 each) -> 0 shared
    assert a.top10_overlap == 0.0
    same = agreement(teacher_q, teacher_d, teacher_q, teacher_d)
    assert (same.corpus_cosine, same.query_cosine, same.top10_overlap) == pytest.approx((1.0, 1.0, 1.0))


def test_split_agreement_matches_documents_by_id_and_skips_other_queries():
    d = _unit([1, 0], [0, 1])
    q = _unit([1, 0.2])
    a = EvalEmbeddings(doc_ids=("a", "b"), docs=d, query_ids={"dev": ("q1",)}, queries={"dev": q})
    other_queries = EvalEmbeddings(doc_ids=("a", "b"), docs=d, query_ids={"dev": ("q2",)}, queries={"dev": q})
    assert split_agreement(a, a)["dev"].top10_overlap == 1.0
    assert split_agreement(a, other_queries) == {}
    # the same documents in another order are matched by id: rows swapped back, the same agreement
    swapped = EvalEmbeddings(doc_ids=("b", "a"), docs=d[[1, 0]], query_ids={"dev": ("q1",)}, queries={"dev": q})
    assert split_agreement(a, swapped)["dev"] == split_agreement(a, a)["dev"]
    wrong = EvalEmbeddings(doc_ids=("b", "a"), docs=d, query_ids={"dev": ("q1",)}, queries={"dev": q})
    assert split_agreement(a, wrong)["dev"].corpus_cosine == pytest.approx(0.0, abs=1e-7)  # a<->b: orthogonal
    with pytest.raises(ValueError, match="different documents"):
        split_agreement(a, EvalEmbeddings(doc_ids=("a", "c"), docs=d, query_ids={}, queries={}))


def test_cosine_of_long_documents_by_hand(tiny_model_dir):
    from transformers import AutoTokenizer

    from sma.collection_profile import profile_collection
    from sma.config import RunConfig, apply_overrides
    from sma.data import RetrievalData
    from sma.evaluate import subset_cosine

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))  # word-level: [CLS] + one token a word + [SEP]
    corpus = {"a": {"title": "", "text": "wing"}, "b": {"title": "flow", "text": "shock wave"},
              "c": {"title": "", "text": "heat transfer in a shell plate"}}
    data = RetrievalData(name="x", corpus=corpus, queries={"q1": "wing flow", "q2": "shell", "q3": "heat"},
                         qrels={"train": {"q1": {"a": 1}}, "test": {"q2": {"c": 1}, "q3": {"c": 1}}})
    cfg = apply_overrides(RunConfig(), {"distill.max_length": 5, "model.doc_max_length": 8,
                                        "model.query_max_length": 3})
    profile = profile_collection(tokenizer, data, cfg)
    assert profile.longer_than(5) == {"c"}  # 3, 5 and 8 tokens
    assert profile.longer_than(4) == {"b", "c"}
    assert profile.longer_than(2) == {"a", "b", "c"}
    assert profile.metrics() == {
        "documents": 3.0, "train_queries": 1.0, "doc_tokens_median": 5.0,
        "doc_tokens_p90": pytest.approx(5 + 0.8 * (8 - 5)),  # inclusive: 1.8 of the way from the first to the last
        "docs_over_distill_length": pytest.approx(1 / 3), "docs_over_eval_length": 0.0,
        "queries_over_query_length": pytest.approx(1 / 3),  # "wing flow": 4 tokens
        "pseudo_queries_per_document": 1.0,  # distill.pseudo_queries unset and 1 judged train query (< 50)
        "distill_length": 5.0}  # set, so not derived
    none = apply_overrides(cfg, {"distill.pseudo_queries": 0})
    assert profile_collection(tokenizer, data, none).metrics()["pseudo_queries_per_document"] == 0.0
    warnings = profile.warnings(cfg)
    assert len(warnings) == 3 and "33% of judged queries" in warnings[0]  # 1 of 3 documents past 5 is no majority
    assert "probe has 1 judged train queries" in warnings[1]
    assert warnings[2].startswith("only 2 judged test queries: each is 1/2 of the mean nDCG@10")
    dev_cfg = apply_overrides(cfg, {"data.dev_split": "val"})
    with_dev = RetrievalData(name="x", corpus=corpus, queries=data.queries,
                             qrels={**data.qrels, "val": {"q3": {"c": 1}}, "dev": {"q1": {"b": 1}, "q2": {"b": 1}}})
    dev_warnings = profile_collection(tokenizer, with_dev, dev_cfg).warnings(dev_cfg)
    assert dev_warnings[-1].startswith("only 1 judged val queries: a setting chosen on dev retention")
    assert len(dev_warnings) == 4  # the split named by data.dev_split, not the one called dev
    short = apply_overrides(cfg, {"distill.max_length": 2})
    assert profile_collection(tokenizer, data, short).warnings(short)[0].startswith(
        "100% of documents are longer than distill.max_length=2 tokens (median 5, 90th percentile 7)")
    student = EvalEmbeddings(doc_ids=("a", "b", "c"), docs=_unit([1, 0], [1, 1], [0, 1]), query_ids={}, queries={})
    teacher = EvalEmbeddings(doc_ids=("c", "b", "a"), docs=_unit([1, 1], [1, 1], [1, 0]), query_ids={}, queries={})
    # matched by id: a 1.0, b 1.0, c cos([0,1], [1,1]) = 1/sqrt(2)
    assert subset_cosine(student, teacher, {"b", "c"}) == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    assert subset_cosine(student, teacher, {"a"}) == pytest.approx(1.0)
    assert subset_cosine(student, teacher, set()) is None


def test_pseudo_queries_join_the_distillation_texts_when_training_queries_are_few():
    from sma.collection_profile import FEW_TRAIN_QUERIES, derived_pseudo_queries

    assert FEW_TRAIN_QUERIES == 50  # cacm has 20 judged training queries, cranfield 100
    assert derived_pseudo_queries(None, 0) == derived_pseudo_queries(None, 49) == 1
    assert derived_pseudo_queries(None, 50) == derived_pseudo_queries(None, 100) == 0
    assert derived_pseudo_queries(0, 20) == 0 and derived_pseudo_queries(2, 100) == 2  # a set value is kept


def test_the_distillation_length_follows_the_documents_when_unset():
    from sma.collection_profile import DISTILL_LENGTH, derived_distill_length

    assert DISTILL_LENGTH == 128  # cacm: 21 % of documents past it; cranfield 78 %
    assert derived_distill_length(None, [100, 200, 300], 256) == 256  # 2 of 3 past 128: the evaluation length
    assert derived_distill_length(None, [129, 129, 129, 50], 512) == 512  # 3 of 4
    assert derived_distill_length(None, [100, 200], 256) == 128  # exactly half is no majority
    assert derived_distill_length(None, [20, 30, 300], 256) == 128
    assert derived_distill_length(None, [20, 30, 300], 64) == 64  # never past what evaluation embeds
    assert derived_distill_length(None, [200, 300], 64) == 64
    assert derived_distill_length(96, [200, 300], 256) == 96 and derived_distill_length(256, [20], 256) == 256
