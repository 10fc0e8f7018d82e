import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_mlflow_is_the_installed_package_not_the_config_folder():
    import mlflow

    path = Path(mlflow.__file__).resolve()
    assert "site-packages" in path.parts
    assert REPO / "mlflow" not in path.parents
    assert not list((REPO / "mlflow").rglob("*.py"))


def test_sma_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "sma.cli", "--help"], capture_output=True, text=True, check=True)
    assert "run" in out.stdout


def _sma(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "SMA_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "sma.cli", *args, "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env)


def test_unreachable_hub_model_is_one_clear_line(tmp_path, tiny_beir):
    out = _sma("run", "--model", "no-such-org/no-such-model", "--dataset", str(tiny_beir), tmp_path=tmp_path)
    assert out.returncode == 2
    assert "sma: error: model 'no-such-org/no-such-model' is not a local directory" in out.stderr
    assert "give --model a local directory" in out.stderr and "Traceback" not in out.stderr


def test_missing_dataset_is_one_clear_line(tmp_path):
    out = _sma("run", "--dataset", str(tmp_path / "empty-and-absent"), tmp_path=tmp_path)
    assert out.returncode == 2 and "empty-and-absent': no such folder" in out.stderr and "Traceback" not in out.stderr
