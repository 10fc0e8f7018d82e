"""``sma evaluate``: a pruned model that ``sma run`` saved, measured again against its dense model, on its own
collection or another one, in float32 or bfloat16 (``--dtype``) and (``bench.int8``) as an int8 copy, without
pruning or training.

    sma evaluate results/<experiment>/phase2/s0.50                     # as the run measured it
    sma evaluate results/<experiment>/phase2/s0.50 --dataset cacm      # on a collection it was not pruned on
    sma evaluate results/<experiment>/phase2/s0.50 --set bench.int8=true --set bench.int8_float_layers=4
    sma evaluate results/<experiment>/phase2/s0.50 --dtype bfloat16    # served in bfloat16

Settings are the run's (its ``config.json``), flags and ``--set`` on top; the dense model is the run's
``model.name`` (its teacher from the cache when the run left it there). Prints the table ``sma run`` prints and
writes every number beside the model folder, to ``results/<experiment>/phase2/s0.50/evaluation-<collection>.json``
(``evaluation-<collection>-bfloat16.json`` with ``--dtype bfloat16``; or ``--output``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sma.config import RunConfig
from sma.config.choices import EVAL_DTYPES

EVALUATION_PREFIX = "evaluation-"


def evaluate_extras(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a pruned model folder, or a folder holding one in model/ (results/<exp>/phase2/s0.50)")
    p.add_argument("--output", type=Path, default=None, metavar="FILE.json",
                   help="where the numbers go (default: evaluation-<collection>[-DTYPE].json beside the model folder)")
    p.add_argument("--dtype", choices=EVAL_DTYPES, default="float32",
                   help="what the pruned model runs in (the dense model: float32); with bench.enabled, bfloat16 is "
                        "timed on the CPU against dense float32 (sma bench's cpu-bfloat16)")


def settings(args: argparse.Namespace, cfg: RunConfig) -> tuple[Path, RunConfig]:
    """The model folder and the config: the run's that wrote it when there is one (flags and ``--set`` on top)."""
    from sma.config.options import run_config
    from sma.export import model_dir, run_config_of

    source = model_dir(args.path)
    found = run_config_of(source) if args.config is None else None
    if found is not None:
        cfg = run_config(argparse.Namespace(**{**vars(args), "config": str(found)}), "evaluate")
        print(f"settings from {found}")
    return source, cfg


def check_dtype(dtype: str, cfg: RunConfig) -> None:
    """``--dtype bfloat16`` against the settings, before anything is loaded: no int8 copy of it, and its
    benchmark (``bench.enabled``) on the CPU."""
    from sma.config import ConfigError

    if dtype == "float32":
        return
    if cfg.bench.int8:
        raise ConfigError(f"--dtype {dtype}: bench.int8 measures the float32 model's int8 copy; set "
                          f"bench.int8=false or drop --dtype")
    if cfg.bench.enabled and cfg.bench.device != "cpu":  # the rule BenchConfig applies to the CPU runtimes
        raise ConfigError(f"--dtype {dtype}: the {dtype} model is timed on the CPU against dense float32; set "
                          f"bench.device=cpu or bench.enabled=false")


def evaluate_saved(source: Path, cfg: RunConfig, dtype: str = "float32") -> dict[str, Any]:
    """``results.json``'s shape for one model: the dense metrics and one row of :func:`sma.pipeline.measure`,
    the pruned model in ``dtype``."""
    import torch

    from sma.config import to_dict
    from sma.model import BiEncoder
    from sma.pipeline import measure, setup_runtime
    from sma.prepare import load_run_data, reference
    from sma.prune import encoder_sparsity
    from sma.teacher import get_teacher

    setup_runtime(cfg)
    data = load_run_data(cfg)
    dense = get_teacher(cfg, data)
    teacher = dense.load(cfg)
    ref = reference(cfg, data, dense, teacher)
    student = BiEncoder.from_config(cfg.model, name=str(source)).to(teacher.device, getattr(torch, dtype)).eval()
    sparsity = encoder_sparsity(student.encoder).sparsity
    row = measure(cfg, ref, teacher, student, sparsity, 0, 1, {})
    return {"model": cfg.model.name, "pruned_model": str(source), "dtype": dtype, "dataset": data.name,
            "num_documents": len(data.corpus), "config": to_dict(cfg),
            "baseline": {"metrics": {s: r.mean for s, r in dense.metrics.items()}},
            "collection": ref.profile.to_dict(), "sparsities": [row]}


def run_cli(args: argparse.Namespace, cfg: RunConfig) -> int:
    from sma.atomic import write_json
    from sma.data import collection_name
    from sma.preflight import check_evaluate

    source, cfg = settings(args, cfg)
    suffix = "" if args.dtype == "float32" else f"-{args.dtype}"  # a float32 evaluation's file stays
    out = args.output or source.parent / f"{EVALUATION_PREFIX}{collection_name(cfg.data.dataset)}{suffix}.json"
    check_evaluate(cfg, out)
    check_dtype(args.dtype, cfg)
    from sma.pipeline import format_table

    result = evaluate_saved(source, cfg, args.dtype)
    print(format_table(result))
    if args.dtype != "float32":
        print(f"the pruned model ran in {args.dtype}, the dense model in float32")
    write_json(out, result, indent=2)
    print(f"wrote {out}")
    return 0
