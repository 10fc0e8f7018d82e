import json

import pytest

from sma.cli import build_config, make_parser
from sma.config import ConfigError, RunConfig, apply_overrides, from_dict, load_config, save_config, to_dict


def test_defaults_roundtrip(tmp_path):
    cfg = RunConfig()
    save_config(cfg, tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == cfg


def test_unknown_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key.*train.lr"):
        from_dict(RunConfig, {"train": {"lr": 1e-4}})
    (tmp_path / "c.yaml").write_text("model:\n  name: x\nbogus: 1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown config key\(s\) bogus"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        apply_overrides(RunConfig(), {"train.nope": 1})


def test_overrides_coerce_types():
    cfg = apply_overrides(RunConfig(), {"train.learning_rate": "3e-5", "sparsity": "0.3 0.5",
                                        "data.max_samples": "none", "deterministic": "true"})
    assert cfg.train.learning_rate == 3e-5 and cfg.sparsity == (0.3, 0.5)
    assert cfg.data.max_samples is None and cfg.deterministic is True
    with pytest.raises(ConfigError, match="expected an integer"):
        apply_overrides(cfg, {"train.batch_size": "2.5"})


def test_cli_seed_flags_map_to_config(tmp_path):
    (tmp_path / "paper.json").write_text(json.dumps({"seed": 7, "train": {"learning_rate": 1e-5}}))
    args = make_parser().parse_args([
        "run", "--config", str(tmp_path / "paper.json"), "--model", "m", "--dataset", "nfcorpus",
        "--sparsity", "0.3", "0.5", "0.7", "--epochs", "4", "--batch-size", "8", "--gradient-accumulation", "2",
        "--seed", "42", "--deterministic", "--max-samples", "50", "--set", "eval.batch_size=16",
    ])
    cfg = build_config(args)
    assert (cfg.model.name, cfg.data.dataset, cfg.sparsity) == ("m", "nfcorpus", (0.3, 0.5, 0.7))
    assert (cfg.train.baseline_epochs, cfg.train.batch_size, cfg.train.gradient_accumulation) == (4, 8, 2)
    assert (cfg.seed, cfg.deterministic, cfg.data.max_samples, cfg.eval.batch_size) == (42, True, 50, 16)
    assert cfg.train.learning_rate == 1e-5  # from the file


def test_quick_test_defaults_yield_to_explicit_flags():
    cfg = build_config(make_parser().parse_args(["run", "--quick-test"]))
    assert cfg.quick_test and cfg.sparsity == (0.3, 0.5) and cfg.data.max_samples == 100
    cfg = build_config(make_parser().parse_args(["run", "--quick-test", "--max-samples", "10"]))
    assert cfg.data.max_samples == 10


def test_to_dict_is_json():
    assert json.loads(json.dumps(to_dict(RunConfig())))["model"]["pooling"] == "mean"


def test_pruning_flags_map_to_config():
    cfg = build_config(make_parser().parse_args([
        "run", "--criterion", "magnitude", "--gentleness", "0.25", "--alpha", "0.7", "--post-prune-epochs", "2",
        "--no-protect-circuits"]))
    assert (cfg.prune.criterion, cfg.prune.gentleness, cfg.prune.protect_circuits) == ("magnitude", 0.25, False)
    assert (cfg.distill.alpha, cfg.distill.post_prune_epochs) == (0.7, 2)
    cfg = build_config(make_parser().parse_args(["run", "--no-distill"]))
    assert cfg.distill.alpha == 0.0 and cfg.prune.protect_circuits


def test_fixed_length_tuples_and_distill_checks():
    cfg = apply_overrides(RunConfig(), {"distill.pseudo_query_words": "[4, 12]", "distill.lr_schedule": "constant"})
    assert cfg.distill.pseudo_query_words == (4, 12) and cfg.distill.lr_schedule == "constant"
    with pytest.raises(ConfigError, match="expected 2 values"):
        apply_overrides(RunConfig(), {"distill.pseudo_query_words": "[4, 8, 12]"})
    for key, value in (("distill.lr_schedule", "cosine"), ("distill.alpha", "1.5"),
                       ("distill.pseudo_query_words", "[9, 3]"), ("distill.warmup_ratio", "1.0"),
                       ("distill.hidden_weight", "-1")):
        with pytest.raises(ValueError):
            apply_overrides(RunConfig(), {key: value})
