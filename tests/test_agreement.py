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

    from sma.evaluate import longer_than, subset_cosine

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))  # word-level: [CLS] + one token a word + [SEP]
    corpus = {"a": {"title": "", "text": "wing"}, "b": {"title": "flow", "text": "shock wave"},
              "c": {"title": "", "text": "heat transfer in a shell plate"}}
    assert longer_than(tokenizer, corpus, 5) == {"c"}  # 3, 5 and 8 tokens
    assert longer_than(tokenizer, corpus, 4) == {"b", "c"}
    assert longer_than(tokenizer, corpus, 2) == {"a", "b", "c"}
    student = EvalEmbeddings(doc_ids=("a", "b", "c"), docs=_unit([1, 0], [1, 1], [0, 1]), query_ids={}, queries={})
    teacher = EvalEmbeddings(doc_ids=("c", "b", "a"), docs=_unit([1, 1], [1, 1], [1, 0]), query_ids={}, queries={})
    # matched by id: a 1.0, b 1.0, c cos([0,1], [1,1]) = 1/sqrt(2)
    assert subset_cosine(student, teacher, {"b", "c"}) == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    assert subset_cosine(student, teacher, {"a"}) == pytest.approx(1.0)
    assert subset_cosine(student, teacher, set()) is None
