"""The one project cache (sma.cache) and its atomic writes (sma.atomic): round trips, atomic publishing,
corruption detection, versioned keys."""

import json
import logging
import struct

import pytest
import torch

from sma import atomic
from sma import cache as cache_mod
from sma.cache import MANIFEST, Cache


def test_file_entries_round_trip_and_get_computes_once(tmp_path):
    c = Cache(tmp_path)
    value = {"docs": torch.randn(3, 4), "ids": ["a", "b", "c"]}
    path = c.save("teacher-eval", "k", value)
    assert path == tmp_path / "teacher-eval" / "k.pt"
    back = c.load("teacher-eval", "k")
    torch.testing.assert_close(back["docs"], value["docs"], rtol=0, atol=0)
    assert back["ids"] == ["a", "b", "c"]
    calls = []
    assert c.get("analysis", "j", lambda: calls.append(1) or {"x": [1.5, 2]}, "json") == {"x": [1.5, 2]}
    assert c.get("analysis", "j", lambda: calls.append(1) or {"x": 0}, "json") == {"x": [1.5, 2]}
    assert calls == [1]
    assert c.load("analysis", "absent", "json") is None
    assert sorted(p.name for p in (tmp_path / "analysis").iterdir()) == ["j.json"]  # no temporaries left


@pytest.mark.parametrize("fmt", ["pt", "json"])
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_file_entry_is_detected_deleted_and_recomputed(tmp_path, caplog, fmt, damage):
    c = Cache(tmp_path)
    value = {"v": torch.arange(100, dtype=torch.float32)} if fmt == "pt" else {"v": list(range(100))}
    path = c.save("teacher-targets", "k", value, fmt)
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    else:  # one stored value changed (50 -> 51): the file still parses, only the checksum can tell
        old, new = (b"50", b"51") if fmt == "json" else (struct.pack("<f", 50.0), struct.pack("<f", 51.0))
        assert blob.count(old) == 1
        path.write_bytes(blob.replace(old, new))
    with caplog.at_level(logging.WARNING, logger="sma.cache"):
        assert c.load("teacher-targets", "k", fmt) is None
    assert "deleting it and recomputing" in caplog.text and not path.exists()
    again = c.get("teacher-targets", "k", lambda: value, fmt)
    assert json.dumps(str(again)) == json.dumps(str(value)) and c.load("teacher-targets", "k", fmt) is not None


def test_a_folder_entry_without_its_marker_or_with_a_changed_file_is_rebuilt(tmp_path, caplog):
    c = Cache(tmp_path)
    builds = []

    def fill(tmp):
        builds.append(tmp)
        (tmp / "model").mkdir()
        (tmp / "model" / "weights.bin").write_bytes(b"w" * 100)
        (tmp / "teacher.json").write_text('{"a": 1}')

    folder = c.build_folder("teacher", "k", fill)
    assert c.folder("teacher", "k") == folder and (folder / MANIFEST).is_file()
    assert [p.name for p in (tmp_path / "teacher").iterdir()] == ["k"]  # the temporary folder was renamed
    (folder / MANIFEST).unlink()  # as if the process died before sealing it
    with caplog.at_level(logging.WARNING, logger="sma.cache"):
        assert c.folder("teacher", "k") is None
    assert "incomplete" in caplog.text and not folder.exists()
    c.build_folder("teacher", "k", fill)
    (folder / "model" / "weights.bin").write_bytes(b"w" * 99)  # truncated
    assert c.folder("teacher", "k") is None and not folder.exists()
    c.build_folder("teacher", "k", fill)
    (folder / "teacher.json").write_text('{"a": 2}')  # same size, other content
    assert c.folder("teacher", "k") is None
    assert len(builds) == 3


class _Midway(RuntimeError):
    """Raised by a writer after it has written part of its output."""


class _Unpicklable:
    def __reduce__(self):
        raise _Midway("cannot pickle")


