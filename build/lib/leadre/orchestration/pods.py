"""One pipeline step = one Kubernetes pod: the arguments Airflow's `KubernetesPodOperator` needs for each step.

The DAG stays thin: for a step name it asks `pod_operator_kwargs(step, settings)` and passes the result to
`KubernetesPodOperator(task_id=..., **kwargs)`. Every pod runs the same image and the same `leadre` CLI that DVC
runs locally, with the image's params file (`--params /workspace/params.yaml`); the folders that params.yaml
names relative to itself (`data/`, `artifacts/`, `reports/`) are sub-paths of one shared ReadWriteMany volume
mounted beside it, so a step's output is the next step's input exactly as on a laptop.

GPU steps (the step table's GPU rows, leadre/steps.py: SFT, DPO, near-line generation) ask for `nvidia.com/gpu` and are pinned to GPU nodes with a
node selector and tolerations; the other steps are plain CPU pods. Every pod runs as a non-root user with a
read-only root filesystem (scratch space is an emptyDir at /tmp).

Only the standard library and the step table are imported here: the DAG file imports this module at parse time, so the Kubernetes
client (through `kubernetes.client.models`) and Airflow are imported inside the functions that need them.
`render_pod` builds the real operator and returns the pod it would create, without a cluster.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from leadre.steps import STEPS

ARTIFACTS_VOLUME = "artifacts"
TMP_VOLUME = "tmp"
SHM_VOLUME = "dshm"

# The placeholder kubeconfig `render_pod` hands the operator: building a pod never talks to the cluster.
_PLACEHOLDER_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
  - name: placeholder
    cluster: {server: "https://127.0.0.1:6443"}
users:
  - name: placeholder
    user: {token: placeholder}
contexts:
  - name: placeholder
    context: {cluster: placeholder, user: placeholder, namespace: default}
current-context: placeholder
"""


@dataclass(frozen=True)
class PodResources:
    """Requests and limits of one pod class, as Kubernetes quantities ({"cpu": "2", "memory": "8Gi"})."""

    requests: Mapping[str, str]
    limits: Mapping[str, str]


def _default_gpu_tolerations() -> tuple[Mapping[str, str], ...]:
    return ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)


