"""The benchmark: result fields add up; ``sma bench --smoke-test`` prints a table and writes JSON."""

from __future__ import annotations

import json

import pytest
import torch

from sma.bench import benchmark, benchmark_side_by_side
from sma.bench_cli import run_cli
from sma.cli import build_config, make_parser
from sma.prune import PruningPlan, apply_plan
from sma.tiny import FFN, HEADS, HIDDEN, tiny_model

HEAD_PARAMS = 4 * HIDDEN * (HIDDEN // HEADS) + 3 * (HIDDEN // HEADS)
NEURON_PARAMS = 2 * HIDDEN + 1


def test_benchmark_fields_add_up():
    dense, pruned = tiny_model(), tiny_model()
    apply_plan(pruned, PruningPlan(heads={0: (0, 1), 2: tuple(range(HEADS))}, neurons={1: tuple(range(FFN // 2))}))
    res = benchmark(dense, pruned, seq_len=16, batch_size=2, repeats=3, warmup=1, threads=1, memory_repeats=1)
    removed = 6 * HEAD_PARAMS + (FFN // 2) * NEURON_PARAMS
    assert res.dense.encoder_params - res.pruned.encoder_params == removed
    assert res.dense.params - res.pruned.params == removed
    assert res.pruned.encoder_weight_bytes == 4 * res.pruned.encoder_params  # float32
    assert res.encoder_weight_ratio == pytest.approx(res.pruned.encoder_params / res.dense.encoder_params)
    assert res.pruned.encoder_sparsity == pytest.approx(removed / res.dense.encoder_params)
    assert len(res.dense.latencies_s) == len(res.pruned.latencies_s) == 3
    assert res.speedup == pytest.approx(res.dense.latency_s / res.pruned.latency_s)
    d, p = res.dense.latencies_s, res.pruned.latencies_s
    assert res.speedup_min == pytest.approx(min(d) / min(p))
    assert res.speedup_paired == pytest.approx(sorted(a / b for a, b in zip(d, p, strict=True))[1])  # median of 3
    assert res.pruned.docs_per_s == pytest.approx(2 / res.pruned.latency_s)
    assert res.peak_memory_kind == "rss_delta"
    assert json.loads(json.dumps(res.to_dict()))["pruned"]["encoder_params"] == res.pruned.encoder_params
    assert not dense.training and sum(p.numel() for p in dense.parameters()) == res.dense.params


def test_side_by_side_times_every_pruned_model_in_one_interleaved_loop():
    """Two pruned models against one dense run: every model runs warm-up + memory + timed forwards, the timed
    ones in the order dense, first, second, then reversed, and both results share the dense measurements."""
    dense, half, most = tiny_model(), tiny_model(), tiny_model()
    apply_plan(half, PruningPlan(neurons={layer: tuple(range(FFN // 2)) for layer in range(3)}))
    apply_plan(most, PruningPlan(neurons={layer: tuple(range(3 * FFN // 4)) for layer in range(3)}))
    calls: list[str] = []
    for name, model in (("dense", dense), ("half", half), ("most", most)):
        model.register_forward_hook(lambda *_, name=name: calls.append(name))
    results = benchmark_side_by_side(dense, [half, most], seq_len=16, batch_size=2, repeats=4, warmup=1, threads=1,
                                     memory_repeats=2)
    assert [calls.count(name) for name in ("dense", "half", "most")] == [1 + 2 + 4] * 3
    assert calls[-12:] == ["dense", "half", "most", "most", "half", "dense"] * 2
    assert len(results) == 2 and results[0].dense is results[1].dense
    ffn_params = 3 * FFN * NEURON_PARAMS
    assert results[0].pruned.encoder_params == results[0].dense.encoder_params - ffn_params // 2
    assert results[1].pruned.encoder_params == results[1].dense.encoder_params - 3 * ffn_params // 4
    assert results[1].speedup == pytest.approx(results[1].dense.latency_s / results[1].pruned.latency_s)
    with pytest.raises(ValueError, match="2 entries for 1 pruned"):
        benchmark_side_by_side(dense, [half], int8_keep_float=[(), ()])


def test_sma_bench_times_the_plans_of_several_neuron_multiples_side_by_side(tmp_path):
    """``--neuron-multiples 1 8``: per sparsity one row per multiple from one loop (same dense run); the
    multiple-1 plan meets the target exactly, the multiple-8 plan keeps the multiple of 8 nearest to each of
    its layers' counts (smoke model, 128 neurons per layer: 63 or 62 at 50 % -> 64, 43 or 42 at 70 % -> 40)."""
    out, page = tmp_path / "bench.json", tmp_path / "speed.md"
    argv = ["bench", "--smoke-test", "--sparsity", "0.5", "0.7", "--neuron-multiples", "1", "8", "--output", str(out),
            "--page", str(page)]
    args = make_parser().parse_args(argv)
    assert run_cli(args, build_config(args)) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["target"], r["neuron_multiple"]) for r in rows] == [(0.5, 1), (0.5, 8), (0.7, 1), (0.7, 8)]
    assert rows[0]["dense"] == rows[1]["dense"] and rows[2]["dense"] == rows[3]["dense"]
    assert rows[0]["dense"] != rows[2]["dense"]
    assert {layer["neurons"] for layer in rows[0]["structure"]} == {63, 62}
    assert {layer["neurons"] for layer in rows[1]["structure"]} == {64}
    assert {layer["neurons"] for layer in rows[2]["structure"]} == {43, 42}
    assert {layer["neurons"] for layer in rows[3]["structure"]} == {40}
    for r in (rows[0], rows[2]):
        assert abs(r["sparsity_report"]["sparsity"] - r["target"]) <= 0.005
    text = page.read_text()
    assert "| Sparsity | Neuron multiple | Actual | FFN neurons |" in text
    row_70 = next(line for line in text.splitlines() if line.startswith("| 70% | 8 |"))
    assert "| 40 | PyTorch float32 |" in row_70
    from sma.config import ConfigError

    with pytest.raises(ConfigError, match="bench.neuron_multiples: lists a value twice"):
        build_config(make_parser().parse_args(["bench", "--smoke-test", "--neuron-multiples", "1", "1"]))


def test_smoke_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = make_parser().parse_args(["bench", "--smoke-test", "--sparsity", "0.5", "0.7", "--output", str(out)])
    assert run_cli(args, build_config(args)) == 0
    printed = capsys.readouterr().out
    assert "speedup" in printed and "0.50" in printed
    data = json.loads(out.read_text())
    assert [r["target"] for r in data["results"]] == [0.5, 0.7]
    for r in data["results"]:
        assert abs(r["sparsity_report"]["sparsity"] - r["target"]) <= 0.005
        assert r["dtype"] == "float32"
        assert r["encoder_weight_ratio"] <= 1 - r["target"] + 0.01
        assert len({layer["heads"] for layer in r["structure"]}) == 1, "per_layer/proportional is uniform"


def test_int8_rows_time_the_quantized_pruned_model_against_dense_float32(tmp_path):
    from torch import nn

    dense, pruned = tiny_model(), tiny_model()
    apply_plan(pruned, PruningPlan(heads={0: (0, 1)}, neurons={1: tuple(range(FFN // 2))}))
    fp32 = benchmark(dense, pruned, seq_len=16, batch_size=2, repeats=3, warmup=1, threads=1, memory_repeats=1)
    res = benchmark(dense, pruned, seq_len=16, batch_size=2, repeats=3, warmup=1, threads=1, memory_repeats=1,
                    int8=True)
    assert res.dtype == "int8" and res.dense.encoder_weight_bytes == fp32.dense.encoder_weight_bytes
    assert res.pruned.encoder_params == fp32.pruned.encoder_params  # counts of the float model
    # each linear layer: int8 weights (1 byte instead of 4), float32 bias, a float32 scale and an int64 zero point
    linears = [m for m in pruned.encoder.layer.modules() if isinstance(m, nn.Linear)]
    expected = (fp32.pruned.encoder_weight_bytes - 3 * sum(m.weight.numel() for m in linears) + 12 * len(linears))
    assert res.pruned.encoder_weight_bytes == expected
    assert isinstance(next(pruned.parameters()), nn.Parameter) and type(linears[0]) is nn.Linear  # not changed
    with pytest.raises(ValueError, match="int8 is timed on the CPU"):
        benchmark(dense, pruned, dtype=__import__("torch").bfloat16, int8=True, repeats=1, warmup=0)


def test_sma_bench_int8_dtype_and_where_it_can_run(tmp_path, monkeypatch):
    out, page = tmp_path / "bench.json", tmp_path / "pages" / "speed.md"
    argv = ["bench", "--smoke-test", "--sparsity", "0.5", "--dtypes", "float32", "int8", "--output", str(out),
            "--page", str(page)]
    monkeypatch.setattr("sys.argv", ["sma", *argv])
    from sma import quantize

    engines, real = [], quantize.quantize_int8  # the engine each timed int8 copy was packed by

    def spy(*a, **kw):
        engines.append(kw.get("engine"))
        return real(*a, **kw)

    monkeypatch.setattr(quantize, "quantize_int8", spy)
    args = make_parser().parse_args(argv)
    assert run_cli(args, build_config(args)) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["dtype"] for r in rows] == ["float32", "int8"]
    assert rows[1]["encoder_weight_ratio"] < rows[0]["encoder_weight_ratio"] / 3
    from sma.quantize import activation_range

    bits = {"full": 8, "reduced": 7}[activation_range("auto")]  # this CPU's range, recorded with the int8 row
    assert "int8_activations" not in rows[0] and rows[1]["int8_activations"] == activation_range("auto")
    from sma.quantize import int8_engine

    assert "int8_engine" not in rows[0] and rows[1]["int8_engine"] == int8_engine("auto") and engines == [int8_engine()]
    text = page.read_text()  # the results page: the same rows, and the command that measured them
    label = f"PyTorch, int8 linear layers ({bits}-bit inputs, {int8_engine()} engine)"
    for r, runtime in zip(rows, ("PyTorch float32", label), strict=True):
        assert f"| 50% | 50.00% | 63, 62 | PyTorch float32 | {runtime} | " in text and f" | {r['speedup']:.2f}x | {r['speedup_paired']:.2f}x | " in text
    # the command, with this machine's output files by their names
    assert "sma bench --smoke-test --sparsity 0.5 --dtypes float32 int8 --output bench.json --page speed.md" in text
    from sma.config import ConfigError

    for argv in (["--dtypes", "int8", "--device", "cuda"], ["--set", "bench.int8=true", "--set", "bench.device=auto"]):
        with pytest.raises(ConfigError, match="int8 is timed on the CPU"):
            build_config(make_parser().parse_args(["bench", "--smoke-test", *argv]))


def test_cpu_bfloat16_rows_time_a_bfloat16_copy_of_the_pruned_model_against_dense_float32():
    dense, pruned = tiny_model(), tiny_model()
    apply_plan(pruned, PruningPlan(heads={0: (0, 1)}, neurons={1: tuple(range(FFN // 2))}))
    seen = {"dense": [], "pruned": []}  # the dtype each forward's token states come out in
    for name, model in (("dense", dense), ("pruned", pruned)):  # hooks travel with the copies benchmark makes
        model.embeddings.register_forward_hook(lambda m, i, o, name=name: seen[name].append(o.dtype))
    fp32 = benchmark(dense, pruned, seq_len=16, batch_size=2, repeats=3, warmup=1, threads=1, memory_repeats=1)
    seen = {"dense": [], "pruned": []}
    res = benchmark(dense, pruned, seq_len=16, batch_size=2, repeats=3, warmup=1, threads=1, memory_repeats=1,
                    bfloat16=True)
    assert res.dtype == "cpu-bfloat16"
    assert seen == {"dense": [torch.float32] * 5, "pruned": [torch.bfloat16] * 5}  # warm-up, memory, 3 timed
    assert res.dense.encoder_weight_bytes == fp32.dense.encoder_weight_bytes
    assert res.pruned.encoder_weight_bytes * 2 == fp32.pruned.encoder_weight_bytes  # 2 bytes a weight instead of 4
    assert res.pruned.encoder_params == fp32.pruned.encoder_params
    assert next(pruned.parameters()).dtype == torch.float32  # the caller's model is not changed
    with pytest.raises(ValueError, match="cpu-bfloat16 is timed on the CPU against float32"):
        benchmark(dense, pruned, dtype=torch.bfloat16, bfloat16=True, repeats=1, warmup=0)
    with pytest.raises(ValueError, match="bfloat16 is a runtime of its own"):
        benchmark(dense, pruned, bfloat16=True, int8=True, repeats=1, warmup=0)


def test_sma_bench_cpu_bfloat16_dtype(tmp_path, monkeypatch):
    out, page = tmp_path / "bench.json", tmp_path / "speed.md"
    argv = ["bench", "--smoke-test", "--sparsity", "0.5", "--dtypes", "float32", "bfloat16", "cpu-bfloat16", "--output", str(out),
            "--page", str(page)]
    monkeypatch.setattr("sys.argv", ["sma", *argv])
    args = make_parser().parse_args(argv)
    assert run_cli(args, build_config(args)) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["dtype"] for r in rows] == ["float32", "bfloat16", "cpu-bfloat16"]
    assert rows[2]["pruned"]["encoder_weight_bytes"] * 2 == rows[0]["pruned"]["encoder_weight_bytes"]
    assert rows[2]["dense"]["encoder_weight_bytes"] == rows[0]["dense"]["encoder_weight_bytes"]
    assert rows[1]["dense"]["encoder_weight_bytes"] * 2 == rows[0]["dense"]["encoder_weight_bytes"]
    text = page.read_text()  # a bfloat16 pruned model against a float32 dense one
    assert "| 50% | 50.00% | 63, 62 | PyTorch float32 | PyTorch bfloat16 | " in text
    assert "| 50% | 50.00% | 63, 62 | PyTorch float32 | PyTorch float32 | " in text
    assert "| 50% | 50.00% | 63, 62 | PyTorch bfloat16 | PyTorch bfloat16 | " in text  # both in bfloat16
    from sma.config import ConfigError

    with pytest.raises(ConfigError, match="cpu-bfloat16 is timed on the CPU"):
        build_config(make_parser().parse_args(["bench", "--smoke-test", "--dtypes", "cpu-bfloat16", "--device", "cuda"]))


@pytest.mark.parametrize("int8", [False, True])
def test_onnx_rows_time_the_pruned_model_in_onnx_runtime(monkeypatch, int8):
    pytest.importorskip("onnxruntime")
    from sma import export

    dense, pruned = tiny_model(), tiny_model()
    apply_plan(pruned, PruningPlan(heads={0: (0, 1)}, neurons={1: tuple(range(FFN // 2))}))
    runs, quantized = [], []
    real = export.onnx_session

    def counting(model, *, threads, int8, keep_float=()):
        session = real(model, threads=threads, int8=int8, keep_float=keep_float)
        quantized.append(int8)

        class Counted:
            def run(self, *args):
                runs.append(1)
                return session.run(*args)

        return Counted()

    monkeypatch.setattr(export, "onnx_session", counting)
    res = benchmark(dense, pruned, seq_len=16, batch_size=2, repeats=3, warmup=1, threads=1, memory_repeats=1,
                    onnx=True, int8=int8)
    assert res.dtype == ("onnx-int8" if int8 else "onnx") and quantized == [int8]
    assert len(runs) == 1 + 1 + 3  # warm-up, memory, timed repeats: all in ONNX Runtime
    assert res.pruned.encoder_weight_bytes == 4 * res.pruned.encoder_params  # float32 weights
    assert len(res.pruned.latencies_s) == 3


def test_a_given_onnx_session_is_timed_without_exporting_again(monkeypatch):
    pytest.importorskip("onnxruntime")
    from sma import export

    dense, pruned = tiny_model(), tiny_model()
    apply_plan(pruned, PruningPlan(heads={0: (0, 1)}, neurons={1: tuple(range(FFN // 2))}))
    session, runs = export.onnx_session(pruned, threads=1, int8=True), []

    class Counted:
        def run(self, *args):
            runs.append(1)
            return session.run(*args)

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(export, "onnx_session", no_export)
    res = benchmark(dense, pruned, seq_len=16, batch_size=2, repeats=3, warmup=1, threads=1, memory_repeats=1,
                    onnx=True, int8=True, onnx_sessions=[Counted()])
    assert res.dtype == "onnx-int8" and len(runs) == 1 + 1 + 3  # warm-up, memory, timed repeats
    for kwargs in ({"onnx": False}, {"onnx": True, "onnx_sessions": [Counted(), Counted()]}):
        with pytest.raises(ValueError, match="onnx_sessions: one ONNX Runtime session per pruned model"):
            benchmark(dense, pruned, seq_len=16, batch_size=2, repeats=1, warmup=0, threads=1, memory_repeats=1,
                      **{"onnx_sessions": [Counted()], **kwargs})


def test_training_step_speed_times_each_precision_on_its_own_copy(monkeypatch):
    from sma import train_bench
    from sma.train_bench import train_step_speed

    frozen: list[torch.nn.Module] = []
    real = train_bench.freeze_word_embeddings

    def freeze(m):  # the real freezing, recorded
        frozen.append(m)
        real(m)

    monkeypatch.setattr(train_bench, "freeze_word_embeddings", freeze)
    model = tiny_model()
    apply_plan(model, PruningPlan(heads={0: (0, 1)}, neurons={1: tuple(range(FFN // 2))}))
    before = {n: p.clone() for n, p in model.named_parameters()}
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]  # copied with the model
    try:
        speed = train_step_speed(model, batch_size=2, seq_len=8, repeats=3, warmup=1, threads=1)
    finally:
        for h in hooks:
            h.remove()
    # warm-up then 3 timed steps alternate the four variants, the order flipping: both dtypes ran as often
    assert set(seen) == {torch.float32, torch.bfloat16}
    assert seen.count(torch.bfloat16) == seen.count(torch.float32)
    assert list(speed.step_s) == ["float32", "bfloat16", "float32 frozen embeddings", "bfloat16 frozen embeddings"]
    assert all(len(t) == 3 for t in speed.step_s.values())
    m32, m16 = (sorted(speed.step_s[p])[1] for p in ("float32", "float32 frozen embeddings"))
    assert speed.speedup("float32 frozen embeddings") == pytest.approx(m32 / m16) and speed.speedup("float32") == 1.0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the caller's model is untouched
    # the two frozen variants train copies whose word embedding table takes no gradient
    assert len(frozen) == 2 and not any(m.encoder.get_input_embeddings().weight.requires_grad for m in frozen)
    assert model.get_input_embeddings().weight.requires_grad


def test_sma_bench_training_writes_the_step_times(tmp_path, capsys):
    out, page = tmp_path / "bench.json", tmp_path / "speed.md"
    args = make_parser().parse_args(["bench", "--smoke-test", "--sparsity", "0.5", "--training", "--output", str(out),
                                     "--page", str(page)])
    assert run_cli(args, build_config(args)) == 0
    assert "distillation step: float32" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["training"]
    assert row["target"] == 0.5 and set(row["median_s"]) == {"float32", "bfloat16", "float32 frozen embeddings",
                                                             "bfloat16 frozen embeddings"}
    assert build_config(args).distill.max_length is None and row["seq_len"] == 128  # unset: the length most
    # collections distil at (the bench has no collection to derive it from)
    med = row["median_s"]
    ratios = [med["float32"] / med[v] for v in ("bfloat16", "float32 frozen embeddings", "bfloat16 frozen embeddings")]
    cells = " | ".join(f"{s:.3f}" for s in med.values())
    assert f"| 50% | {cells} | {' | '.join(f'{r:.2f}x' for r in ratios)} |" in page.read_text()


def test_sma_bench_times_int8_with_and_without_the_plans_float32_layers(tiny_model_dir, tiny_beir, tmp_path,
                                                                         monkeypatch):
    """``bench.int8_float_layers=2``: the int8 rows (PyTorch and ONNX Runtime) come in pairs, all layers int8 and
    the plan's two most sensitive layers kept float32, the plan measured on the documents ``sma run`` samples
    with the seed."""
    import copy

    from transformers import AutoTokenizer

    from sma.bench_cli import dense_model
    from sma.config import RunConfig
    from sma.data import resolve_dataset
    from sma.model import BiEncoder
    from sma.prune import magnitude_scores, plan_for_sparsity
    from sma.quantize import activation_range, plan_int8, sample_documents

    pytest.importorskip("onnxruntime")
    from sma import export

    quantized: list[tuple[str, ...]] = []  # keep_float of each ONNX Runtime int8 model made
    real = export.quantize_onnx

    def recording(path, out, *, keep_float=()):
        quantized.append(tuple(keep_float))
        return real(path, out, keep_float=keep_float)

    monkeypatch.setattr(export, "quantize_onnx", recording)
    out, page = tmp_path / "bench.json", tmp_path / "speed.md"
    argv = ["bench", "--sparsity", "0.5", "--dtypes", "int8", "onnx-int8", "--set", f"model.name={tiny_model_dir}",
            "--set", f"data.dataset={tiny_beir}", "--set", "bench.int8_float_layers=2", "--set", "bench.seq_len=16",
            "--set", "bench.batch_size=2", "--repeats", "1", "--output", str(out), "--page", str(page)]
    monkeypatch.setattr("sys.argv", ["sma", *argv])
    args = make_parser().parse_args(argv)
    assert run_cli(args, build_config(args)) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["dtype"], len(r["int8_keep_float"])) for r in rows] == [("int8", 0), ("int8", 2), ("onnx-int8", 0),
                                                                         ("onnx-int8", 2)]
    # the same plan worked out here on the same magnitude-pruned shapes and sampled documents
    pruned = copy.deepcopy(dense_model(str(tiny_model_dir), random_weights=False))
    p = RunConfig().prune
    apply_plan(pruned, plan_for_sparsity(pruned, magnitude_scores(pruned), 0.5, allocation=p.allocation, split=p.split))
    texts = sample_documents(resolve_dataset(str(tiny_beir)).corpus, 42)
    m = RunConfig().model
    model = BiEncoder(pruned, AutoTokenizer.from_pretrained(str(tiny_model_dir)), pooling=m.pooling,
                      query_max_length=m.query_max_length, doc_max_length=m.doc_max_length, normalize=m.normalize)
    expected = plan_int8(model, texts, keep_float=2)
    assert rows[1]["int8_keep_float"] == rows[3]["int8_keep_float"] == list(expected.keep_float)
    assert quantized == [(), expected.keep_float]  # ONNX Runtime's int8 model keeps the same layers float32
    assert rows[1]["pruned"]["encoder_weight_bytes"] > rows[0]["pruned"]["encoder_weight_bytes"]  # float32 kept
    bits = {"full": 8, "reduced": 7}[activation_range("auto")]
    from sma.quantize import int8_engine

    assert f"PyTorch, int8 linear layers ({bits}-bit inputs, {int8_engine()} engine), 2 kept float32 (" in page.read_text()
    from sma.config import ConfigError

    with pytest.raises(ConfigError, match="bench.int8_float_layers"):
        from sma.preflight import check_bench

        check_bench(build_config(make_parser().parse_args(
            ["bench", "--dtypes", "int8", "--set", "model.name=tiny", "--set", "bench.int8_float_layers=1"])))
