"""``sma run``: prepare (cached) -> per sparsity: gradual prune + distill -> evaluate, benchmark -> table.

Per sparsity (:func:`run_sparsity`): the student starts as a copy of the teacher; for each step of the
schedule a plan is made on rank 0 (broadcast under torch.distributed), applied physically, and the student
is distilled a little; then ``post_prune_epochs`` of distillation; then dev/test evaluation over the whole
corpus, a side-by-side speed/memory benchmark against the dense teacher, and the files of the results layout.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sma.atomic import write_json
from sma.config import RunConfig, save_config, to_dict
from sma.data import RetrievalData
from sma.device import resolve_device
from sma.distill import distill_epochs, freeze_word_embeddings
from sma.distributed import broadcast, rank_and_world, rank_zero_first, wrap_ddp
from sma.evaluate import evaluate_model, split_agreement, subset_cosine
from sma.layout import (
    BASELINE_PER_QUERY_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_DIR,
    PHASE1_DIR,
    PLAN_FILE,
    RESULTS_FILE,
    sparsity_dir,
)
from sma.metrics import PHASE_PREFIX
from sma.model import gradient_checkpointing
from sma.prepare import Prepared, Reference, load_run_data
from sma.prepare import prepare as prepare_shared
from sma.provenance import git_commit, invocation
from sma.prune import PruningPlan, apply_plan, encoder_sparsity, plan_for_sparsity, save_pruned, structure
from sma.schedule import sparsity_schedule
from sma.seeding import set_seed
from sma.teacher import Teacher, get_teacher

log = logging.getLogger(__name__)

Reporter = Callable[[dict[str, float], Any], None]
"""Called with each post-prune epoch's metrics row and the student (a :class:`BiEncoder`) after it."""