@dataclass(frozen=True)
class KubernetesRunnerSettings:
    """Where and how step pods run. Defaults match k8s/base; `from_env` reads the overrides Airflow's values set."""

    namespace: str = "leadre"
    image: str = "leadre:latest"
    # GPU steps' image (docker/Dockerfile.cuda); None: `image` for every step
    gpu_image: str | None = None
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    # The pods' own identity: no Kubernetes API access (Airflow's worker account is the one that creates pods).
    service_account: str = "leadre-workload"
    # Shared ReadWriteMany volume holding everything params.yaml names relative to itself.
    artifacts_pvc: str = "leadre-artifacts"
    # The folder the image keeps params.yaml in; the volume's sub-paths `state_dirs` are mounted under it.
    mount_path: str = "/workspace"
    params_file: str = "/workspace/params.yaml"
    state_dirs: tuple[str, ...] = ("data", "artifacts", "reports")
    # the steps whose table row asks for a GPU (sft, dpo, nearline)
    gpu_steps: frozenset[str] = field(default_factory=lambda: frozenset(n for n, step in STEPS.items() if step.gpu))
    gpu_resource: str = "nvidia.com/gpu"
    gpu_count: int = 1  # per pod of a GPU step that is no training step (near-line)
    # GPUs per sft/dpo pod, one training process each (`torchrun --nproc_per_node`): params.yaml's
    # orchestration.gpus_per_training_pod, which the DAG passes in
    training_gpus: int = 1
    gpu_node_selector: Mapping[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: tuple[Mapping[str, str], ...] = field(default_factory=_default_gpu_tolerations)
    cpu_pod: PodResources = field(default_factory=lambda: PodResources(
        requests={"cpu": "1", "memory": "4Gi"}, limits={"cpu": "2", "memory": "8Gi"}))
    gpu_pod: PodResources = field(default_factory=lambda: PodResources(
        requests={"cpu": "4", "memory": "32Gi"}, limits={"cpu": "8", "memory": "64Gi"}))
    # Secrets whose keys become environment variables: MLflow client (MLFLOW_TRACKING_URI, credentials) and the
    # candidate store (LEADRE_STORE_URL). Created by the local overlay's secretGenerator or by you in production.
    mlflow_secret: str = "leadre-mlflow"
    store_secret: str = "leadre-store"
    env: Mapping[str, str] = field(default_factory=lambda: {
        "HOME": "/tmp",                 # caches (HF, torch, matplotlib) under the writable emptyDir
        "PYTHONUNBUFFERED": "1",        # log lines reach `kubectl logs` / the Airflow task log at once
        "HF_HUB_OFFLINE": "1",          # models come from the image or MLflow, never from a hub at run time
        # The parent MLflow run of a retrain (leadre/tracking.py): one per DAG run. Rendered by Airflow.
        "LEADRE_RETRAIN_ID": "{{ run_id }}",
    })
    run_as_user: int = 10001
    run_as_group: int = 10001
    fs_group: int = 10001
    read_only_root_filesystem: bool = True
    tmp_size_limit: str = "8Gi"
    gpu_shm_size_limit: str = "16Gi"  # PyTorch data loaders share tensors through /dev/shm (64 MiB by default)
    labels: Mapping[str, str] = field(default_factory=lambda: {
        "app.kubernetes.io/part-of": "leadre",
        "app.kubernetes.io/component": "pipeline-step",
    })
    startup_timeout_seconds: int = 600  # image pull + a GPU node scaling up can take minutes

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> KubernetesRunnerSettings:
        """Settings from LEADRE_K8S_* variables (set in k8s/airflow/values.yaml), then keyword overrides.

        LEADRE_K8S_NAMESPACE, _IMAGE, _GPU_IMAGE, _IMAGE_PULL_POLICY, _SERVICE_ACCOUNT, _ARTIFACTS_PVC, _PARAMS_FILE,
        _MLFLOW_SECRET, _STORE_SECRET: strings; _GPU_STEPS: comma-separated step names (empty: no GPU step);
        _GPU_NODE_SELECTOR: comma-separated key=value pairs (empty: no selector).
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in ("namespace", "image", "gpu_image", "image_pull_policy", "service_account", "artifacts_pvc",
                     "params_file", "mlflow_secret", "store_secret"):
            value = environ.get(f"LEADRE_K8S_{name.upper()}")
            if value:
                values[name] = value
        if "LEADRE_K8S_GPU_STEPS" in environ:
            values["gpu_steps"] = frozenset(s.strip() for s in environ["LEADRE_K8S_GPU_STEPS"].split(",") if s.strip())
        if "LEADRE_K8S_GPU_NODE_SELECTOR" in environ:
            values["gpu_node_selector"] = _parse_pairs(environ["LEADRE_K8S_GPU_NODE_SELECTOR"])
        values.update(overrides)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.training_gpus < 1:
            raise ValueError(f"training_gpus must be at least 1, got {self.training_gpus}")
        unknown = sorted(set(self.gpu_steps) - set(STEPS))
        if unknown:
            raise ValueError(f"gpu_steps names unknown steps {unknown}; known: {', '.join(STEPS)}")
        for folder in self.state_dirs:
            if not folder or "/" in folder or folder in {".", ".."}:
                raise ValueError(f"state_dirs entries are single folder names under mount_path, got {folder!r}")

    def with_(self, **changes: Any) -> KubernetesRunnerSettings:
        """A copy with some fields changed (the dataclass is frozen)."""
        return replace(self, **changes)


def _parse_pairs(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected key=value in {text!r}, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def _known(step: str) -> None:
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; known: {', '.join(STEPS)}")


def is_gpu_step(step: str, settings: KubernetesRunnerSettings | None = None) -> bool:
    _known(step)
    return step in (settings or KubernetesRunnerSettings()).gpu_steps


def step_arguments(step: str, settings: KubernetesRunnerSettings | None = None,
                   extra_args: Sequence[str] = ()) -> list[str]:
    """The arguments after `leadre`: global options first, then the step's subcommand and any extra options."""
    _known(step)
    settings = settings or KubernetesRunnerSettings()
    return ["--params", settings.params_file, *STEPS[step].command, *extra_args]


def shard_arguments(step: str, shards: int, settings: KubernetesRunnerSettings | None = None) -> list[list[str]]:
    """The arguments of a shardable step's `shards` pods, one per shard (`--shard i/n`); the merge pod runs the
    step's own arguments plus `--merge n`. Every shard pod is the step's pod otherwise (GPU or not, volumes)."""
    if not STEPS[step].merge:
        raise ValueError(f"step {step!r} is not shardable (leadre/steps.py: no merge)")
    return [step_arguments(step, settings, ("--shard", f"{i}/{shards}")) for i in range(shards)]


def pod_operator_kwargs(step: str, settings: KubernetesRunnerSettings | None = None, *,
                        extra_args: Sequence[str] = (), extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for `KubernetesPodOperator(task_id=..., **kwargs)` running one pipeline step.

    Values are Kubernetes client models (V1ResourceRequirements, V1Volume, ...), as the operator expects.
    `extra_args` are appended to the step's CLI arguments (e.g. ["--resume"]); `extra_env` adds or replaces
    environment variables (Jinja templates such as "{{ run_id }}" are rendered by Airflow).
    """
    from kubernetes.client import models as k8s

    _known(step)
    settings = settings or KubernetesRunnerSettings()
    settings.check()
    gpu = step in settings.gpu_steps
    pod_class = pod_resources(step, settings)
    limits = dict(pod_class.limits)
    if gpu:
        # Extended resources are limits only: Kubernetes sets the request equal to the limit.
        limits[settings.gpu_resource] = str(gpus_per_pod(step, settings))

    volumes = [
        k8s.V1Volume(name=ARTIFACTS_VOLUME, persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=settings.artifacts_pvc)),
        k8s.V1Volume(name=TMP_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=settings.tmp_size_limit)),
    ]
    mount_root = settings.mount_path.rstrip("/")
    volume_mounts = [k8s.V1VolumeMount(name=ARTIFACTS_VOLUME, mount_path=f"{mount_root}/{folder}", sub_path=folder)
                     for folder in settings.state_dirs]
    volume_mounts.append(k8s.V1VolumeMount(name=TMP_VOLUME, mount_path="/tmp"))
    if gpu:
        volumes.append(k8s.V1Volume(name=SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(
            medium="Memory", size_limit=settings.gpu_shm_size_limit)))
        volume_mounts.append(k8s.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm"))

    env = {**settings.env, **(extra_env or {})}
    kwargs: dict[str, Any] = {
        "name": f"leadre-{step}",
        "namespace": settings.namespace,
        "image": (settings.gpu_image or settings.image) if gpu else settings.image,
        "image_pull_policy": settings.image_pull_policy,
        "cmds": step_command(step, settings),
        "arguments": step_arguments(step, settings, extra_args),
        "labels": {**settings.labels, "leadre.io/step": step},
        "container_resources": k8s.V1ResourceRequirements(requests=dict(pod_class.requests), limits=limits),
        "volumes": volumes,
        "volume_mounts": volume_mounts,
        "env_vars": [k8s.V1EnvVar(name=name, value=value) for name, value in env.items()],
        "env_from": [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=secret))
                     for secret in (settings.mlflow_secret, settings.store_secret) if secret],
        "service_account_name": settings.service_account,
        "automount_service_account_token": False,
        "security_context": k8s.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=settings.run_as_user, run_as_group=settings.run_as_group,
            fs_group=settings.fs_group, fs_group_change_policy="OnRootMismatch",
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
        "container_security_context": k8s.V1SecurityContext(
            run_as_non_root=True, run_as_user=settings.run_as_user, run_as_group=settings.run_as_group,
            allow_privilege_escalation=False, read_only_root_filesystem=settings.read_only_root_filesystem,
            capabilities=k8s.V1Capabilities(drop=["ALL"])),
        "node_selector": dict(settings.gpu_node_selector) if gpu else {},
        "tolerations": [k8s.V1Toleration(**_snake(t)) for t in settings.gpu_tolerations] if gpu else [],
        "image_pull_secrets": [k8s.V1LocalObjectReference(name=s) for s in settings.image_pull_secrets] or None,
        "get_logs": True,
        "log_events_on_failure": True,
        "on_finish_action": "delete_pod",
        "startup_timeout_seconds": settings.startup_timeout_seconds,
    }
    return kwargs


# ------------------------------------------------------------------------------------------ training pods

# The steps that train (leadre/train): the ones a launcher runs as N data-parallel processes.
TRAINING_STEPS = frozenset(name for name, step in STEPS.items() if step.function.startswith("leadre.train."))
RENDEZVOUS_PORT = 29500  # torchrun's default master port
TRAINING_WORKER_LABEL = {"leadre.io/role": "training-worker"}  # k8s/base/training.yaml lets these talk to each other


def training_processes(step: str, settings: KubernetesRunnerSettings) -> int:
    """Processes (= GPUs) one pod of `step` runs: `training_gpus` for sft/dpo on a GPU pod, else 1."""
    return settings.training_gpus if step in TRAINING_STEPS and step in settings.gpu_steps else 1


def gpus_per_pod(step: str, settings: KubernetesRunnerSettings) -> int:
    return settings.training_gpus if step in TRAINING_STEPS else settings.gpu_count


def pod_resources(step: str, settings: KubernetesRunnerSettings) -> PodResources:
    """CPU pods, GPU pods, and training pods with N GPUs: N times a GPU pod's CPU and memory, since each process
    has its own data loader, tokenised batches and host copy of the model."""
    if step not in settings.gpu_steps:
        return settings.cpu_pod
    n = training_processes(step, settings)
    pod = settings.gpu_pod
    return PodResources(requests={k: _times(v, n) for k, v in pod.requests.items()},
                        limits={k: _times(v, n) for k, v in pod.limits.items()})


def _times(quantity: str, n: int) -> str:
    """A Kubernetes quantity times n: "32Gi" × 2 → "64Gi", "4" × 2 → "8", "500m" × 2 → "1000m"."""
    if n == 1:
        return quantity
    number = re.match(r"^(\d+(?:\.\d+)?)(.*)$", quantity)
    if number is None:
        raise ValueError(f"cannot scale the Kubernetes quantity {quantity!r}")
    value = float(number.group(1)) * n
    return f"{int(value) if value.is_integer() else value}{number.group(2)}"


def step_command(step: str, settings: KubernetesRunnerSettings, *, nodes: int = 1,
                 master_addr: str | None = None) -> list[str]:
    """The container command before `step_arguments`: `leadre`, or torchrun starting one `leadre` per GPU.

    One node: `--standalone` (torchrun's own rendezvous on localhost). Several nodes (an indexed Job, see
    `training_job`): each pod is node `$JOB_COMPLETION_INDEX` and pod 0 the rendezvous address; the ranks
    of pod 0 include global rank 0, the one that writes the model and the MLflow run.
    """
    processes = training_processes(step, settings)
    if processes == 1 and nodes == 1:
        return ["leadre"]
    if nodes == 1:
        where = ["--standalone"]
    else:
        where = [f"--nnodes={nodes}", "--node_rank=$(JOB_COMPLETION_INDEX)", f"--master_addr={master_addr}",
                 f"--master_port={RENDEZVOUS_PORT}"]
    return ["torchrun", f"--nproc_per_node={processes}", *where, "--no-python", "leadre"]


def training_job(step: str, nodes: int, settings: KubernetesRunnerSettings | None = None, *,
                 name: str | None = None, retrain_id: str | None = None) -> list[dict[str, Any]]:
    """A multi-node run of sft or dpo: a headless Service and an Indexed Job of `nodes` pods with
    `training_gpus` GPUs each (docs/scaling.md, "Multi-process training", says why not a PyTorchJob).

    Each pod is the step's pod as `render_pod` builds it, made a worker: the indexed Job gives pod i the hostname
    `<job>-i` and the completion index i; the Service (`subdomain`) makes `<job>-0.<service>` resolvable, the
    rendezvous address of torchrun's static rendezvous. `retrain_id` names the MLflow parent run (none: a fresh
    one; the step pods' "{{ run_id }}" is an Airflow template, unrendered outside a DAG). `backoffLimit: 0`: a lost worker breaks the collective, so
    the whole run fails and the DAG's retry restarts it (`leadre sft --resume` picks up the last checkpoint).
    """
    if step not in TRAINING_STEPS:
        raise ValueError(f"{step!r} is no training step; multi-node jobs run {', '.join(sorted(TRAINING_STEPS))}")
    if nodes < 2:
        raise ValueError(f"a multi-node job needs at least 2 nodes, got {nodes} (one node: the step's own pod)")
    settings = settings or KubernetesRunnerSettings()
    name = name or f"leadre-{step}-{nodes}x{settings.training_gpus}"
    pod = render_pod(step, settings)
    # without the operator's bookkeeping labels (airflow_version, ...): these pods are the Job's, not a task's
    labels = {**{k: v for k, v in pod["metadata"]["labels"].items() if not k.startswith("airflow_")},
              **TRAINING_WORKER_LABEL, "leadre.io/training-job": name}
    spec = pod["spec"]
    container = spec["containers"][0]
    container["command"] = step_command(step, settings, nodes=nodes, master_addr=f"{name}-0.{name}")
    env = [e for e in container.get("env", []) if e["name"] != "LEADRE_RETRAIN_ID"]
    if retrain_id:
        env.append({"name": "LEADRE_RETRAIN_ID", "value": retrain_id})
    container["env"] = [*env, {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]
    container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
    spec["subdomain"] = name
    metadata = {"name": name, "namespace": settings.namespace, "labels": labels}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": {
        "clusterIP": "None", "selector": {"leadre.io/training-job": name},
        # DNS records before the pods are ready: the workers look each other up while they start
        "publishNotReadyAddresses": True,
        "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}]}}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": {
        "completionMode": "Indexed", "completions": nodes, "parallelism": nodes, "backoffLimit": 0,
        "ttlSecondsAfterFinished": 7 * 24 * 3600,
        "template": {"metadata": {"labels": labels}, "spec": spec}}}
    return [service, job]


def _snake(toleration: Mapping[str, Any]) -> dict[str, Any]:
    """{"tolerationSeconds": 60} → {"toleration_seconds": 60}: manifests use camelCase, the client snake_case."""
    names = {"tolerationSeconds": "toleration_seconds"}
    return {names.get(key, key): value for key, value in toleration.items()}


def render_pod(step: str, settings: KubernetesRunnerSettings | None = None, *, task_id: str | None = None,
               extra_args: Sequence[str] = (), extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The pod manifest (a plain dict, camelCase as `kubectl` shows it) that the step's operator would create.

    Builds the real `KubernetesPodOperator` with a placeholder kubeconfig and calls its
    `build_pod_request_obj()`: no cluster is contacted. Airflow templates (e.g. "{{ run_id }}") stay unrendered.
    Imports Airflow (seconds): meant for tests, `kubectl apply --dry-run` and debugging, not for DAG parsing.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import ApiClient

    kwargs = pod_operator_kwargs(step, settings, extra_args=extra_args, extra_env=extra_env)
    with tempfile.TemporaryDirectory(prefix="leadre-kubeconfig-") as folder:
        config = Path(folder) / "config"
        config.write_text(_PLACEHOLDER_KUBECONFIG, encoding="utf-8")
        operator = KubernetesPodOperator(task_id=task_id or step, config_file=str(config), in_cluster=False,
                                         **kwargs)
        pod = operator.build_pod_request_obj()
    return ApiClient().sanitize_for_serialization(pod)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m leadre.orchestration.pods training-job sft --nodes 2 --gpus 8 | kubectl apply -f -`"""
    import argparse

    import yaml

    parser = argparse.ArgumentParser(prog="python -m leadre.orchestration.pods", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    job = commands.add_parser("training-job", help="a multi-node sft/dpo run: headless Service + Indexed Job (YAML)")
    job.add_argument("step", choices=sorted(TRAINING_STEPS))
    job.add_argument("--nodes", type=int, required=True, help="pods, one per node")
    job.add_argument("--gpus", type=int, default=1, help="GPUs (= training processes) per pod")
    job.add_argument("--retrain-id", help="the MLflow parent run's retrain id (default: a fresh one)")
    args = parser.parse_args(argv)
    settings = KubernetesRunnerSettings.from_env(training_gpus=args.gpus)
    with contextlib.redirect_stdout(sys.stderr):  # Airflow logs to stdout; stdout is for kubectl
        docs = training_job(args.step, args.nodes, settings, retrain_id=args.retrain_id)
    print(yaml.safe_dump_all(docs, sort_keys=False), end="")


if __name__ == "__main__":
    main()
