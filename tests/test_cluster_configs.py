"""The cluster configs a user starts from: the cluster-launcher YAML passes Ray's own schema (the check
``ray up`` runs), and the KubeRay RayJob submits exactly what ``cluster/submit.sh`` submits."""

from __future__ import annotations

import copy
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


def _launcher_config() -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / "cluster-gpu.yaml").read_text())


def _validated(config: dict[str, Any]) -> dict[str, Any]:
    """What ``ray up`` checks before touching the cloud: defaults merged in, then Ray's JSON schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(copy.deepcopy(config))
    validate_config(full)
    return full


def test_the_gpu_cluster_config_passes_rays_schema():
    full = _validated(_launcher_config())
    head = full["available_node_types"][full["head_node_type"]]
    workers = [t for name, t in full["available_node_types"].items() if name != full["head_node_type"]]
    assert "GPU" not in head["resources"] and head["max_workers"] == 0
    assert any(t["resources"].get("GPU", 0) >= 1 and t["min_workers"] == 0 < t["max_workers"] for t in workers)
    # every node gets the project and its dependencies, from the repository mounted at ~/sma
    assert full["file_mounts"]["/home/ubuntu/sma"] == "."
    assert any("pip install" in c and "-e ~/sma" in c for c in full["setup_commands"])
    start_head, start_worker = (" ".join(full[k]) for k in ("head_start_ray_commands", "worker_start_ray_commands"))
    assert "--dashboard-host=127.0.0.1" in start_head and "mlflow/server.sh" in start_head
    # token auth: the client's token on every node, and every node's Ray started in token mode
    assert full["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    assert "RAY_AUTH_MODE=token" in start_head and "RAY_AUTH_MODE=token" in start_worker


@pytest.mark.parametrize("mutate", [
    lambda c: c.update(setup_comands=c.pop("setup_commands")),               # a misspelled key
    lambda c: c["available_node_types"]["gpu_worker"].update(max_workers="4"),  # a wrong type
])
def test_rays_schema_rejects_a_broken_cluster_config(mutate):
    config = _launcher_config()
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        _validated(config)


def _submitted(**env: str) -> tuple[list[str], dict[str, str]]:
    """The ``ray job submit`` command ``cluster/submit.sh --config cluster/search.yaml`` runs: (entrypoint,
    options)."""
    out = subprocess.run(["bash", "cluster/submit.sh", "--config", "cluster/search.yaml"], cwd=REPO,
                         env={**os.environ, **env, "SMA_SUBMIT_DRY_RUN": "1"}, capture_output=True, text=True,
                         check=True).stdout
    words = shlex.split(out)
    assert words[:3] == ["ray", "job", "submit"], out
    cut = words.index("--")
    opts = words[3:cut]
    return words[cut + 1:], dict(zip(opts[::2], opts[1::2], strict=True))


def test_the_rayjob_submits_what_submit_sh_submits():
    manifests = {m["kind"]: m for m in yaml.safe_load_all((CLUSTER / "rayjob.yaml").read_text())}
    job = manifests["RayJob"]["spec"]
    entrypoint, opts = _submitted(SMA_STORAGE_ROOT="/mnt/sma", SMA_ENTRYPOINT_NUM_GPUS="1")
    assert job["entrypoint"] == shlex.join(entrypoint)
    assert float(job["entrypointNumCpus"]) == float(opts["--entrypoint-num-cpus"])
    assert float(job["entrypointNumGpus"]) == float(opts["--entrypoint-num-gpus"])
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    working_dir = runtime_env.pop("working_dir")
    assert opts["--working-dir"] == "."
    assert runtime_env == yaml.safe_load((REPO / opts["--runtime-env"]).read_text())
    assert f"COPY --chown=ray . {working_dir}\n" in (CLUSTER / "Dockerfile").read_text()  # the image holds it
    # the storage root is the shared volume, mounted where the entrypoint writes on every pod
    storage = entrypoint[entrypoint.index("--output-dir") + 1]
    cluster = job["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    claim = manifests["PersistentVolumeClaim"]["metadata"]["name"]
    for pod in pods:
        mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]}
        assert any(mounts.get(name) == storage for name, c in claims.items() if c == claim)
    assert manifests["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