@contextlib.contextmanager
def timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    """Add the block's wall time to ``seconds[PHASE_PREFIX + phase]`` (:data:`sma.metrics.PHASES`)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        key = PHASE_PREFIX + phase
        seconds[key] = round(seconds.get(key, 0.0) + time.perf_counter() - start, 1)


def setup_runtime(cfg: RunConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed, deterministic=cfg.deterministic)


def prepare(cfg: RunConfig, *, analysis_dir: Path | None = None, data: RetrievalData | None = None,
            dense: Teacher | None = None) -> Prepared:
    """The work shared by every sparsity and trial (:func:`sma.prepare.prepare`), with the phase-1 files
    (scores, circuits, plots) written into ``analysis_dir`` itself: ``results/<experiment>/phase1``.

    ``sma run``, ``sma tune`` and ``sma ablate`` all pass that folder; the analysis names its own folder
    ``phase1`` inside the directory it is given, so that is the folder's parent. Any other name is refused
    rather than silently nesting ``phase1/`` inside it."""
    if analysis_dir is not None and Path(analysis_dir).name != PHASE1_DIR:
        raise ValueError(f"analysis_dir must be a run's {PHASE1_DIR}/ folder, got {analysis_dir}")
    parent = Path(analysis_dir).parent if analysis_dir is not None else None
    return prepare_shared(cfg, analysis_dir=parent, data=data, dense=dense)


def run_sparsity(cfg: RunConfig, sparsity: float, *, out_dir: Path | None = None, prepared: Prepared | None = None,
                 reporter: Reporter | None = None) -> dict[str, Any]:
    """Prune a copy of the teacher to ``sparsity``, recover it, measure it. Returns flat metrics."""
    started = time.time()
    rank, world = rank_and_world()
    setup_runtime(cfg)
    prep = prepared or prepare(cfg)
    out_dir = Path(out_dir) if out_dir is not None else sparsity_dir(cfg.run_dir, sparsity)
    teacher = prep.load_teacher()
    student = copy.deepcopy(teacher)  # the same weights as a second load, without reading them again
    if cfg.distill.freeze_word_embeddings:
        freeze_word_embeddings(student)
    scores = prep.importance.scores_for(cfg.prune.criterion)
    protected = prep.importance.circuit if cfg.prune.protects_circuit else frozenset()
    schedule = sparsity_schedule(sparsity, cfg.prune.gentleness, max_steps=cfg.prune.max_steps)
    plans: list[dict] = []
    history: list[dict[str, float]] = []
    seconds: dict[str, float] = {}
    wrapped = wrap_ddp(student, world)
    for step, target in enumerate(schedule, start=1):
        plan: PruningPlan | None = None
        if rank == 0:
            plan = plan_for_sparsity(student.encoder, scores, target, allocation=cfg.prune.allocation,
                                     split=cfg.prune.split, min_heads_per_layer=cfg.prune.min_heads_per_layer,
                                     protected=sorted(protected), neuron_multiple=cfg.prune.neuron_multiple,
                                     whole_layers=cfg.prune.whole_layers)
        plan = broadcast(plan, world)
        apply_plan(student, plan)
        wrapped = wrap_ddp(student, world)  # shapes changed: DDP must be rebuilt
        report = encoder_sparsity(student.encoder)
        plans.append({"step": step, "target": target, "actual": report.sparsity, "plan": json.loads(plan.to_json())})
        log.info("s=%.2f step %d/%d: target %.4f actual %.4f", sparsity, step, len(schedule), target, report.sparsity)
        if step < len(schedule):
            with timed(seconds, "prune_steps"):
                _distill(cfg, prep, wrapped, teacher, epochs=cfg.prune.step_epochs, rank=rank, world=world,
                         seed_offset=step, desc=f"s={sparsity:.2f} step {step}")
    metrics_by_epoch: Callable[[int, float], None] | None = None
    if reporter is not None or cfg.distill.eval_every_epoch:
        def metrics_by_epoch(epoch: int, loss: float) -> None:
            row = {"epoch": epoch, "train_loss": loss}
            if cfg.distill.eval_every_epoch:
                row.update(_dev_row(cfg, prep, student, rank, world))
            history.append(row)
            if reporter is not None:
                reporter(row, student)
    with timed(seconds, "recovery"):
        _distill(cfg, prep, wrapped, teacher, epochs=cfg.distill.post_prune_epochs, rank=rank, world=world,
                 seed_offset=0, desc=f"s={sparsity:.2f} post-prune", on_epoch=metrics_by_epoch)
    result = measure(cfg, prep, teacher, student, sparsity, rank, world, seconds)
    result.update(seconds)
    result["seconds"] = round(time.time() - started, 1)
    result["schedule"] = schedule
    result["structure"] = structure(student.encoder)
    result["history"] = history
    if rank == 0:
        result["artifacts"] = _write(out_dir, cfg, student, plans, result)
    result = broadcast(result, world)
    if reporter is not None and not history:
        reporter({"epoch": cfg.distill.post_prune_epochs, "dev_retention": result["dev_retention"],
                  "dev_ndcg_at_10": result["dev_ndcg_at_10"]}, student)
    return result


def _distill(cfg: RunConfig, prep: Prepared, model: torch.nn.Module, teacher, *, epochs: float, rank: int, world: int,
             seed_offset: int, desc: str, on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    with gradient_checkpointing(model, cfg.gradient_checkpointing):
        return distill_epochs(model, prep.texts, replace(cfg.distill, max_length=prep.profile.distill_length),
                              epochs=epochs, seed=cfg.seed + 1000 * seed_offset,
                              task=prep.task, teacher=teacher, rank=rank, world_size=world, on_epoch=on_epoch,
                              show_progress=cfg.eval.show_progress, desc=desc)


def _dev_row(cfg: RunConfig, prep: Prepared, student, rank: int, world: int) -> dict[str, float]:
    """Dev nDCG@10 and retention with the label-free agreement (corpus cosine, dev query cosine and top-10
    kept), from one corpus encoding: how recovery progresses epoch by epoch."""
    row: dict[str, float] = {}
    if rank == 0:
        split = cfg.data.dev_split
        results, mine = evaluate_model(student, prep.data, cfg, splits=(split,))
        res = results[split]
        dense = prep.teacher.metrics[split].mean["ndcg_at_10"]
        row = {"dev_ndcg_at_10": res.mean["ndcg_at_10"], "dev_retention": res.mean["ndcg_at_10"] / dense}
        if (agree := split_agreement(mine, prep.teacher_eval).get(split)) is not None:
            row.update({"corpus_cosine": agree.corpus_cosine, f"{split}_query_cosine": agree.query_cosine,
                        f"{split}_top10_overlap": agree.top10_overlap})
    return broadcast(row, world)


def measure(cfg: RunConfig, prep: Reference, teacher, student, sparsity: float, rank: int, world: int,
            seconds: dict[str, float]) -> dict[str, Any]:
    """Everything measured of a pruned ``student`` against the dense ``teacher`` on ``prep``'s collection:
    metrics and retention per split with their interval over the queries, agreement, the collection profile,
    speed and memory (``bench.enabled``), and its int8 copy (``bench.int8``)."""
    out: dict[str, Any] = {}
    if rank == 0:
        report = encoder_sparsity(student.encoder)
        with timed(seconds, "evaluation"):
            res, mine = evaluate_model(student, prep.data, cfg)
        out = {"sparsity": sparsity, "actual_sparsity": report.sparsity,
               "actual_sparsity_with_embeddings": report.sparsity_with_embeddings,
               "per_query": {s: r.per_query for s, r in res.items()},
               "dense_per_query": {s: prep.teacher.metrics[s].per_query for s in res}}
        out.update(prep.profile.metrics())
        long_docs = prep.profile.longer_than(prep.profile.distill_length)
        if (long := subset_cosine(mine, prep.teacher_eval, long_docs)) is not None:
            out["corpus_cosine_long"] = long
            out["long_documents"] = len(long_docs)
        for split, agree in split_agreement(mine, prep.teacher_eval).items():
            out["corpus_cosine"] = agree.corpus_cosine  # the same corpus for every split
            out[f"{split}_query_cosine"] = agree.query_cosine
            out[f"{split}_top10_overlap"] = agree.top10_overlap
        for split, r in res.items():
            dense = prep.teacher.metrics[split].mean
            for k, v in r.mean.items():
                out[f"{split}_{k}"] = v
                out[f"{split}_dense_{k}"] = dense[k]
            out[f"{split}_retention"] = r.mean["ndcg_at_10"] / dense["ndcg_at_10"] if dense["ndcg_at_10"] else 0.0
            out[f"{split}_retention_low"], out[f"{split}_retention_high"] = _query_interval(
                r.per_query, prep.teacher.metrics[split].per_query)
        if cfg.bench.enabled:
            from sma.bench import benchmark

            with timed(seconds, "benchmark"):
                b = benchmark(teacher.encoder, student.encoder, seq_len=cfg.bench.seq_len,
                              batch_size=cfg.bench.batch_size, repeats=cfg.bench.repeats,
                              threads=cfg.bench.threads, device=resolve_device(cfg.bench.device),
                              bfloat16=next(student.encoder.parameters()).dtype == torch.bfloat16)
            out.update({"speedup": b.speedup, "memory_ratio": b.encoder_weight_ratio,
                        "memory_ratio_with_embeddings": b.weight_ratio, "bench": b.to_dict()})
        if cfg.bench.int8:
            with timed(seconds, "int8"):
                out.update(_int8_metrics(cfg, prep, teacher, student, float32_embeddings=mine))
    return out


def _query_interval(pruned: dict[str, dict[str, float]], dense: dict[str, dict[str, float]]) -> tuple[float, float]:
    """Retention's 95 % paired bootstrap interval over the split's queries (:func:`analysis.stats.retention_interval`,
    seeded): how far another sample of as many queries could move it."""
    from analysis.stats import retention_interval

    return retention_interval({q: v["ndcg_at_10"] for q, v in pruned.items()},
                              {q: v["ndcg_at_10"] for q, v in dense.items()})


def _int8_metrics(cfg: RunConfig, prep: Reference, teacher, student, *, float32_embeddings) -> dict[str, Any]:
    """The pruned model with int8 linear layers (``bench.int8_float_layers`` of them kept float32 by
    :func:`sma.quantize.plan_int8` on a seeded sample of documents), on the CPU, in ``bench.int8_runtime``
    (PyTorch's dynamic int8 layers, or ONNX Runtime's int8 matrix multiplications): nDCG@10 and retention on
    each split (and per query, for the report's paired interval of what int8 loses), how close its document
    embeddings stay to the float32 model's, speed-up over the dense float32 model and memory, measured side by
    side."""
    from sma.bench import benchmark
    from sma.quantize import activation_range, int8_engine, plan_int8, quantize_int8, sample_documents

    activations, engine = activation_range(cfg.bench.int8_activations), int8_engine(cfg.bench.int8_engine)
    onnx = cfg.bench.int8_runtime == "onnxruntime"
    plan = plan_int8(student, sample_documents(prep.data.corpus, cfg.seed), keep_float=cfg.bench.int8_float_layers,
                     batch_size=cfg.eval.batch_size, activations=activations, engine=engine)
    if plan.keep_float:
        log.info("int8: %d linear layers kept float32: %s", len(plan.keep_float), ", ".join(plan.keep_float))
    if onnx:
        from sma.onnx_encoder import OnnxBiEncoder

        int8_model = OnnxBiEncoder(student, threads=cfg.bench.threads, int8=True, keep_float=plan.keep_float)
        sessions = [int8_model.session]  # timed below as evaluated here: one export and quantization per run
    else:
        sessions = None
        int8_model = quantize_int8(student, plan.keep_float, activations=activations, engine=engine)
    res, embeddings = evaluate_model(int8_model, prep.data, cfg)
    agree = split_agreement(embeddings, float32_embeddings)
    out: dict[str, Any] = {"int8_corpus_cosine": next(iter(agree.values())).corpus_cosine,
                           "int8_runtime": cfg.bench.int8_runtime, "int8_plan": plan.to_dict(),
                           "int8_per_query": {s: r.per_query for s, r in res.items()},
                           **({} if onnx else {"int8_activations": activations, "int8_engine": engine})}
    for split, r in res.items():
        dense = prep.teacher.metrics[split].mean["ndcg_at_10"]
        out[f"{split}_ndcg_at_10_int8"] = r.mean["ndcg_at_10"]
        out[f"{split}_retention_int8"] = r.mean["ndcg_at_10"] / dense if dense else 0.0
    b = benchmark(teacher.encoder, student.encoder, seq_len=cfg.bench.seq_len, batch_size=cfg.bench.batch_size,
                  repeats=cfg.bench.repeats, threads=cfg.bench.threads, device="cpu", int8=True, onnx=onnx,
                  int8_keep_float=plan.keep_float, int8_activations=activations, int8_engine=engine,
                  onnx_sessions=sessions)
    out.update({"speedup_int8": b.speedup, "memory_ratio_int8": b.encoder_weight_ratio, "bench_int8": b.to_dict()})
    return out


def _write(out_dir: Path, cfg: RunConfig, student, plans: list[dict], result: dict[str, Any]) -> dict[str, str]:
    write_json(out_dir / PLAN_FILE, plans)
    save_pruned(student.encoder, out_dir / MODEL_DIR, tokenizer=student.tokenizer)
    write_json(out_dir / METRICS_FILE, result, default=str)
    return {"plan": str(out_dir / PLAN_FILE), "metrics": str(out_dir / METRICS_FILE),
            "model": str(out_dir / MODEL_DIR)}


def run(cfg: RunConfig) -> dict:
    """Run the whole job described by ``cfg``; write ``results/<experiment>/`` and return ``results.json``.

    With ``cfg.track``, MLflow gets a parent run (role ``run``) and a child run per sparsity (role
    ``sparsity``, tagged ``result=1``): see :class:`sma.tracking.RunTracking`. Tracking only observes.
    Under torch.distributed (``sma run --workers N``: every Ray Train worker calls this) rank 0 computes the
    shared work first and the others read it from the cache; only rank 0 writes, tracks and prints."""
    started = time.time()
    rank, world = rank_and_world()
    lead = rank == 0
    setup_runtime(cfg)
    out = cfg.run_dir
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / CONFIG_FILE)
    shared: dict[str, float] = {}
    with _tracked(cfg, out / CONFIG_FILE) if lead else contextlib.nullcontext() as tracked:
        with rank_zero_first(world), timed(shared, "baseline"):
            data = load_run_data(cfg)
            baseline = get_teacher(cfg, data)
        results: dict[str, Any] = {
            "experiment": cfg.experiment, "model": cfg.model.name, "dataset": data.name,
            "num_documents": len(data.corpus), "config": to_dict(cfg), "world_size": world,
            "command": invocation(), "git_commit": git_commit(),  # for ``sma log`` of a run made without tracking
            "complete": False,  # until every sparsity is done: an interrupted run's file keeps the finished ones
            **({"mlflow": tracked.info} if tracked is not None else {}),
            "baseline": {"key": baseline.key, "cached": baseline.cached,
                         "pretrained": _pretrained_metrics(cfg, data, baseline),
                         "metrics": {s: r.mean for s, r in baseline.metrics.items()},
                         "train_losses": list(baseline.train_losses)},
            "sparsities": [],
            **shared,
        }
        if lead:
            write_json(out / BASELINE_PER_QUERY_FILE, {s: r.per_query for s, r in baseline.metrics.items()})
            print(format_table(results), flush=True)  # the dense numbers now; the pruning rows when they are done
        prep = None
        if cfg.sparsity:  # analysis and teacher targets only when something is pruned
            with rank_zero_first(world), timed(shared, "prepare"):
                prep = prepare(cfg, analysis_dir=out / PHASE1_DIR if lead else None, data=data, dense=baseline)
            results.update(shared)
            results["collection"] = prep.profile.to_dict()
        for s in cfg.sparsity:
            with tracked.sparsity(s) if tracked is not None else contextlib.nullcontext() as child:
                r = run_sparsity(cfg, s, prepared=prep)
                results["sparsities"].append({k: v for k, v in r.items()
                                              if k not in ("per_query", "dense_per_query", "int8_per_query", "bench",
                                                              "bench_int8", "int8_plan", "history")})
                if lead:
                    write_json(out / RESULTS_FILE, results, indent=2)
                if tracked is not None:
                    files = r.get("artifacts", {})
                    tracked.log_sparsity(child, r, [files[k] for k in ("plan", "metrics") if k in files])
        results["seconds"] = round(time.time() - started, 1)
        results["complete"] = True
        if lead:
            write_json(out / RESULTS_FILE, results, indent=2)
    if cfg.sparsity and lead:
        print(format_table(results))
    return results


@contextlib.contextmanager
def _tracked(cfg: RunConfig, config_file: Path) -> Iterator[Any]:
    """``sma run``'s MLflow runs (a :class:`sma.tracking.RunTracking`), or ``None`` with ``track=False``."""
    if not cfg.track:
        yield None
        return
    from sma.tracking import RunTracking  # imports MLflow: only when tracking

    with RunTracking.start(cfg, config_file) as tracked:
        yield tracked


def _pretrained_metrics(cfg: RunConfig, data, baseline: Teacher) -> dict[str, dict[str, float]]:
    """Dev/test metrics of the encoder before baseline fine-tuning (cached like any teacher)."""
    if cfg.train.baseline_epochs == 0:
        return {s: r.mean for s, r in baseline.metrics.items()}
    pretrained = get_teacher(replace(cfg, train=replace(cfg.train, baseline_epochs=0)), data)
    return {s: r.mean for s, r in pretrained.metrics.items()}


def format_table(results: dict) -> str:
    """The results table: Sparsity | Actual | Baseline | Pruned | Retention | its 95 % CI over the test queries |
    Speedup | Memory (test split)."""
    base = results["baseline"]["metrics"].get("test", {}).get("ndcg_at_10", float("nan"))
    lines = [f"\nDense {results['model']} on {results['dataset']} ({results['num_documents']} documents): "
             + ", ".join(f"{s} nDCG@10 {m['ndcg_at_10']:.4f}" for s, m in results["baseline"]["metrics"].items())]
    pretrained = results["baseline"].get("pretrained", {})
    if results["config"]["train"]["baseline_epochs"] > 0 and pretrained:
        lines[0] += " (after baseline fine-tuning; pretrained: " + ", ".join(
            f"{s} {m['ndcg_at_10']:.4f}" for s, m in pretrained.items()) + ")"
    if results["sparsities"]:
        lines.append(f"{'Sparsity':<11}{'Actual':<10}{'Baseline':<11}{'Pruned':<9}{'Retention':<12}"
                     f"{'95% CI (queries)':<18}{'Speedup':<10}{'Memory':<8}")
        for r in results["sparsities"]:
            speed = f"{r['speedup']:.3f}" if "speedup" in r else "-"
            mem = f"{100 * r['memory_ratio']:.0f}%" if "memory_ratio" in r else "-"
            ci = (f"{100 * r['test_retention_low']:.1f}-{100 * r['test_retention_high']:.1f}"
                  if "test_retention_low" in r else "-")
            lines.append(f"{100 * r['sparsity']:<11.0f}{100 * r['actual_sparsity']:<10.2f}{base:<11.4f}"
                         f"{r.get('test_ndcg_at_10', float('nan')):<9.4f}"
                         f"{100 * r.get('test_retention', float('nan')):<12.2f}{ci:<18}{speed:<10}{mem:<8}")
        agree = [r for r in results["sparsities"] if "corpus_cosine" in r]
        if agree:
            lines.append("Agreement with the dense teacher (no labels): mean cosine of document / dev query / test "
                         "query embeddings, share of the teacher's top 10 kept (dev / test), cosine of the documents "
                         "longer than the distillation length (distill_length)")
            for r in agree:
                lines.append(f"{100 * r['sparsity']:<11.0f}" + "  ".join(
                    f"{r.get(k, float('nan')):.4f}" for k in ("corpus_cosine", "dev_query_cosine", "test_query_cosine",
                                                              "dev_top10_overlap", "test_top10_overlap",
                                                              "corpus_cosine_long"))
                    + (f" ({r['long_documents']} documents)" if "long_documents" in r else ""))
        int8 = [r for r in results["sparsities"] if "test_retention_int8" in r]
        if int8:
            runtime = {"onnxruntime": "ONNX Runtime"}.get(int8[0].get("int8_runtime", ""), "PyTorch")
            lines.append(f"int8 linear layers (CPU, {runtime}): test retention, speedup and memory against dense "
                         "float32, cosine of int8 vs float32 document embeddings")
            for r in int8:
                lines.append(f"{100 * r['sparsity']:<11.0f}{100 * r['test_retention_int8']:<12.2f}"
                             f"{r['speedup_int8']:<10.3f}{100 * r['memory_ratio_int8']:<8.1f}"
                             f"{r['int8_corpus_cosine']:.4f}")
    return "\n".join(lines)


def run_cli(args, cfg: RunConfig) -> int:
    """``sma run``: the whole job (``cfg`` comes from the front door, :mod:`sma.config.options`), in this
    process or, with several workers or GPUs per worker, as a Ray Train TorchTrainer (:mod:`tune.run_on_ray`)."""
    if cfg.workers.on_ray:
        from tune.run_on_ray import run_on_workers

        run_on_workers(cfg)
    else:
        run(cfg)
    return 0
