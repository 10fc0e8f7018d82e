import math

import pytest
import torch

from sma.evaluate import retrieve, score_run

QRELS = {"q1": {"d1": 2, "d2": 1}, "q2": {"d3": 1}, "q3": {"d9": 1}}
RUN = {
    "q1": {"d2": 0.9, "d1": 0.5, "d4": 0.1},  # relevant at ranks 1 (gain 1) and 2 (gain 2)
    "q2": {"d1": 0.3, "d3": 0.2},  # relevant at rank 2
    "q3": {"d1": 0.3},  # nothing relevant retrieved
}


def test_metrics_match_hand_computation():
    res = score_run(QRELS, RUN)
    dcg_q1 = 1 / math.log2(2) + 2 / math.log2(3)
    idcg_q1 = 2 / math.log2(2) + 1 / math.log2(3)
    ndcg = {"q1": dcg_q1 / idcg_q1, "q2": (1 / math.log2(3)) / 1.0, "q3": 0.0}
    for q, v in ndcg.items():
        assert res.per_query[q]["ndcg_at_10"] == pytest.approx(v, abs=1e-12)
    assert res.mean["ndcg_at_10"] == pytest.approx(sum(ndcg.values()) / 3, abs=1e-12)
    assert res.mean["mrr_at_10"] == pytest.approx((1 + 0.5 + 0) / 3, abs=1e-12)
    assert res.mean["recall_at_100"] == pytest.approx((1 + 1 + 0) / 3, abs=1e-12)
    # AP: q1 = (1/1 + 2/2)/2 = 1; q2 = (1/2)/1; q3 = 0
    assert res.mean["map"] == pytest.approx((1 + 0.5 + 0) / 3, abs=1e-12)
    assert res.num_queries == 3


def test_query_missing_from_run_scores_zero():
    res = score_run(QRELS, {"q1": RUN["q1"]})
    assert res.per_query["q2"]["ndcg_at_10"] == 0.0
    assert res.mean["mrr_at_10"] == pytest.approx(1 / 3, abs=1e-12)


def test_retrieve_is_exact_top_k():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])
    run = retrieve(q, d, ["a", "b"], ["x", "y", "z"], top_k=2)
    assert list(run["a"]) == ["x", "z"] and run["a"]["x"] == pytest.approx(0.9)
    assert list(run["b"]) == ["y", "z"]
