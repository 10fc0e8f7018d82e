import json

import pytest

from sma.cli import make_parser
from sma.config import ConfigError, RunConfig, apply_overrides, from_dict, load_config, save_config, to_dict
from sma.config.options import run_config


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
    with pytest.raises(ConfigError, match="unknown config key 'train.nope'"):
        apply_overrides(RunConfig(), {"train.nope": 1})


def test_overrides_coerce_types():
    cfg = apply_overrides(RunConfig(), {"train.learning_rate": "3e-5", "sparsity": "0.3 0.5",
                                        "data.max_samples": "none", "deterministic": "true"})
    assert cfg.train.learning_rate == 3e-5 and cfg.sparsity == (0.3, 0.5)
    assert cfg.data.max_samples is None and cfg.deterministic is True
    with pytest.raises(ConfigError, match="expected an integer"):
        apply_overrides(cfg, {"train.batch_size": "2.5"})


def test_cli_flags_map_to_config(tmp_path):
    (tmp_path / "paper.json").write_text(json.dumps({"seed": 7, "train": {"learning_rate": 1e-5}}))
    args = make_parser().parse_args([
        "run", "--config", str(tmp_path / "paper.json"), "--model", "m", "--dataset", "nfcorpus",
        "--sparsity", "0.3", "0.5", "0.7", "--epochs", "4", "--batch-size", "8", "--gradient-accumulation", "2",
        "--seed", "42", "--deterministic", "--max-samples", "50", "--set", "eval.batch_size=16",
    ])
    cfg = run_config(args)
    assert (cfg.model.name, cfg.data.dataset, cfg.sparsity) == ("m", "nfcorpus", (0.3, 0.5, 0.7))
    assert (cfg.train.baseline_epochs, cfg.train.batch_size, cfg.train.gradient_accumulation) == (4, 8, 2)
    # the training flags reach every training phase: recovery too
    assert (cfg.distill.batch_size, cfg.distill.gradient_accumulation) == (8, 2)
    assert (cfg.seed, cfg.deterministic, cfg.data.max_samples, cfg.eval.batch_size) == (42, True, 50, 16)
    assert cfg.train.learning_rate == 1e-5  # from the file


def test_quick_test_defaults_yield_to_explicit_flags():
    cfg = run_config(make_parser().parse_args(["run", "--quick-test"]))
    assert cfg.sparsity == (0.3, 0.5) and cfg.data.max_samples == 100 and cfg.distill.post_prune_epochs == 1
    cfg = run_config(make_parser().parse_args(["run", "--quick-test", "--max-samples", "10"]))
    assert cfg.data.max_samples == 10


def test_to_dict_is_json():
    assert json.loads(json.dumps(to_dict(RunConfig())))["model"]["pooling"] == "mean"


def test_pruning_flags_map_to_config():
    cfg = run_config(make_parser().parse_args([
        "run", "--criterion", "magnitude", "--gentleness", "0.25", "--alpha", "0.7", "--post-prune-epochs", "2",
        "--no-protect-circuits"]))
    assert (cfg.prune.criterion, cfg.prune.gentleness, cfg.prune.protect_circuits) == ("magnitude", 0.25, False)
    assert (cfg.distill.alpha, cfg.distill.post_prune_epochs) == (0.7, 2)
    cfg = run_config(make_parser().parse_args(["run", "--no-distill"]))
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


@pytest.mark.parametrize("argv, key", [
    (["--sparsity", "1.5"], "sparsity"), (["--sparsity", "-0.1"], "sparsity"), (["--gentleness", "-1"], "gentleness"),
    (["--post-prune-epochs", "-3"], "post_prune_epochs"), (["--alpha", "2"], "alpha"),
    (["--set", "prune.split=diagonal"], "prune.split"), (["--batch-size", "0"], "batch_size"),
    (["--set", "model.pooling=max"], "model.pooling"), (["--set", "bench.repeats=0"], "bench.repeats"),
    (["--alpha", "0.3", "--no-distill"], "--alpha and --no-distill both set distill.alpha"),
    (["--set", "prune.whole_layers=-1"], "prune.whole_layers"),
    (["--set", "bench.int8_runtime=tensorrt"], "bench.int8_runtime"),
    (["--set", "prune.whole_layers=2", "--set", "prune.min_heads_per_layer=1"], "prune.whole_layers: empties layers"),
])
def test_bad_values_fail_in_the_front_door_naming_the_key(argv, key):
    with pytest.raises(ConfigError, match=key):
        run_config(make_parser().parse_args(["run", *argv]))


def test_every_command_is_built_by_the_front_door_from_one_table():
    from sma.config.options import FLAGS

    parse = make_parser().parse_args
    bench = run_config(parse(["bench", "--batch-size", "4", "--repeats", "7", "--sparsity", "0.5"]), "bench")
    assert (bench.bench.batch_size, bench.bench.repeats, bench.sparsity) == (4, 7, (0.5,))
    assert bench.train.batch_size == RunConfig().train.batch_size  # bench's --batch-size is the benchmark's
    analyze = run_config(parse(["analyze", "--methods", "attribution", "--doc-max-length", "64"]), "analyze")
    assert analyze.analysis.methods == ("attribution",) and analyze.model.doc_max_length == 64
    # the defaults of a command are the RunConfig's: one place
    assert run_config(parse(["bench"]), "bench").bench == RunConfig().bench
    from sma.config import SearchConfig
    from sma.config.ablation import AblationConfig
    from sma.config.options import OUTER_KEYS

    for f in FLAGS:  # every flag sets real keys of every command it is offered on
        for command in f.commands:
            outer = {"tune": SearchConfig(), "ablate": AblationConfig()}.get(command)
            target = outer if outer is not None and f.keys[0] in OUTER_KEYS else RunConfig()
            for key in f.keys:
                apply_overrides(target, {key: f.const if f.const is not None else _example(f, key)})


def _example(flag, key):
    if key.endswith("device"):
        return "cpu"
    if flag.choices:
        return [flag.choices[0]] if flag.nargs else flag.choices[0]
    value = {int: 1, float: 0.5, str: "x"}[flag.type]
    return [value] if flag.nargs else value


def test_small_modes_have_one_name_on_every_command():
    parse = make_parser().parse_args
    for command in ("run", "analyze", "bench", "tune"):
        assert parse([command, "--quick-test"]).preset == "quick"
        assert parse([command, "--smoke-test"]).preset == "smoke"


def test_the_command_line_imports_no_torch_until_a_command_runs():
    import subprocess
    import sys

    code = ("import sys; from sma.cli import make_parser; make_parser().parse_args(['run', '--sparsity', '0.5']); "
            "print('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_bad_value_is_one_line_and_exit_2_before_any_heavy_import():
    import subprocess
    import sys

    code = ("import sys; from sma.cli import main; rc = main(['run', '--sparsity', '1.5']); "
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False"]
    assert out.stderr.strip() == "sma: error: sparsity: each value must be in (0, 1), got 1.5"
