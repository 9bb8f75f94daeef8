"""Deployment files, checked without a cluster: no Kubernetes runs in CI, so the kustomize overlays and the pods
the pipeline steps create are validated against the Kubernetes OpenAPI schemas offline (kubernetes-validate,
strict: unknown or misspelt fields fail too), then checked for what users rely on: requests and limits and a
non-root user everywhere, GPU only where intended, no secret values in the base. The Dockerfiles cannot be built
here (no Docker daemon, no registry), so they are parsed and their entrypoint script is run.
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from leadre.orchestration import pods
from leadre.steps import STEPS

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("local", "prod")
KUBECTL = shutil.which("kubectl")
# The newest Kubernetes version whose schemas kubernetes-validate 1.37.0 bundles; it validates offline.
K8S_VERSION = "1.37.0"
GPU = "nvidia.com/gpu"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: cannot build the kustomizations")


# ---------------------------------------------------------------------------------------------------- helpers

def kustomize(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {path.relative_to(REPO)} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    kind = doc["kind"]
    if kind == "Pod":
        return doc["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in WORKLOAD_KINDS:
        return doc["spec"]["template"]["spec"]
    return None


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers") or []
    yield from spec["containers"]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def schema_errors(validator, docs: list[dict[str, Any]]) -> list[str]:
    errors = []
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            validator.validate(doc, K8S_VERSION, strict=True)
        except validator.ValidationError as err:
            errors.append(f"{where}: {'.'.join(map(str, err.path))}: {err.message}")
        except (validator.SchemaNotFoundError, validator.InvalidSchemaError) as err:
            errors.append(f"{where}: {err.message}")
    return errors


@pytest.fixture(scope="module")
def validator():
    return pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed "
                               "(pip install kubernetes-validate==1.37.0): cannot check the Kubernetes schemas")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: cannot build the kustomizations")
    return {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS} | {"base": kustomize(K8S / "base")}


@pytest.fixture(scope="module")
def airflow_values() -> dict[str, Any]:
    return yaml.safe_load((K8S / "airflow" / "values.yaml").read_text(encoding="utf-8"))


# A child process renders every step's pod through the real KubernetesPodOperator: importing Airflow in the test
# process would fix its configuration (AIRFLOW_HOME) for every later test.
_RENDER = """
import inspect, json, sys
import leadre.orchestration.pods as pods
from leadre.steps import STEPS
heavy = sorted(m for m in ("airflow", "kubernetes", "torch", "mlflow") if m in sys.modules)
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
accepted = set(inspect.signature(KubernetesPodOperator.__init__).parameters)
unknown = sorted(set().union(*(pods.pod_operator_kwargs(s) for s in STEPS)) - accepted)
rendered = {step: pods.render_pod(step) for step in STEPS}
four_gpus = pods.KubernetesRunnerSettings(training_gpus=4)
training = {"pods": {step: pods.render_pod(step, four_gpus) for step in ("sft", "dpo", "nearline")},
            "job": pods.training_job("sft", 3, four_gpus, retrain_id="weekly-42")}
