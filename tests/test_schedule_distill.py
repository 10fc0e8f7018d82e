import pytest
import torch

from sma.config import DistillConfig
from sma.distill import DistillTexts, distill_epochs, freeze_word_embeddings, kd_loss, teacher_embeddings
from sma.model import BiEncoder
from sma.schedule import num_steps, sparsity_schedule


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("g", [0.0, 0.25, 0.5, 1.0])
def test_schedule_is_increasing_and_ends_on_target(target, g):
    steps = sparsity_schedule(target, g, max_steps=4)
    assert len(steps) == num_steps(g, max_steps=4)
    assert steps[-1] == target
    assert all(a < b for a, b in zip(steps, steps[1:], strict=False))
    assert all(0 < s <= target for s in steps)


def test_schedule_by_hand():
    assert sparsity_schedule(0.5, 0.0) == [0.5]  # one shot
    # g = 1, 4 steps, cubic: s_t = 0.8 * (1 - (1 - t/4)^3)
    expected = [0.8 * (1 - (1 - t / 4) ** 3) for t in (1, 2, 3)] + [0.8]
    assert sparsity_schedule(0.8, 1.0, max_steps=4) == pytest.approx(expected, abs=1e-12)
    assert expected[0] == pytest.approx(0.8 * 37 / 64)
    with pytest.raises(ValueError):
        sparsity_schedule(0.5, 1.5)


def test_kd_loss_is_zero_when_student_equals_teacher():
    t = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    assert kd_loss(t.clone(), t, temperature=0.05).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(torch.nn.functional.normalize(torch.randn(6, 8), dim=-1), t, temperature=0.05).item() > 0.01


def test_kd_mse_part_by_hand():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    assert kd_loss(s, t, temperature=1.0).item() == pytest.approx(2.0)  # |s - t|^2, one row: no KL term


def _dcfg(**kw) -> DistillConfig:
    """Distillation settings of these tests: batches of 4 random texts, short texts, lr 1e-3."""
    base = {"batch_size": 4, "max_length": 8, "learning_rate": 1e-3, "neighbor_share": 0.0}
    return DistillConfig(**{**base, **kw})


