"""``sma bench``: dense vs pruned latency, throughput and memory at each sparsity, side by side.

    sma bench --sparsity 0.3 0.5 0.7 --repeats 12 --output bench.json
    sma bench --smoke-test            # tiny random model, seconds

The model and the benchmark settings come from the front door (``model.name``, ``sparsity``,
``prune.allocation`` / ``prune.split`` and the ``bench.*`` keys); units are removed by weight magnitude or
first-N (``--scores``): the benchmark measures shapes, not quality.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
from typing import Any

from sma.atomic import write_json
from sma.config import RunConfig
from sma.config.choices import CPU_RUNTIMES, CpuRuntime

BUILTIN_CONFIGS = {
    "tiny": {"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 128},
    "bert-base": {},
}
"""Random-weight encoders by name (no download): shapes are all a benchmark needs."""


def dense_model(name: str, *, random_weights: bool):
    from transformers import AutoConfig, AutoModel, BertConfig

    from sma.model import resolve_model_path

    if name in BUILTIN_CONFIGS:
        return AutoModel.from_config(BertConfig(**BUILTIN_CONFIGS[name])).eval()
    path = resolve_model_path(name)
    if random_weights:
        return AutoModel.from_config(AutoConfig.from_pretrained(path)).eval()
    return AutoModel.from_pretrained(path).eval()


INT8_DTYPES = tuple(dt for dt, runtime in CPU_RUNTIMES.items() if runtime.int8)
"""The ``bench.dtypes`` entries timed with int8 linear layers (PyTorch's ``int8``, ONNX Runtime's
``onnx-int8``): those the int8 plan of ``bench.int8_float_layers`` applies to."""


def int8_plan_texts(cfg: RunConfig) -> list[str]:
    """The documents ``bench.int8_float_layers``' plan measures on: those ``sma run`` samples with the same
    seed from ``data.dataset``."""
    from sma.data import resolve_dataset
    from sma.quantize import sample_documents

    return sample_documents(resolve_dataset(cfg.data.dataset, cache_dir=cfg.cache_dir).corpus, cfg.seed)


def int8_keep_float(cfg: RunConfig, pruned, texts: list[str]) -> tuple[str, ...]:
    """The ``bench.int8_float_layers`` linear layers of the bare ``pruned`` encoder that :func:`sma.quantize.plan_int8`
    keeps in float32 (the model's own tokenizer and pooling)."""
    from transformers import AutoTokenizer

    from sma.model import BiEncoder, resolve_model_path
    from sma.quantize import plan_int8

    m = cfg.model
    model = BiEncoder(pruned, AutoTokenizer.from_pretrained(resolve_model_path(m.name)), pooling=m.pooling,
                      query_max_length=m.query_max_length, doc_max_length=m.doc_max_length, normalize=m.normalize)
    return plan_int8(model, texts, keep_float=cfg.bench.int8_float_layers, batch_size=cfg.eval.batch_size,
                     activations=cfg.bench.int8_activations, engine=cfg.bench.int8_engine).keep_float


def format_rows(rows: list[dict[str, Any]]) -> str:
    from analysis.speed_page import ffn_widths

    cols = ("target", "actual", "neurons", "dtype", "dense ms", "pruned ms", "speedup", "(min)", "(paired)", "(cpu s)",
            "docs/s d", "docs/s p", "enc MB d", "enc MB p", "ratio", "peak MB d", "peak MB p")
    lines = [" ".join(f"{c:>9}" for c in cols)]
    mb = 2.0**20
    for r in rows:
        d, p = r["dense"], r["pruned"]
        dtype = f"{r['dtype']}+{len(r['int8_keep_float'])}f" if r.get("int8_keep_float") else r["dtype"]
        cells = (f"{r['target']:.2f}", f"{p['encoder_sparsity']:.4f}", ffn_widths(r).replace(" ", ""), dtype, f"{1e3 * d['latency_s']:.1f}",
                 f"{1e3 * p['latency_s']:.1f}", f"{r['speedup']:.2f}x", f"{r['speedup_min']:.2f}x",
                 f"{r['speedup_paired']:.2f}x", f"{r['speedup_cpu']:.2f}x",
                 f"{d['docs_per_s']:.1f}", f"{p['docs_per_s']:.1f}", f"{d['encoder_weight_bytes'] / mb:.2f}",
                 f"{p['encoder_weight_bytes'] / mb:.2f}", f"{r['encoder_weight_ratio']:.3f}",
                 f"{d['peak_memory_bytes'] / mb:.1f}", f"{p['peak_memory_bytes'] / mb:.1f}")
        lines.append(" ".join(f"{c:>9}" for c in cells))
    return "\n".join(lines)


def run_cli(args: argparse.Namespace, cfg: RunConfig) -> int:
    import torch

    from sma.bench import benchmark_side_by_side
    from sma.config import to_dict
    from sma.model import native_bfloat16
    from sma.prune import (
        apply_plan,
        encoder_sparsity,
        first_n_scores,
        magnitude_scores,
        plan_for_sparsity,
        structure,
    )
    from sma.quantize import activation_range, int8_engine

    b = cfg.bench
    device = b.device if b.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = b.dtypes or (("float32", "bfloat16", "float16") if device.startswith("cuda") else ("float32",))
    dense = dense_model(cfg.model.name, random_weights=args.random_weights or args.preset == "smoke")
    scorer = magnitude_scores if args.scores == "magnitude" else first_n_scores
    rows: list[dict[str, Any]] = []
    training: list[dict[str, Any]] = []
    activations = activation_range(b.int8_activations) if "int8" in dtypes else b.int8_activations
    engine = int8_engine(b.int8_engine) if "int8" in dtypes else b.int8_engine
    if "cpu-bfloat16" in dtypes and not native_bfloat16(torch.device("cpu")):
        print("warning: cpu-bfloat16: this CPU has no native bfloat16 matrix products (AMX or AVX512-BF16), so "
              "the bfloat16 model runs slower than in float32", file=sys.stderr)
    texts = int8_plan_texts(cfg) if b.int8_float_layers and set(INT8_DTYPES) & set(dtypes) else None
    multiples = b.neuron_multiples or (cfg.prune.neuron_multiple,)
    for target in cfg.sparsity:
        shapes = []  # (multiple, plan, pruned model, int8 layers kept float32): timed side by side
        for multiple in multiples:
            pruned = copy.deepcopy(dense)
            plan = plan_for_sparsity(pruned, scorer(pruned), target, allocation=cfg.prune.allocation,
                                     split=cfg.prune.split, neuron_multiple=multiple,
                                     whole_layers=cfg.prune.whole_layers)
            apply_plan(pruned, plan)
            keep_float = int8_keep_float(cfg, pruned, texts) if texts else ()
            if keep_float:
                print(f"sparsity {target:.2f} int8: {len(keep_float)} linear layers kept float32: "
                      f"{', '.join(keep_float)}")
            shapes.append((multiple, plan, pruned, keep_float))
        # int8 with the plan is timed beside int8 throughout: what keeping the plan's layers float32 costs
        with_plan = any(kept for *_, kept in shapes)
        runs = [(dt, planned) for dt in dtypes for planned in ([False, True] if dt in INT8_DTYPES and with_plan
                                                               else [False])]
        for dt, planned in runs:
            runtime = CPU_RUNTIMES.get(dt, CpuRuntime())
            results = benchmark_side_by_side(
                dense, [pruned for _, _, pruned, _ in shapes], seq_len=b.seq_len, batch_size=b.batch_size,
                repeats=b.repeats, warmup=b.warmup, threads=b.threads, device=device, **runtime._asdict(),
                dtype=torch.float32 if dt in CPU_RUNTIMES else getattr(torch, dt),
                int8_keep_float=[kept if planned else () for *_, kept in shapes], int8_activations=activations,
                int8_engine=engine)
            for (multiple, plan, pruned, kept), res in zip(shapes, results, strict=True):
                kept = kept if planned else ()
                rows.append({"target": target, "neuron_multiple": multiple,
                             "sparsity_report": encoder_sparsity(pruned).to_dict(), "int8_keep_float": list(kept),
                             **({"int8_activations": activations, "int8_engine": engine}
                                if runtime.int8 and not runtime.onnx else {}),
                             "plan": {"heads": plan.num_heads, "neurons": plan.num_neurons,
                                      "allocation": plan.allocation, "method": plan.method},
                             "structure": structure(pruned), **res.to_dict()})
                label = f"{dt} ({len(kept)} float32)" if kept else dt
                shape = f" neuron multiple {multiple}" if len(multiples) > 1 else ""
                print(f"sparsity {target:.2f}{shape} {label}: speedup {res.speedup:.2f}x (medians), "
                      f"{res.speedup_min:.2f}x (min), {res.speedup_paired:.2f}x (paired), "
                      f"{res.speedup_cpu:.2f}x (cpu s)", flush=True)
        if args.training:
            from sma.collection_profile import DISTILL_LENGTH
            from sma.train_bench import train_step_speed

            for multiple, _, pruned, _ in shapes:
                speed = train_step_speed(pruned, batch_size=b.batch_size, seq_len=cfg.distill.max_length or DISTILL_LENGTH,
                                         repeats=b.repeats, warmup=b.warmup, threads=b.threads, device=device)
                training.append({"target": target, "neuron_multiple": multiple, **speed.to_dict()})
                shape = f" neuron multiple {multiple}" if len(multiples) > 1 else ""
                steps = ", ".join(f"{v} {speed.median_s(v):.3f} s ({speed.speedup(v):.2f}x)" for v in speed.step_s)
                print(f"sparsity {target:.2f}{shape} distillation step: {steps}", flush=True)
    print(format_rows(rows))
    payload = {"settings": {"model": cfg.model.name, "scores": args.scores, "bench": to_dict(b),
                            "allocation": cfg.prune.allocation, "split": cfg.prune.split},
               "torch": torch.__version__, "results": rows, **({"training": training} if training else {})}
    if args.output is not None:
        write_json(args.output, payload, indent=2)
        print(f"wrote {args.output}")
    if args.page is not None:
        from analysis.runs import display_command
        from analysis.speed_page import write_speed_page

        write_speed_page(args.page, payload, command=display_command("sma " + shlex.join(sys.argv[1:])))
        print(f"wrote {args.page}")
    return 0