def _siblings(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_file_write_that_raises_midway_keeps_the_previous_content_and_no_temporary(tmp_path):
    target = tmp_path / "x" / "f.json"
    atomic.write_json(target, {"v": 1})
    assert json.loads(target.read_text()) == {"v": 1}
    with pytest.raises(_Midway), atomic.atomic_file(target) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise _Midway
    # torch.save has written the tensor's bytes when it reaches the object it cannot pickle
    with pytest.raises(_Midway):
        atomic.torch_save({"x": torch.zeros(1000), "y": _Unpicklable()}, target)
    with pytest.raises(TypeError):  # not JSON-able: the text is built before the file is touched
        atomic.write_json(target, {"v": object()})
    assert json.loads(target.read_text()) == {"v": 1} and _siblings(tmp_path / "x") == ["f.json"]
    with pytest.raises(_Midway), atomic.atomic_file(tmp_path / "new.txt") as tmp:
        tmp.write_text("half")
        raise _Midway
    assert _siblings(tmp_path) == ["x"]  # no partial file where nothing was before
    atomic.write_text(target, "replaced")
    assert target.read_text() == "replaced" and _siblings(tmp_path / "x") == ["f.json"]


def test_a_folder_write_that_raises_midway_keeps_the_previous_folder(tmp_path):
    folder = tmp_path / "model"
    with atomic.atomic_dir(folder) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(_Midway), atomic.atomic_dir(folder) as tmp:
        (tmp / "weights").write_text("new")
        raise _Midway
    assert (folder / "weights").read_text() == "old" and _siblings(tmp_path) == ["model"]
    with atomic.atomic_dir(folder) as tmp:  # replace=True: the new folder replaces the old one as a whole
        (tmp / "config").write_text("new")
    assert _siblings(folder) == ["config"] and _siblings(tmp_path) == ["model"]


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path):
    (tmp_path / "plain.json").write_text("{}")
    (tmp_path / "plain").mkdir()
    with atomic.atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w").write_text("x")
    assert atomic.write_json(tmp_path / "r.json", {}).stat().st_mode == (tmp_path / "plain.json").stat().st_mode
    assert (tmp_path / "model").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_a_cache_folder_published_first_is_kept(tmp_path):
    folder = tmp_path / "x" / "d"
    with atomic.atomic_dir(folder, replace=False) as tmp:
        (tmp / "a").write_text("first")
    with atomic.atomic_dir(folder, replace=False) as tmp:  # another process lost the race: ours is dropped
        (tmp / "a").write_text("second")
    assert (folder / "a").read_text() == "first" and _siblings(tmp_path / "x") == ["d"]


def test_a_version_bump_changes_the_key_of_that_kind_only(monkeypatch):
    before = {kind: Cache.key(kind, "same", {"parts": 1}) for kind in cache_mod.VERSIONS}
    assert len(set(before.values())) == len(before)  # kinds never share keys
    monkeypatch.setitem(cache_mod.VERSIONS, "teacher", cache_mod.VERSIONS["teacher"] + 1)
    after = {kind: Cache.key(kind, "same", {"parts": 1}) for kind in cache_mod.VERSIONS}
    assert after["teacher"] != before["teacher"]
    assert {k: v for k, v in after.items() if k != "teacher"} == {k: v for k, v in before.items() if k != "teacher"}
    with pytest.raises(KeyError):
        Cache.key("no-such-kind", 1)


def test_root_comes_from_the_config_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SMA_CACHE_DIR", str(tmp_path / "env"))
    assert Cache().root == tmp_path / "env"
    assert Cache(str(tmp_path / "cfg")).root == tmp_path / "cfg"


def test_hub_downloads_go_to_the_configured_cache_dir(monkeypatch, tmp_path):
    import datasets

    from sma.config import RunConfig, apply_overrides
    from sma.prepare import load_run_data
    from sma.tiny import TINY_CORPUS

    def fake_load(name, config=None, split=None):
        if config == "corpus":
            return [{"_id": d, "title": v["title"], "text": v["text"]} for d, v in TINY_CORPUS.items()]
        if config == "queries":
            return [{"_id": "q1", "text": "wing lift"}]
        return {"test": [{"query-id": "q1", "corpus-id": "d1", "score": 1}]}

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.delenv("SMA_DATA_DIR", raising=False)
    monkeypatch.setenv("SMA_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    cfg = apply_overrides(RunConfig(), {"data.dataset": "tinyhub", "cache_dir": str(tmp_path / "cfg"),
                                        "sparsity": ""})  # a test split alone: the dense model's evaluation
    data = load_run_data(cfg)
    assert data.qrels == {"test": {"q1": {"d1": 1}}}
    entries = list((tmp_path / "cfg" / "beir").iterdir())
    assert len(entries) == 1 and (entries[0] / "corpus.jsonl").is_file() and (entries[0] / MANIFEST).is_file()
    assert not (tmp_path / "env").exists()
    monkeypatch.setattr(datasets, "load_dataset", None)  # the second load must come from the cache
    assert load_run_data(cfg).qrels == data.qrels


def test_the_teacher_and_its_eval_embeddings_are_recomputed_identically_when_damaged(tiny_model_dir, tiny_beir,
                                                                                     tmp_path):
    from sma.config import RunConfig, apply_overrides
    from sma.data import load_data
    from sma.teacher import get_teacher, teacher_eval_embeddings

    cfg = apply_overrides(RunConfig(), {"model.name": str(tiny_model_dir), "cache_dir": str(tmp_path),
                                        "eval.show_progress": False})
    data = load_data(str(tiny_beir))
    first = get_teacher(cfg, data)
    assert not first.cached and get_teacher(cfg, data).cached
    (tmp_path / "teacher" / first.key / MANIFEST).unlink()
    again = get_teacher(cfg, data)
    assert not again.cached and again.metrics == first.metrics
    splits = (cfg.data.dev_split, cfg.data.test_split)
    stored = teacher_eval_embeddings(cfg, data, first, None, splits)  # stored by get_teacher: no model needed
    (entry,) = (tmp_path / "teacher-eval").iterdir()
    entry.write_bytes(entry.read_bytes()[:-10])
    fresh = teacher_eval_embeddings(cfg, data, first, first.load(cfg), splits)
    torch.testing.assert_close(fresh.docs, stored.docs, rtol=0, atol=0)
    assert fresh.query_ids == stored.query_ids