def test_distillation_moves_student_towards_teacher(tiny_model_dir):
    from sma.prune import apply_plan, first_n_scores, plan_for_sparsity

    student = BiEncoder.from_pretrained(str(tiny_model_dir))
    texts = [f"wing lift {w} flow" for w in ("shock", "heat", "drag", "plate", "cone", "jet", "nozzle", "shell")]
    # A random tiny BERT maps every text to almost the same direction; distinct targets make the test bite.
    emb = torch.nn.functional.normalize(torch.randn(len(texts), 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    data = DistillTexts(texts=tuple(texts), teacher=emb)
    apply_plan(student, plan_for_sparsity(student.encoder, first_n_scores(student.encoder), 0.5))

    def gap() -> float:
        with torch.no_grad():
            return kd_loss(teacher_embeddings(student, texts, max_length=16, show_progress=False), emb,
                           temperature=0.05).item()

    before = gap()
    # dropout draws from the global generator, so the result must not hang on it: 60 epochs leave 31-36 % of
    # the gap under seeds 0-3 of that generator, 30 epochs 43-60 %
    torch.manual_seed(0)
    losses = distill_epochs(student, data, _dcfg(learning_rate=3e-3, max_length=16, lr_schedule="constant",
                                                 warmup_ratio=0.0), epochs=60, seed=0, show_progress=False)
    assert len(losses) == 60
    assert gap() < 0.5 * before
    with pytest.raises(ValueError, match="distill.max_length is unset"):  # a run derives it; the API needs it
        distill_epochs(student, data, _dcfg(max_length=None), epochs=1, seed=0, show_progress=False)


def test_frozen_word_embeddings_stay_the_teachers_while_the_rest_trains(tiny_model_dir):
    student = BiEncoder.from_pretrained(str(tiny_model_dir))
    texts = tuple(f"wing lift {w} flow" for w in ("shock", "heat", "drag", "plate"))
    data = DistillTexts(texts=texts, teacher=torch.nn.functional.normalize(torch.randn(4, 32), dim=-1))
    freeze_word_embeddings(student)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    distill_epochs(student, data, _dcfg(), epochs=2, seed=0, show_progress=False)
    after = dict(student.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    table = "encoder.embeddings.word_embeddings.weight"
    assert student.encoder.get_input_embeddings().weight is after[table]
    assert table not in changed and not after[table].requires_grad
    # everything else that reaches the loss moves: position embeddings, every layer (BERT's unused pooler does not)
    assert {n for n in before if n != table and "pooler" not in n} <= changed


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_distillation_learning_rate_warms_up_then_follows_the_schedule(tiny_model_dir, monkeypatch, schedule):
    student = BiEncoder.from_pretrained(str(tiny_model_dir))
    texts = tuple(f"text {i}" for i in range(8))
    data = DistillTexts(texts=texts, teacher=torch.nn.functional.normalize(torch.randn(8, 32), dim=-1))
    seen: list[float] = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    # 8 texts / batch 4 = 2 steps per epoch, 5 epochs = 10 steps, warmup int(0.2 * 10) = 2 steps
    distill_epochs(student, data, _dcfg(lr_schedule=schedule, warmup_ratio=0.2), epochs=5, seed=0,
                   show_progress=False)
    warm = [0.0, 0.5]
    rest = [(10 - i) / 8 for i in range(2, 10)] if schedule == "linear" else [1.0] * 8
    assert seen == pytest.approx([1e-3 * f for f in warm + rest])
    with pytest.raises(ValueError, match="lr_schedule"):
        _dcfg(lr_schedule="cosine")


def test_pseudo_queries_are_seeded_spans_of_their_documents():
    from sma.distill import pseudo_queries

    docs = [" ".join(f"w{i}" for i in range(30)), "short doc"]
    spans = pseudo_queries(docs, per_doc=3, words=(4, 6), seed=7)
    assert len(spans) == 6
    assert spans == pseudo_queries(docs, per_doc=3, words=(4, 6), seed=7)
    assert spans != pseudo_queries(docs, per_doc=3, words=(4, 6), seed=8)
    for span in spans[:3]:  # consecutive words of the first document, 4 to 6 of them
        words = span.split()
        assert 4 <= len(words) <= 6
        first = int(words[0][1:])
        assert words == [f"w{i}" for i in range(first, first + len(words))]
    assert spans[3:] == ["short doc"] * 3  # shorter than the minimum span: the whole document
    assert pseudo_queries(docs, per_doc=0, words=(4, 6), seed=7) == []


def test_hidden_loss_by_hand():
    from sma.distill import hidden_loss

    emb = torch.zeros(1, 2, 2)  # the embeddings output (index 0) is not compared
    student = [emb + 5, torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)]
    teacher = [emb, torch.tensor([[[1.0, 1.0], [3.0, 3.0]]]), torch.tensor([[[2.0, 2.0], [7.0, 7.0]]])]
    mask = torch.tensor([[1, 0]])  # the second token is padding
    # layer 1: token 0 error per unit (1 + 1) / 2 = 1; layer 2: (4 + 4) / 2 = 4; mean over layers 2.5
    assert hidden_loss(student, teacher, mask).item() == pytest.approx(2.5)
    both = torch.tensor([[1, 1]])  # layer 1: (1 + 9) / 2 = 5; layer 2: (4 + 49) / 2 = 26.5
    assert hidden_loss(student, teacher, both).item() == pytest.approx((5 + 26.5) / 2)
    assert hidden_loss(teacher, teacher, both).item() == 0.0
    with pytest.raises(ValueError, match="depth"):
        hidden_loss(student[:2], teacher, mask)


def test_layer_distillation_pulls_hidden_states_to_the_teacher(tiny_model_dir):
    from sma.distill import _tokenize, hidden_loss
    from sma.prune import apply_plan, first_n_scores, plan_for_sparsity

    teacher = BiEncoder.from_pretrained(str(tiny_model_dir))
    texts = [f"wing lift {w} flow" for w in ("shock", "heat", "drag", "plate", "cone", "jet", "nozzle", "shell")]
    data = DistillTexts(texts=tuple(texts), teacher=teacher_embeddings(teacher, texts, max_length=16,
                                                                       show_progress=False))

    def gap(student: BiEncoder) -> float:
        batch = _tokenize(teacher, teacher.tokenizer, texts, 16)
        with torch.no_grad():
            return hidden_loss(student(**batch, output_hidden_states=True)[1],
                               teacher(**batch, output_hidden_states=True)[1], batch["attention_mask"]).item()

    gaps = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        student = BiEncoder.from_pretrained(str(tiny_model_dir))
        apply_plan(student, plan_for_sparsity(student.encoder, first_n_scores(student.encoder), 0.5))
        with torch.no_grad():  # a random tiny BERT barely notices pruning: move its layers away as well
            for param in student.encoder.encoder.parameters():
                param.add_(0.1 * torch.randn_like(param))
        before = gap(student)
        distill_epochs(student, data, _dcfg(learning_rate=3e-3, max_length=16, lr_schedule="constant",
                                            warmup_ratio=0.0, hidden_weight=weight),
                       epochs=20, seed=0, show_progress=False, teacher=teacher)
        gaps[weight] = gap(student)
    assert before > 0
    assert gaps[1.0] < 0.5 * before and gaps[1.0] < 0.5 * gaps[0.0]
    with pytest.raises(ValueError, match="teacher"):
        distill_epochs(student, data, _dcfg(hidden_weight=1.0), epochs=1, seed=0, show_progress=False)


def test_nearest_neighbors_in_chunks_equal_the_full_ranking():
    from sma.distill import nearest_neighbors

    emb = torch.nn.functional.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    sims = emb @ emb.T
    sims.fill_diagonal_(float("-inf"))
    assert torch.equal(nearest_neighbors(emb, k=6, chunk=7), sims.topk(6, dim=-1).indices)
    with pytest.raises(ValueError):
        nearest_neighbors(emb, k=50)


def test_batch_sampler_random_batches_cover_every_text_once_per_epoch():
    import random

    from sma.distill import BatchSampler

    sampler = BatchSampler(torch.randn(12, 4), batch_size=4, rng=random.Random(0))
    for _ in range(2):  # two epochs of 3 batches: each a permutation of the 12 texts
        seen = [i for _ in range(3) for i in sampler.next()[0]]
        assert sorted(seen) == list(range(12))
    two = BatchSampler(torch.randn(12, 4), batch_size=3, world_size=2, rng=random.Random(0)).next()
    assert len(two) == 2 and not set(two[0]) & set(two[1])  # the ranks split one global batch


def test_batch_sampler_neighbour_groups_come_from_the_teacher_neighbourhood():
    import random

    from sma.distill import BatchSampler

    emb = torch.nn.functional.normalize(torch.randn(60, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    sims = emb @ emb.T
    sims.fill_diagonal_(float("-inf"))
    near = sims.topk(6, dim=-1).indices.tolist()  # 2 * neighbors nearest, computed independently
    sampler = BatchSampler(emb, batch_size=16, rng=random.Random(0), neighbor_share=0.5, neighbors=3)
    full = 0
    for _ in range(20):
        block = sampler.next()[0]
        assert len(block) == 16 and len(set(block)) == 16
        groups = sampler.last_groups  # 0.5 * 16 = 8 slots = 2 groups of an anchor and 3 of its 6 nearest
        assert len(groups) == 2 and block[:sum(map(len, groups))] == groups[0] + groups[1]
        for anchor, *rest in groups:
            assert 1 <= len(rest) <= 3 and all(j in near[anchor] for j in rest)
        full += sum(len(g) == 4 for g in groups)
    assert full >= 30  # a group is short only when its anchor's neighbours are already in the batch
    assert BatchSampler(emb, batch_size=16, rng=random.Random(0), neighbor_share=0.2, neighbors=3).groups == 0


def test_max_texts_distills_on_a_seeded_subset_of_the_texts(tiny_model_dir, tiny_beir, tmp_path):
    from types import SimpleNamespace

    from sma.config import RunConfig, apply_overrides
    from sma.data import load_data
    from sma.prepare import distill_texts

    data = load_data(str(tiny_beir))
    teacher = BiEncoder.from_pretrained(str(tiny_model_dir))
    baseline = SimpleNamespace(key="tiny-teacher")
    base = apply_overrides(RunConfig(), {"cache_dir": str(tmp_path / "cache"), "distill.max_length": 16})
    every = distill_texts(base, data, baseline, teacher, pseudo_per_doc=0, max_length=16)
    assert len(every.texts) == len(data.corpus) + len(data.qrels["train"])
    cfg = apply_overrides(base, {"distill.max_texts": 5})
    subset = distill_texts(cfg, data, baseline, teacher, pseudo_per_doc=0, max_length=16)
    assert len(subset.texts) == 5 and subset.teacher.shape[0] == 5
    at = {t: i for i, t in enumerate(every.texts)}
    rows = [at[t] for t in subset.texts]
    assert rows == sorted(rows)  # drawn from the full list, order kept
    torch.testing.assert_close(subset.teacher, every.teacher[rows], atol=1e-5, rtol=0)
    assert distill_texts(cfg, data, baseline, teacher, pseudo_per_doc=0, max_length=16).texts == subset.texts  # seeded
    other = distill_texts(apply_overrides(cfg, {"seed": 7}), data, baseline, teacher, pseudo_per_doc=0, max_length=16)
    assert other.texts != subset.texts
    big = distill_texts(apply_overrides(base, {"distill.max_texts": 10_000}), data, baseline, teacher,
                        pseudo_per_doc=0, max_length=16)
    assert big.texts == every.texts
    with pytest.raises(ValueError, match="max_texts"):
        apply_overrides(base, {"distill.max_texts": 0})


def test_save_atomic_round_trips_and_leaves_no_temporary_file(tmp_path):
    from sma.atomic import torch_save as save_atomic

    path = save_atomic({"x": torch.arange(3)}, tmp_path / "teacher" / "k.pt")
    torch.testing.assert_close(torch.load(path)["x"], torch.arange(3))
    save_atomic({"x": torch.arange(4)}, path)  # replaces an existing file
    assert torch.load(path)["x"].tolist() == [0, 1, 2, 3]
    assert [p.name for p in (tmp_path / "teacher").iterdir()] == ["k.pt"]


def test_gradient_accumulation_steps_on_the_mean_gradient_of_its_batches(tiny_model_dir, monkeypatch):
    import copy
    import random

    from sma.distill import BatchSampler, _batch_loss

    student = BiEncoder.from_pretrained(str(tiny_model_dir))
    reference = copy.deepcopy(student)
    texts = tuple(f"wing lift {w} flow" for w in ("shock", "heat", "drag", "plate", "cone", "jet", "nozzle", "shell"))
    data = DistillTexts(texts=texts, teacher=torch.nn.functional.normalize(
        torch.randn(8, 32, generator=torch.Generator().manual_seed(0)), dim=-1))
    probe = "encoder.embeddings.word_embeddings.weight"
    grads: list[torch.Tensor] = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params, *args, **kwargs):  # the summed gradient, before clipping, at each optimizer step
        grads.append(dict(student.named_parameters())[probe].grad.clone())
        return clip(params, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    cfg = _dcfg(gradient_accumulation=2, max_length=16)
    # 8 texts / batch 4 = 2 batches an epoch; 3 epochs = 6 batches = 3 optimizer steps
    torch.manual_seed(0)  # dropout: the same draws in both computations
    losses = distill_epochs(student, data, cfg, epochs=3, seed=0, show_progress=False)
    assert len(losses) == 3 and len(grads) == 3
    # by hand: the first two batches of the same seeded sampler, the mean of their losses
    sampler = BatchSampler(data.teacher, batch_size=4, rng=random.Random(0))
    reference.train()
    torch.manual_seed(0)
    loss = sum(_batch_loss(reference, data, sampler.next()[0], cfg, task=None, rng=random.Random(0), teacher=None,
                           task_temperature=0.05) for _ in range(2)) / 2
    loss.backward()
    assert torch.allclose(grads[0], dict(reference.named_parameters())[probe].grad, atol=1e-6)
