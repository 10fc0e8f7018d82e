"""The registered pyfunc gives the embeddings of ``sma.load_pruned`` + ``BiEncoder``, in a process where SMA
cannot be imported; one model version per new best trial."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sma.model import BiEncoder
from sma.prune import apply_plan, save_pruned, unit_ids
from sma.registry import TRIAL_RUN_TAG, register_best
from sma.tiny import TINY_CORPUS, TINY_QUERIES, WORDS, make_tiny_model_dir, random_plan

ENCODING = {"pooling": "mean", "normalize": True, "query_max_length": 8, "doc_max_length": 16}
# 1 to 12 words: batches with padding, and queries (8 tokens) and documents (16) cut at different lengths
TEXTS = [" ".join(WORDS[k:2 * k + 1]) for k in range(12)]
QUERIES = TEXTS + list(TINY_QUERIES.values())
DOCS = TEXTS + [f"{d['title']} {d['text']}" for d in TINY_CORPUS.values()]
# Load the registered model with ``import sma`` failing, and embed queries and documents.
WITHOUT_SMA = """
import sys
sys.modules["sma"] = None  # any import of sma or sma.* raises ImportError
import json, mlflow, numpy as np
uri, name, texts, out = sys.argv[1:5]
mlflow.set_tracking_uri(uri)
model = mlflow.pyfunc.load_model(f"models:/{name}/latest")
texts = json.loads(texts)
np.save(out + "-q.npy", model.predict(texts["queries"], params={"kind": "query"}))
np.save(out + "-d.npy", model.predict(texts["docs"]))
assert not [m for m in sys.modules if m.startswith("sma.")], "sma was imported"
"""


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory) -> Path:
    """A 4-layer tiny BERT pruned non-uniformly: layer 0 keeps no head, layer 1 no FFN neuron, the last
    layer neither, some layer part of its heads."""
    root = tmp_path_factory.mktemp("registry")
    model = BiEncoder.from_pretrained(str(make_tiny_model_dir(root / "dense", layers=4, perturb=0.05)),
                                      **ENCODING)
    apply_plan(model, random_plan(model.encoder, seed=3))
    kept = [(len(u.heads), len(u.neurons)) for u in unit_ids(model.encoder)]
    assert kept[0][0] == 0 and kept[1][1] == 0 and kept[3] == (0, 0) and any(0 < h < 4 for h, _ in kept), kept
    return save_pruned(model, root / "pruned")


def test_registered_pyfunc_embeds_like_load_pruned_without_sma(pruned_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("reg", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp, run_name="reg-s0.50").info.run_id
    name = "reg-s0.50"
    first = register_best(uri, name=name, run_id=run_id, model_dir=pruned_dir, encoding=ENCODING,
                          tags={TRIAL_RUN_TAG: "trial-a", "study": name})
    assert int(first.version) == 1 and first.tags["study"] == name
    # the same best trial again (a resumed search that found nothing better): no new version
    assert register_best(uri, name=name, run_id=run_id, model_dir=pruned_dir, encoding=ENCODING,
                         tags={TRIAL_RUN_TAG: "trial-a"}).version == first.version
    second = register_best(uri, name=name, run_id=run_id, model_dir=pruned_dir, encoding=ENCODING,
                           tags={TRIAL_RUN_TAG: "trial-b"})
    assert int(second.version) == 2
    assert [o.model_id for o in client.get_run(run_id).outputs.model_outputs]  # the run's Models column

    out = tmp_path / "emb"
    done = subprocess.run([sys.executable, "-c", WITHOUT_SMA, uri, name, json.dumps({"queries": QUERIES,
                                                                                     "docs": DOCS}), str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = BiEncoder.from_pretrained(str(pruned_dir), **ENCODING)  # sma.load_pruned inside
    expected_q = reference.encode(QUERIES, kind="query").numpy()
    expected_d = reference.encode(DOCS, kind="document").numpy()
    got_q, got_d = np.load(f"{out}-q.npy"), np.load(f"{out}-d.npy")
    assert got_q.shape == expected_q.shape and got_d.shape == expected_d.shape
    np.testing.assert_allclose(got_q, expected_q, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_d, expected_d, atol=1e-5, rtol=0)
    assert expected_d.std(axis=0).max() > 1e-3  # texts get different embeddings