print(json.dumps({"heavy_imports": heavy, "unknown_kwargs": unknown, "pods": rendered, "training": training}))
"""


@pytest.fixture(scope="module")
def step_pods(tmp_path_factory) -> dict[str, Any]:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path_factory.mktemp("airflow_home"))}
    result = subprocess.run([sys.executable, "-c", _RENDER], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- kustomize + schema

@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_the_kubernetes_schemas(rendered, validator, overlay):
    docs = rendered[overlay]
    assert schema_errors(validator, docs) == []
    versions = {(d["apiVersion"], d["kind"]) for d in docs}
    assert ("autoscaling/v2", "HorizontalPodAutoscaler") in versions
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim", "StatefulSet",
            "Deployment", "Service", "CronJob", "PodDisruptionBudget"} <= {kind for _, kind in versions}
    assert {d["metadata"].get("namespace", "leadre") for d in docs} == {"leadre"}
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "leadre" for d in docs)


def test_the_schema_check_rejects_typos_and_wrong_types(validator):
    # strict schemas: a misspelt field is an error (non-strict validation would let it through)
    typo = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i", "readinesProbe": {}}]}}}}
    wrong_type = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
                  "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": "ten"}}
    unknown_kind = {"apiVersion": "v1", "kind": "Deploymnet", "metadata": {"name": "x"}}
    errors = schema_errors(validator, [typo, wrong_type, unknown_kind])
    assert len(errors) == 3
    assert "readinesProbe" in errors[0] and "'ten' is not of type 'integer'" in errors[1]


# ------------------------------------------------------------------------------------- what users rely on

@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_limits_and_runs_as_non_root(rendered, overlay):
    checked = 0
    for doc in rendered[overlay]:
        spec = pod_spec(doc)
        if spec is None:
            continue
        pod_sc = spec.get("securityContext") or {}
        for container in containers(spec):
            where = f"{overlay} {doc['kind']}/{doc['metadata']['name']} container {container['name']}"
            resources = container.get("resources") or {}
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part) or {}), f"{where}: no cpu/memory {part}"
            effective = {**pod_sc, **(container.get("securityContext") or {})}
            assert effective.get("runAsNonRoot") is True, f"{where}: runAsNonRoot is not set"
            assert effective.get("runAsUser", 1) != 0, f"{where}: runs as uid 0"
            sc = container.get("securityContext") or {}
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            checked += 1
    assert checked >= 5


@needs_kubectl
def test_prod_nearline_requests_a_gpu_and_local_does_not(rendered):
    prod = pod_spec(find(rendered["prod"], "CronJob", "leadre-nearline"))
    assert prod["containers"][0]["resources"]["limits"][GPU] == "1"
    assert prod["containers"][0]["image"].endswith("/leadre-cuda:0.1.0")
    assert prod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in prod["tolerations"]

    local_cron = find(rendered["local"], "CronJob", "leadre-nearline")
    local = pod_spec(local_cron)
    assert GPU not in local["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in local and "tolerations" not in local
    assert local_cron["spec"]["suspend"] is True
    # nothing in the local overlay asks for a GPU
    for doc in rendered["local"]:
        spec = pod_spec(doc)
        for container in containers(spec) if spec else ():
            assert GPU not in json.dumps(container.get("resources", {})), doc["metadata"]["name"]


@needs_kubectl
def test_no_secret_values_in_the_base(rendered):
    base = rendered["base"]
    assert not [d for d in base if d["kind"] == "Secret"]
    assert not [d for d in rendered["prod"] if d["kind"] == "Secret"], "production Secrets are created out of band"
    text = json.dumps(base)
    assert not re.search(r"://[^/\s\"@:]+:[^@\s\"/]+@", text), "a URL with credentials in the base"
    sensitive = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|STORE_URI")
    for doc in base:
        spec = pod_spec(doc)
        for container in containers(spec) if spec else ():
            for env in container.get("env") or []:
                if sensitive.search(env["name"]):
                    assert "valueFrom" in env and "value" not in env, f"{doc['metadata']['name']}: {env['name']}"
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text(encoding="utf-8"))
    assert "secretGenerator" not in kustomization


@needs_kubectl
def test_local_overlay_generates_every_secret_it_references(rendered, airflow_values):
    docs = rendered["local"]
    generated = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    referenced = set(re.findall(r'"secretRef": \{"name": "([^"]+)"', json.dumps(docs)))
    referenced |= set(re.findall(r'"secretKeyRef": \{"key": "[^"]+", "name": "([^"]+)"', json.dumps(docs)))
    referenced |= set(re.findall(r'"secretName": "([^"]+)"', json.dumps(docs)))  # Secrets mounted as files
    assert referenced and referenced <= generated
    settings = pods.KubernetesRunnerSettings()
    assert {settings.mlflow_secret, settings.store_secret, airflow_values["data"]["metadataSecretName"]} <= generated
    # fixed names: the step pods and the Helm chart refer to them from outside kustomize
    assert all(not re.search(r"-[a-z0-9]{10}$", name) for name in generated)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_online_service_probes_autoscaling_and_env(rendered, overlay):
    docs = rendered[overlay]
    deployment = find(docs, "Deployment", "leadre-serve")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    container = pod_spec(deployment)["containers"][0]
    assert container["command"] + container["args"] == ["leadre", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"name": "http", "containerPort": 8000} in container["ports"]
    assert {e["secretRef"]["name"] for e in container["envFrom"]} == {"leadre-mlflow", "leadre-store"}
    admin = next(e for e in container["env"] if e["name"] == "LEADRE_ADMIN_API_KEY")
    assert admin["valueFrom"]["secretKeyRef"]["name"] == "leadre-admin"
    hpa = find(docs, "HorizontalPodAutoscaler", "leadre-serve")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "leadre-serve"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    service = find(docs, "Service", "leadre-serve")
    assert service["spec"]["ports"][0]["port"] == 8000


@needs_kubectl
def test_mlflow_server_stores_runs_in_postgres_and_artifacts_on_a_volume_or_s3(rendered):
    for overlay, destination in (("local", "/mlflow-artifacts"), ("prod", "s3://")):
        docs = rendered[overlay]
        container = pod_spec(find(docs, "Deployment", "leadre-mlflow"))["containers"][0]
        args = container["command"] + container["args"]
        assert args[:2] == ["mlflow", "server"]
        for flag in ("--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)", "--serve-artifacts", "--host=0.0.0.0",
                     "--port=5000", "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)",
                     "--allowed-hosts=$(MLFLOW_SERVER_ALLOWED_HOSTS)"):
            assert flag in args, f"{overlay}: {flag}"
        assert {"secretRef": {"name": "leadre-mlflow-server"}} in container["envFrom"]
        config = find(docs, "ConfigMap", "leadre-mlflow-config")["data"]
        assert config["MLFLOW_ARTIFACTS_DESTINATION"].startswith(destination)
        # MLflow 3 answers 403 to Host headers it does not allow; clients use the Service name
        assert "leadre-mlflow:*" in config["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert any(d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "leadre-mlflow-artifacts"
               for d in rendered["local"])
    assert not any(d["metadata"]["name"] == "leadre-mlflow-artifacts" for d in rendered["prod"])


def secret_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in find(docs, "Secret", name)["data"].items()}


def env_from_secret(container: dict[str, Any], name: str) -> tuple[str, str]:
    """(Secret, key) an environment variable of `container` is read from."""
    ref = next(e for e in container["env"] if e["name"] == name)["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server_requires_a_login_with_credentials_from_a_secret(rendered, overlay):
    deployment = find(rendered[overlay], "Deployment", "leadre-mlflow")
    spec = pod_spec(deployment)
    container = spec["containers"][0]
    assert "--app-name=basic-auth" in container["args"], "MLflow answers anyone who reaches it"
    for variable, key in (("MLFLOW_AUTH_ADMIN_USERNAME", "admin-username"),
                          ("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-password"),
                          ("MLFLOW_FLASK_SERVER_SECRET_KEY", "flask-secret-key")):
        assert env_from_secret(container, variable) == ("leadre-mlflow-auth", key)
    # the auth app's own settings (its user database URI holds a password): a file from the same Secret
    config = next(e["value"] for e in container["env"] if e["name"] == "MLFLOW_AUTH_CONFIG_PATH")
    mount = next(m for m in container["volumeMounts"] if config.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "leadre-mlflow-auth" and mount["readOnly"] is True
    assert {"key": "basic_auth.ini", "path": Path(config).name} in volume["secret"]["items"]


@needs_kubectl
def test_local_mlflow_auth_secret_is_complete_and_clients_log_in(rendered):
    docs = rendered["local"]
    auth = secret_data(docs, "leadre-mlflow-auth")
    ini = configparser.ConfigParser()
    ini.read_string(auth["basic_auth.ini"])
    # users and permissions in Postgres: every replica sees the same, and a restart loses none
    assert ini["mlflow"]["database_uri"].startswith("postgresql://")
    assert ini["mlflow"]["default_permission"] in {"READ", "NO_PERMISSIONS"}
    assert auth["admin-password"] and auth["flask-secret-key"]
    clients = secret_data(docs, "leadre-mlflow")
    assert (clients["MLFLOW_TRACKING_USERNAME"], clients["MLFLOW_TRACKING_PASSWORD"]) == (
        auth["admin-username"], auth["admin-password"])


def test_mlflow_image_starts_the_authenticated_server():
    cmd = next(args for op, args in dockerfile_instructions(REPO / "mlflow" / "Dockerfile") if op == "CMD")
    assert '"--app-name", "basic-auth"' in cmd


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_requires_the_password_the_clients_get(rendered, overlay):
    docs = rendered[overlay]
    container = pod_spec(find(docs, "Deployment", "leadre-redis"))["containers"][0]
    args = container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    # the same key of the Secret the clients' environment comes from (LEADRE_REDIS_PASSWORD, read by the store)
    assert env_from_secret(container, "REDIS_PASSWORD") == ("leadre-store", "LEADRE_REDIS_PASSWORD")
    assert env_from_secret(container, "REDISCLI_AUTH") == ("leadre-store", "LEADRE_REDIS_PASSWORD")  # the probe
    serve = pod_spec(find(docs, "Deployment", "leadre-serve"))["containers"][0]
    assert {"secretRef": {"name": "leadre-store"}} in serve["envFrom"]
    if overlay == "local":
        store = secret_data(docs, "leadre-store")
        assert store["LEADRE_REDIS_PASSWORD"] and "@" not in store["LEADRE_STORE_URL"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"the test evaluates matchLabels only: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def reachable(policies: list[dict[str, Any]], source: dict[str, str], target: dict[str, str], port: int) -> bool:
    """Whether NetworkPolicies (this namespace, pod selectors and ports only) let `source` pods reach `target`."""
    applying = [p for p in policies if _selects(p["spec"]["podSelector"], target)
                and "Ingress" in p["spec"]["policyTypes"]]
    if not applying:
        return True
    for policy in applying:
        for rule in policy["spec"].get("ingress") or []:
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port for p in ports):
                continue
            peers = rule.get("from")
            if not peers or any("podSelector" in peer and "namespaceSelector" not in peer
                                and _selects(peer["podSelector"], source) for peer in peers):
                return True
    return False


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_open_only_what_each_pod_needs(rendered, overlay):
    docs = rendered[overlay]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert any(p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"]
               and not p["spec"].get("ingress") for p in policies), "no default deny"

    def labels(kind: str, name: str) -> dict[str, str]:
        doc = find(docs, kind, name)
        template = doc["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else doc["spec"]
        return template["template"]["metadata"]["labels"]

    mlflow, redis, postgres = (labels("Deployment", "leadre-mlflow"), labels("Deployment", "leadre-redis"),
                               labels("StatefulSet", "leadre-postgres"))
    serve, nearline = labels("Deployment", "leadre-serve"), labels("CronJob", "leadre-nearline")
    steps = [{**pods.KubernetesRunnerSettings().labels, "leadre.io/step": step} for step in STEPS]
    stranger = {"app": "debug-shell"}  # any other pod in the namespace

    for pipeline in [nearline, *steps]:
        assert reachable(policies, pipeline, mlflow, 5000) and reachable(policies, pipeline, redis, 6379)
    assert reachable(policies, serve, redis, 6379)
    assert reachable(policies, serve, mlflow, 5000)  # the champion alias it follows
    assert reachable(policies, mlflow, postgres, 5432)
    assert reachable(policies, stranger, serve, 8000)  # the online API is the service's front door
    for source, target, port in ((stranger, mlflow, 5000), (stranger, redis, 6379), (stranger, postgres, 5432),
                                 (serve, postgres, 5432), (redis, mlflow, 5000), (mlflow, redis, 6379),
                                 (stranger, serve, 9999)):
        assert not reachable(policies, source, target, port), (source, target, port)


@needs_kubectl
def test_artifacts_volume_is_rwx_in_prod_and_rwo_on_a_laptop(rendered):
    assert find(rendered["prod"], "PersistentVolumeClaim", "leadre-artifacts")["spec"]["accessModes"] == [
        "ReadWriteMany"]
    assert find(rendered["local"], "PersistentVolumeClaim", "leadre-artifacts")["spec"]["accessModes"] == [
        "ReadWriteOnce"]


@needs_kubectl
def test_airflow_workers_may_launch_and_watch_step_pods(rendered, airflow_values):
    docs = rendered["prod"]
    rules = find(docs, "Role", "leadre-pod-launcher")["rules"]
    verbs = {resource: set(rule["verbs"]) for rule in rules for resource in rule["resources"]}
    assert {"create", "get", "list", "watch", "delete"} <= verbs["pods"]
    assert "get" in verbs["pods/log"]
    binding = find(docs, "RoleBinding", "leadre-pod-launcher")
    subject = binding["subjects"][0]
    assert (subject["kind"], subject["namespace"]) == ("ServiceAccount", "leadre")
    assert airflow_values["workers"]["kubernetes"]["serviceAccount"] == {"create": False, "name": subject["name"]}
    find(docs, "ServiceAccount", subject["name"])
    # the step pods' own identity has no API access
    workload = find(docs, "ServiceAccount", pods.KubernetesRunnerSettings().service_account)
    assert workload["automountServiceAccountToken"] is False


def test_airflow_values_use_the_kubernetes_executor_and_the_leadre_image(airflow_values):
    values = airflow_values
    assert values["executor"] == "KubernetesExecutor"
    assert values["images"]["airflow"]["repository"] == "leadre"
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["LEADRE_RUNNER"] == "kubernetes"
    assert env["MLFLOW_TRACKING_URI"] == "http://leadre-mlflow:5000"
    settings = pods.KubernetesRunnerSettings.from_env(env)
    assert (settings.namespace, settings.service_account, settings.artifacts_pvc) == (
        "leadre", "leadre-workload", "leadre-artifacts")
    assert settings.gpu_steps == frozenset()  # the values target a laptop cluster
    assert values["uid"] == 10001 and values["postgresql"]["enabled"] is False
    dags = values["config"]["core"]["dags_folder"]
    assert dags == "/workspace/dags" and "COPY dags/ dags/" in (REPO / "docker" / "Dockerfile").read_text()
    assert values["config"]["core"]["auth_manager"].endswith("SimpleAuthManager")  # no FAB provider in the image


@needs_kubectl
def test_the_nearline_cronjob_runs_the_pod_pods_py_renders(rendered):
    spec = pod_spec(find(rendered["base"], "CronJob", "leadre-nearline"))
    container = spec["containers"][0]
    kwargs = pods.pod_operator_kwargs("nearline")
    assert container["command"] == kwargs["cmds"] and container["args"] == kwargs["arguments"]
    assert [(m["mountPath"], m.get("subPath")) for m in container["volumeMounts"]] == [
        (m.mount_path, m.sub_path) for m in kwargs["volume_mounts"]]
    assert container["resources"]["limits"] == kwargs["container_resources"].limits
    assert spec["nodeSelector"] == kwargs["node_selector"]
    assert spec["serviceAccountName"] == kwargs["service_account_name"]


# -------------------------------------------------------------------------------------------------- pods.py

def test_pods_module_is_light_and_passes_only_arguments_the_operator_accepts(step_pods):
    assert step_pods["heavy_imports"] == []
    assert step_pods["unknown_kwargs"] == []


def test_every_step_pod_validates_against_the_pod_schema(step_pods, validator):
    rendered = step_pods["pods"]
    assert set(rendered) == set(STEPS)
    assert schema_errors(validator, list(rendered.values())) == []


@pytest.mark.parametrize("step", STEPS)
def test_step_pod_runs_the_step_non_root_on_the_shared_volume(step_pods, step):
    pod = step_pods["pods"][step]
    assert pod["metadata"]["namespace"] == "leadre" and pod["metadata"]["name"].startswith(f"leadre-{step}-")
    assert pod["metadata"]["labels"]["leadre.io/step"] == step
    spec = pod["spec"]
    container = spec["containers"][0]
    assert container["command"] == ["leadre"]
    assert container["args"] == ["--params", "/workspace/params.yaml", *STEPS[step].command]
    assert spec["restartPolicy"] == "Never" and spec["serviceAccountName"] == "leadre-workload"
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in spec["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"artifacts": "leadre-artifacts"}
    mounts = {m["mountPath"]: m.get("subPath") for m in container["volumeMounts"] if m["name"] == "artifacts"}
    assert mounts == {"/workspace/data": "data", "/workspace/artifacts": "artifacts", "/workspace/reports": "reports"}
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"mountPath": "/tmp", "name": "tmp"} in container["volumeMounts"]
    assert {e["secretRef"]["name"] for e in container["envFrom"]} == {"leadre-mlflow", "leadre-store"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LEADRE_RETRAIN_ID"] == "{{ run_id }}" and env["HOME"] == "/tmp"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) <= set(container["resources"]["limits"])


@pytest.mark.parametrize("step", STEPS)
def test_gpu_steps_get_a_gpu_node_and_cpu_steps_do_not(step_pods, step):
    spec = step_pods["pods"][step]["spec"]
    limits = spec["containers"][0]["resources"]["limits"]
    if step in {"sft", "dpo", "nearline"}:
        assert limits[GPU] == "1"
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert spec["tolerations"] == [{"effect": "NoSchedule", "key": GPU, "operator": "Exists"}]
        assert any(v["name"] == "dshm" and v["emptyDir"]["medium"] == "Memory" for v in spec["volumes"])
    else:
        assert GPU not in limits
        assert not spec.get("nodeSelector") and not spec.get("tolerations")


def test_training_pods_ask_for_n_gpus_and_launch_n_processes(step_pods, validator):
    rendered = step_pods["training"]["pods"]
    assert schema_errors(validator, list(rendered.values())) == []
    one_gpu = step_pods["pods"]["sft"]["spec"]["containers"][0]["resources"]
    for step in ("sft", "dpo"):
        container = rendered[step]["spec"]["containers"][0]
        assert container["command"] == ["torchrun", "--nproc_per_node=4", "--standalone", "--no-python", "leadre"]
        assert container["args"] == ["--params", "/workspace/params.yaml", step]  # the DAG's -S go in here
        resources = container["resources"]
        assert resources["limits"][GPU] == "4"
        # four processes: four data loaders and four host copies of the model (one GPU: 4 CPUs, 32Gi)
        assert one_gpu["requests"] == {"cpu": "4", "memory": "32Gi"}
        assert resources["requests"] == {"cpu": "16", "memory": "128Gi"}
    nearline = rendered["nearline"]["spec"]["containers"][0]
    assert nearline["command"] == ["leadre"] and nearline["resources"]["limits"][GPU] == "1"


def test_the_dag_gives_training_pods_the_gpus_params_yaml_asks_for():
    from leadre.orchestration import dag_support as ds

    base = ds.load_settings(REPO / "params.yaml", environ={})
    assert base.gpus_per_training_pod == 1
    settings = base.model_copy(update={"gpus_per_training_pod": 2})
    kwargs = ds.pod_task_kwargs("sft", settings, pods.KubernetesRunnerSettings())
    assert kwargs["cmds"][:2] == ["torchrun", "--nproc_per_node=2"]
    assert kwargs["container_resources"].limits[GPU] == "2"
    assert ds.pod_task_kwargs("evaluate", settings, pods.KubernetesRunnerSettings())["cmds"] == ["leadre"]
    with pytest.raises(ValueError, match="training_gpus"):
        pods.KubernetesRunnerSettings(training_gpus=0).check()


def test_multi_node_training_is_an_indexed_job_behind_a_headless_service(step_pods, validator):
    service, job = step_pods["training"]["job"]
    assert schema_errors(validator, [service, job]) == []
    name = job["metadata"]["name"]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["backoffLimit"] == 0  # one lost worker breaks the collective: fail, and let the DAG retry
    pod = spec["template"]["spec"]
    # pod i is <job>-i.<service>: the Service is headless, selects exactly these pods and is the pods' subdomain
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["template"]["metadata"]["labels"]["leadre.io/role"] == "training-worker"
    assert not [key for key in spec["template"]["metadata"]["labels"] if key.startswith("airflow")]
    container = pod["containers"][0]
    assert container["command"] == [
        "torchrun", "--nproc_per_node=4", "--nnodes=3", "--node_rank=$(JOB_COMPLETION_INDEX)",
        f"--master_addr={name}-0.{service['metadata']['name']}", "--master_port=29500", "--no-python", "leadre"]
    env = {e["name"]: e for e in container["env"]}
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    assert env["LEADRE_RETRAIN_ID"]["value"] == "weekly-42"  # no unrendered Airflow template outside a DAG
    assert container["args"] == ["--params", "/workspace/params.yaml", "sft"]
    assert container["resources"]["limits"][GPU] == "4" and pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["restartPolicy"] == "Never" and container["securityContext"]["readOnlyRootFilesystem"] is True
    with pytest.raises(ValueError, match="no training step"):
        pods.training_job("evaluate", 2)
    with pytest.raises(ValueError, match="at least 2 nodes"):
        pods.training_job("sft", 1)


@needs_kubectl
def test_training_workers_reach_each_other_on_any_port_and_nobody_else_reaches_them(rendered):
    policies = [d for d in rendered["prod"] if d["kind"] == "NetworkPolicy"]
    worker = {**pods.KubernetesRunnerSettings().labels, "leadre.io/step": "sft", **pods.TRAINING_WORKER_LABEL}
    mlflow = find(rendered["prod"], "Deployment", "leadre-mlflow")["spec"]["template"]["metadata"]["labels"]
    for port in (29500, 43127):  # the rendezvous, and a port NCCL picks at run time
        assert reachable(policies, worker, worker, port)
        assert not reachable(policies, {"app": "debug-shell"}, worker, port)
        assert not reachable(policies, {**worker, "leadre.io/role": "other"}, worker, port)
    assert reachable(policies, worker, mlflow, 5000)  # rank 0 still logs its run


def test_settings_from_env_and_unknown_steps():
    settings = pods.KubernetesRunnerSettings.from_env({
        "LEADRE_K8S_IMAGE": "registry.example.com/leadre:0.1.0", "LEADRE_K8S_GPU_STEPS": "sft, dpo",
        "LEADRE_K8S_GPU_IMAGE": "registry.example.com/leadre-cuda:0.1.0",
        "LEADRE_K8S_GPU_NODE_SELECTOR": "pool=gpu,accelerator=h100"})
    assert settings.gpu_steps == {"sft", "dpo"}
    assert pods.pod_operator_kwargs("sft", settings)["image"] == "registry.example.com/leadre-cuda:0.1.0"
    assert pods.pod_operator_kwargs("nearline", settings)["image"] == "registry.example.com/leadre:0.1.0"
    assert pods.is_gpu_step("sft", settings) and not pods.is_gpu_step("nearline", settings)
    assert pods.pod_operator_kwargs("dpo", settings)["node_selector"] == {"pool": "gpu", "accelerator": "h100"}
    assert pods.step_arguments("sft", settings, ["--resume"]) == ["--params", "/workspace/params.yaml", "sft",
                                                                  "--resume"]
    with pytest.raises(ValueError, match="unknown step 'train'"):
        pods.pod_operator_kwargs("train")
    with pytest.raises(ValueError, match="unknown steps"):
        pods.KubernetesRunnerSettings.from_env({"LEADRE_K8S_GPU_STEPS": "sft,trian"})


def test_state_dirs_cover_every_folder_params_yaml_writes():
    # Pods mount only these sub-folders of the shared volume beside params.yaml; an output elsewhere would land
    # on the pod's read-only root filesystem. `tracking` is left out: on Kubernetes $MLFLOW_TRACKING_URI points
    # at the MLflow server instead of a local SQLite file.
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    folders = {}
    for section, values in raw.items():
        if section == "tracking" or not isinstance(values, dict):
            continue
        for key, value in values.items():
            if isinstance(value, str) and re.search(r"(_dir|_file|_cache|_root)$", key) and not value.startswith("/"):
                folders[f"{section}.{key}"] = Path(value).parts[0]
    assert folders and set(folders.values()) <= set(pods.KubernetesRunnerSettings().state_dirs), folders


# ------------------------------------------------------------------------------------------------- images

def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; continuation lines joined, heredoc bodies skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    result, i = [], 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        instruction, _, args = line.partition(" ")
        heredoc = re.search(r'<<-?"?(\w+)"?', args)
        if heredoc:
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                i += 1
            i += 1
        result.append((instruction.upper(), args.strip()))
    return result


def entrypoint_script(path: Path) -> str:
    match = re.search(r'^COPY [^\n]*<<"EOF" /entrypoint\n(.*?)^EOF$', path.read_text(encoding="utf-8"), re.S | re.M)
    assert match, f"{path.name}: no /entrypoint heredoc"
    return match.group(1)


@pytest.mark.parametrize("name, base", [("Dockerfile", "python:3.11-slim"), ("Dockerfile.cuda", "nvidia/cuda:")])
def test_dockerfile_runs_leadre_as_a_non_root_user(name, base):
    path = REPO / "docker" / name
    steps = dockerfile_instructions(path)
    text = path.read_text(encoding="utf-8")
    froms = [args for op, args in steps if op == "FROM"]
    assert len(froms) == 1
    if base.startswith("nvidia"):
        assert froms[0] == "${CUDA_IMAGE}" and re.search(r"ARG CUDA_IMAGE=nvidia/cuda:[\d.]+-runtime-ubuntu", text)
        assert "python3.11 -m venv" in text
    else:
        assert froms[0].startswith(base)
    users = [args for op, args in steps if op == "USER"]
    assert users[-1] == "10001:10001", "a numeric non-root USER (Kubernetes can only verify runAsNonRoot on numbers)"
    assert [args for op, args in steps if op == "ENTRYPOINT"] == ['["/entrypoint"]']
    runs = [args for op, args in steps if op == "RUN"]
    torch = next(i for i, r in enumerate(runs) if "torch==2.13.0" in r)
    project = next(i for i, r in enumerate(runs) if "pip install -c requirements.lock ." in r)
    assert torch < project, "torch is installed alone, before the locked project"
    if name == "Dockerfile":
        assert "$TORCH_INDEX_URL" in runs[torch] and "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    copies = " ".join(args for op, args in steps if op == "COPY")
    for source in ("leadre/", "dags/", "params.yaml", "dvc.yaml", "requirements.lock"):
        assert source in copies


def test_both_images_share_one_entrypoint_that_defaults_to_leadre(tmp_path):
    script = entrypoint_script(REPO / "docker" / "Dockerfile")
    assert script == entrypoint_script(REPO / "docker" / "Dockerfile.cuda")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("leadre", "airflow", "python"):
        (bin_dir / program).write_text(f'#!/bin/sh\necho {program} "$@"\n')
        (bin_dir / program).chmod(0o755)
    entrypoint = tmp_path / "entrypoint"
    entrypoint.write_text(script)
    entrypoint.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}

    def run(*args: str) -> str:
        result = subprocess.run([str(entrypoint), *args], capture_output=True, text=True, env=env, check=True)
        return result.stdout.strip()

    assert run() == "leadre --help"
    assert run("serve", "--host", "0.0.0.0") == "leadre serve --host 0.0.0.0"
    assert run("--params", "/workspace/params.yaml", "sft") == "leadre --params /workspace/params.yaml sft"
    # the Airflow chart's commands and probes go through /entrypoint
    assert run("airflow", "jobs", "check") == "airflow jobs check"
    assert run("python", "-m", "x") == "python -m x"
    assert run("bash", "-c", "echo $0", "ok") == "ok"


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", "data", "artifacts", "mlruns", "mlruns.db", ".git", "bench/results", "reports"} <= ignored
    for needed in ("leadre", "dags", "params.yaml", "dvc.yaml", "requirements.lock", "pyproject.toml", "README.md"):
        assert needed not in ignored


def test_mlflow_server_image_and_docs():
    text = (REPO / "mlflow" / "Dockerfile").read_text(encoding="utf-8")
    assert "mlflow==3.17.2" in text and "psycopg2-binary" in text and "boto3" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert not (REPO / "mlflow" / "__init__.py").exists(), "it would shadow the mlflow package"
    readme = (REPO / "mlflow" / "README.md").read_text(encoding="utf-8")
    for term in ("--backend-store-uri", "--artifacts-destination", "--default-artifact-root", "--serve-artifacts",
                 "--workers", "--allowed-hosts", "MLFLOW_TRACKING_URI", "sqlite:///mlruns.db"):
        assert term in readme
    env = dict(line.split("=", 1) for line in (REPO / "mlflow" / "server.env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert shlex.split(env["MLFLOW_ARTIFACTS_DESTINATION"])[0].startswith("s3://")
