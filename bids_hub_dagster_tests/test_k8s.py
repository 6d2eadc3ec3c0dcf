"""The Kubernetes launch target: shard run sizing, the run tags, the Helm values, the pod manifests.

No cluster and no helm here. What is exercised: the pod manifest of a shard run, built by
dagster-k8s's own code (``K8sRunLauncher`` configured as the chart's template configures it
from deploy/helm/values.yaml, ``K8sContainerContext.create_for_run`` with the code location's
container context as the chart's user deployment passes it, ``construct_dagster_k8s_job``),
from the tags the shard job really carries; the manifest is validated against the Kubernetes
API schema (kubernetes-validate, strict). deploy/helm/values.yaml is checked as YAML against
the keys the chart documents. What is not: helm's rendering itself, an API server admitting
the Job, a node running it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg
import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster._cli.api import ExecuteRunArgs
from dagster._config import process_config
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.test_utils import instance_for_test
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    USER_DEFINED_K8S_CONFIG_KEY,
    construct_dagster_k8s_job,
    get_job_name_from_run_id,
    get_user_defined_k8s_config,
)
from dagster_k8s.launcher import K8sRunLauncher
from kubernetes.utils.quantity import parse_quantity

from bids_hub_dagster.cluster import (
    DEFAULT_SECRET,
    SCRATCH_PATH,
    SCRATCH_VOLUME,
    backfill_estimate,
    celery_run_tags,
    chart_run_k8s_config,
    k8s_run_tags,
    run_resources,
)
from bids_hub_dagster.cluster.sizing import BUILD_BYTES_PER_SECOND, RUNS_SUBMITTED_PER_SECOND
from bids_hub_dagster.dataset.shards import DEFAULT_ROW_GROUP_SIZE
from bids_hub_dagster.defs.definitions import build_definitions
from bids_hub_dagster.defs.names import names
from bids_hub_dagster.pipeline.shard_range import MAX_AUTO_THREADS
from bids_hub_dagster.spec import DEFAULT_MAX_SHARD_SIZE

VALUES = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "values.yaml"
#: a Kubernetes version whose schema kubernetes-validate ships (strict: unknown fields are errors)
K8S_VERSION = "1.33.0"
#: as the chart names things for `helm install bids-hub dagster/dagster` in namespace bids-hub
RELEASE, NAMESPACE = "bids-hub", "bids-hub"
FULLNAME = f"{RELEASE}-dagster"
IMAGE = "registry.example.org/bids-hub-dagster:0.1.0"

# ---- the chart's documented keys -------------------------------------------------------------
# Chart dagster/dagster 1.13.27 (released with dagster 1.13.27). Transcribed from the chart's
# values schema, dagster-io/dagster helm/dagster/schema/schema/charts/: dagster/values.py
# (DagsterHelmValues, the version with `concurrency`), subschema/run_launcher.py (RunK8sConfig,
# K8sRunLauncherConfig), subschema/daemon.py (the version with `backfills`),
# subschema/compute_log_manager.py, subschema/concurrency.py, subschema/postgresql.py,
# subschema/global_.py, dagster_user_deployments/subschema/user_deployments.py.
TOP_LEVEL = {
    "dagsterWebserver", "dagster-user-deployments", "postgresql", "generatePostgresqlPasswordSecret",
    "generateCeleryConfigSecret", "rabbitmq", "redis", "flower", "ingress", "imagePullSecrets",
    "computeLogManager", "scheduler", "runLauncher", "pythonLogs", "dagsterDaemon", "busybox", "migrate",
    "telemetry", "serviceAccount", "global", "retention", "concurrency", "additionalInstanceConfig",
}  # fmt: skip
GLOBAL = {"postgresqlSecretName", "dagsterHome", "serviceAccountName", "celeryConfigSecretName",
          "dagsterInstanceConfigMap"}  # fmt: skip
POSTGRESQL = {"postgresqlScheme", "image", "enabled", "postgresqlHost", "postgresqlUsername",
              "postgresqlPassword", "postgresqlDatabase", "postgresqlParams", "service"}  # fmt: skip
USER_DEPLOYMENTS = {"enabled", "enableSubchart", "imagePullSecrets", "deployments"}
USER_DEPLOYMENT = {
    "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
    "deploymentNamespace", "port", "env", "envConfigMaps", "envSecrets", "annotations", "nodeSelector",
    "affinity", "tolerations", "podSecurityContext", "securityContext", "resources", "livenessProbe",
    "readinessProbe", "startupProbe", "labels", "volumeMounts", "volumes", "schedulerName",
    "initContainers", "sidecarContainers", "deploymentStrategy",
}  # fmt: skip
RUN_LAUNCHER = {"type", "config"}
RUN_LAUNCHER_TYPES = {"CeleryK8sRunLauncher": "celeryK8sRunLauncher", "K8sRunLauncher": "k8sRunLauncher",
                      "CustomRunLauncher": "customRunLauncher"}  # fmt: skip
K8S_RUN_LAUNCHER = {
    "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile", "envConfigMaps",
    "envSecrets", "envVars", "volumeMounts", "volumes", "labels", "failPodOnRunFailure", "resources",
    "schedulerName", "securityContext", "runK8sConfig",
}  # fmt: skip
RUN_K8S_CONFIG = {
    "containerConfig",
    "podSpecConfig",
    "podTemplateSpecMetadata",
    "jobSpecConfig",
    "jobMetadata",
}
COMPUTE_LOG_TYPES = {"NoOpComputeLogManager": None, "AzureBlobComputeLogManager": "azureBlobComputeLogManager",
                     "GCSComputeLogManager": "gcsComputeLogManager", "S3ComputeLogManager": "s3ComputeLogManager",
                     "CustomComputeLogManager": "customComputeLogManager"}  # fmt: skip
S3_COMPUTE_LOGS = {"localDir", "prefix", "useSsl", "verify", "verifyCertPath", "endpointUrl", "skipEmptyFiles",
                   "uploadInterval", "uploadExtraArgs", "showUrlOnly", "region", "bucket"}  # fmt: skip
CONCURRENCY = {"enabled", "pools", "runs"}
CONCURRENCY_POOLS = {"defaultLimit", "granularity", "opGranularityRunBuffer"}
CONCURRENCY_RUNS = {"maxConcurrentRuns", "tagConcurrencyLimits"}
DAEMON = {
    "enabled", "image", "runCoordinator", "heartbeatTolerance", "env", "envConfigMaps", "envSecrets",
    "deploymentLabels", "labels", "nodeSelector", "affinity", "tolerations", "podSecurityContext",
    "securityContext", "resources", "checkDbReadyInitContainer", "livenessProbe", "readinessProbe",
    "startupProbe", "annotations", "runMonitoring", "runRetries", "sensors", "schedules", "backfills",
    "schedulerName", "logFormat", "volumeMounts", "volumes", "initContainerResources", "extraContainers",
    "extraPrependedInitContainers",
}  # fmt: skip
RUN_COORDINATOR = {"enabled", "type", "config"}
QUEUED_RUN_COORDINATOR = {"maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds",
                          "dequeueNumWorkers", "dequeueUseThreads", "blockOpConcurrencyLimitedRuns"}  # fmt: skip
DAEMON_THREADS = {"useThreads", "numWorkers", "numSubmitWorkers"}  # sensors, schedules, backfills
RUN_RETRIES = {"enabled", "maxRetries", "retryOnAssetOrOpFailure"}
# runMonitoring is a free mapping in the schema; these are the keys the instance template renders
RUN_MONITORING = {"enabled", "startTimeoutSeconds", "pollIntervalSeconds", "maxResumeRunAttempts"}
TELEMETRY = {"enabled"}


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def _unknown(mapping: dict, known: set[str], where: str) -> list[str]:
    return [f"{where}.{key}" for key in mapping if key not in known]


# ---- sizing ----------------------------------------------------------------------------------


def _bytes(quantity: str) -> int:
    return int(parse_quantity(quantity))


def test_default_spec_resources_follow_the_measured_figures():
    """500 MB shards, 100 MB row groups, one shard in flight: the figures BENCHMARKS.md measured fit."""
    resources = run_resources(DEFAULT_MAX_SHARD_SIZE, DEFAULT_ROW_GROUP_SIZE)
    requests, limits = resources.requests(), resources.limits()
    # the quantities Kubernetes reads back are the bytes and millicores computed
    assert _bytes(requests["memory"]) == resources.memory_bytes
    assert _bytes(requests["ephemeral-storage"]) == resources.ephemeral_storage_bytes
    assert parse_quantity(requests["cpu"]) * 1000 == resources.cpu_millicores
    # the highest peak RSS measured for a shard build (740 MB, pandas strategy) plus the run worker
    # process (~196 MB measured for importing the code location) fits under the request
    assert resources.memory_bytes >= (740 + 196) * 10**6
    assert _bytes(limits["memory"]) > resources.memory_bytes
    # scratch copy + upload of the shard in flight, and more
    assert resources.ephemeral_storage_bytes >= 2 * DEFAULT_MAX_SHARD_SIZE
    assert _bytes(limits["ephemeral-storage"]) > resources.ephemeral_storage_bytes
    assert resources.cpu_millicores >= 1000 and "cpu" not in limits


def test_memory_follows_row_groups_and_shards_in_flight_not_the_shard_size():
    small = run_resources(300 * 10**6, 100 * 10**6)
    large = run_resources(2 * 10**9, 100 * 10**6)
    assert small.memory_bytes == large.memory_bytes  # flat in the shard size, as measured
    assert large.ephemeral_storage_bytes > small.ephemeral_storage_bytes
    half_groups = run_resources(500 * 10**6, 50 * 10**6)
    assert half_groups.memory_bytes < small.memory_bytes
    four = run_resources(500 * 10**6, 100 * 10**6, shards_per_run=10, threads=4)
    assert four.shards_in_flight == 4
    assert four.memory_bytes > 3 * small.memory_bytes // 2 and four.cpu_millicores >= 4000
    # never more in flight than the run has shards
    assert run_resources(500 * 10**6, 100 * 10**6, shards_per_run=2, threads=4).shards_in_flight == 2


def test_bad_sizes_are_refused_naming_the_setting():
    with pytest.raises(ValueError, match="shards_per_run"):
        run_resources(500 * 10**6, 100 * 10**6, shards_per_run=0)
    with pytest.raises(ValueError, match="row_group_size"):
        run_resources(500 * 10**6, True)
    with pytest.raises(ValueError, match="scratch_path"):
        run_resources(500 * 10**6, 100 * 10**6, scratch_path="scratch")
    with pytest.raises(ValueError, match="hub_secret"):
        k8s_run_tags(run_resources(500 * 10**6, 100 * 10**6), hub_secret="")


def test_the_issue_example_273_gb_in_900_shards():
    """273 GB in 900 shards (~303 MB each), 100 MB row groups: a run per shard, or ranges of 10."""
    dataset, shards = 273 * 10**9, 900
    shard = math.ceil(dataset / shards)
    one = run_resources(shard, DEFAULT_ROW_GROUP_SIZE, shards_per_run=1, threads=MAX_AUTO_THREADS)
    ten = run_resources(shard, DEFAULT_ROW_GROUP_SIZE, shards_per_run=10, threads=MAX_AUTO_THREADS)
    assert one.shards_in_flight == 1 and ten.shards_in_flight == MAX_AUTO_THREADS
    for resources in (one, ten):
        assert resources.ephemeral_storage_bytes >= 2 * shard * resources.shards_in_flight
    # a range run costs one run worker, not four
    assert ten.memory_bytes < 4 * one.memory_bytes

    for gbit in (1, 10):
        per_run = backfill_estimate(dataset, shards, 1, MAX_AUTO_THREADS, 16, gbit * 10**9)
        ranges = backfill_estimate(dataset, shards, 10, MAX_AUTO_THREADS, 16, gbit * 10**9)
        assert (per_run.runs, ranges.runs) == (900, 90)
        assert per_run.submit_seconds == pytest.approx(900 / RUNS_SUBMITTED_PER_SECOND)  # 6 minutes
        assert ranges.submit_seconds == pytest.approx(90 / RUNS_SUBMITTED_PER_SECOND)
        assert per_run.pass_seconds == pytest.approx(dataset * 8 / (gbit * 10**9))
        assert per_run.upload_seconds == pytest.approx(2 * per_run.pass_seconds)
        # 16 runs × 1 shard vs 16 runs × 4 shards in flight
        assert (per_run.shards_in_flight, ranges.shards_in_flight) == (16, 64)
        for estimate in (per_run, ranges):
            cpu_bound = dataset / (BUILD_BYTES_PER_SECOND * estimate.shards_in_flight)
            assert estimate.build_seconds == pytest.approx(max(2 * estimate.pass_seconds, cpu_bound))
    # at 1 Gbit/s the network bounds the build: 273 GB is ~36 min per pass
    assert backfill_estimate(dataset, shards, 1, 1, 16, 10**9).pass_seconds == pytest.approx(2184)


def test_celery_tags_are_the_ones_dagster_celery_reads():
    from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG, DAGSTER_CELERY_RUN_PRIORITY_TAG

    assert celery_run_tags() == {}
    assert celery_run_tags("big-disks", 5) == {DAGSTER_CELERY_QUEUE_TAG: "big-disks",
                                               DAGSTER_CELERY_RUN_PRIORITY_TAG: "5"}  # fmt: skip
    with pytest.raises(ValueError, match="queue"):
        celery_run_tags(" ")
    with pytest.raises(ValueError, match="priority"):
        celery_run_tags(priority="high")  # type: ignore[arg-type]


# ---- the tags on the shard job -----------------------------------------------------------------


def test_the_shard_job_carries_the_tags_of_its_spec(demo_spec, tmp_path):
    for spec in (demo_spec, demo_spec.with_overrides(max_shard_size="2GB", row_group_size="200MB")):
        defs = build_definitions([spec], storage_dir=str(tmp_path / "storage"))
        job = defs.resolve_job_def(names(spec).jobs.shards)
        expected = k8s_run_tags(
            run_resources(spec.max_shard_size, spec.row_group_size, spec.shards_per_run, MAX_AUTO_THREADS)
        )
        assert {k: v for k, v in job.run_tags.items() if k == USER_DEFINED_K8S_CONFIG_KEY} == expected
        # dagster-k8s parses the tag without error into a container config with the requests
        parsed = get_user_defined_k8s_config(job.run_tags)
        assert parsed.container_config["resources"]["requests"]["memory"].endswith("Mi")
        # the other jobs are not sized as shard runs
        assert USER_DEFINED_K8S_CONFIG_KEY not in defs.resolve_job_def(names(spec).jobs.prepare).run_tags


# ---- the Helm values -----------------------------------------------------------------------------


def test_values_use_only_keys_the_chart_documents(values):
    unknown = _unknown(values, TOP_LEVEL, "")
    unknown += _unknown(values["global"], GLOBAL, "global")
    unknown += _unknown(values["postgresql"], POSTGRESQL, "postgresql")
    user = values["dagster-user-deployments"]
    unknown += _unknown(user, USER_DEPLOYMENTS, "dagster-user-deployments")
    for deployment in user["deployments"]:
        unknown += _unknown(deployment, USER_DEPLOYMENT, "dagster-user-deployments.deployments[]")
    launcher = values["runLauncher"]
    unknown += _unknown(launcher, RUN_LAUNCHER, "runLauncher")
    unknown += _unknown(launcher["config"], set(RUN_LAUNCHER_TYPES.values()), "runLauncher.config")
    k8s = launcher["config"]["k8sRunLauncher"]
    unknown += _unknown(k8s, K8S_RUN_LAUNCHER, "runLauncher.config.k8sRunLauncher")
    unknown += _unknown(k8s["runK8sConfig"], RUN_K8S_CONFIG, "k8sRunLauncher.runK8sConfig")
    logs = values["computeLogManager"]
    unknown += _unknown(
        logs["config"], {v for v in COMPUTE_LOG_TYPES.values() if v}, "computeLogManager.config"
    )
    unknown += _unknown(logs["config"]["s3ComputeLogManager"], S3_COMPUTE_LOGS, "s3ComputeLogManager")
    concurrency = values["concurrency"]
    unknown += _unknown(concurrency, CONCURRENCY, "concurrency")
    unknown += _unknown(concurrency["pools"], CONCURRENCY_POOLS, "concurrency.pools")
    unknown += _unknown(concurrency["runs"], CONCURRENCY_RUNS, "concurrency.runs")
    daemon = values["dagsterDaemon"]
    unknown += _unknown(daemon, DAEMON, "dagsterDaemon")
    unknown += _unknown(daemon["runCoordinator"], RUN_COORDINATOR, "dagsterDaemon.runCoordinator")
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    unknown += _unknown(queued, QUEUED_RUN_COORDINATOR, "queuedRunCoordinator")
    for name in ("sensors", "schedules", "backfills"):
        unknown += _unknown(daemon[name], DAEMON_THREADS, f"dagsterDaemon.{name}")
    unknown += _unknown(daemon["runRetries"], RUN_RETRIES, "dagsterDaemon.runRetries")
    unknown += _unknown(daemon["runMonitoring"], RUN_MONITORING, "dagsterDaemon.runMonitoring")
    unknown += _unknown(values["telemetry"], TELEMETRY, "telemetry")
    assert unknown == []


def test_values_set_what_the_cluster_needs(values):
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    assert values["generatePostgresqlPasswordSecret"] is False  # the password comes from our Secret
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher" and RUN_LAUNCHER_TYPES[launcher["type"]] in launcher["config"]
    logs = values["computeLogManager"]
    assert logs["type"] == "S3ComputeLogManager" and logs["config"]["s3ComputeLogManager"]["bucket"]
    # the hub_commits pool (names.HUB_POOL) has one slot: the chart sets the default limit of every pool
    assert values["concurrency"]["enabled"] is True and values["concurrency"]["pools"]["defaultLimit"] == 1
    daemon = values["dagsterDaemon"]
    assert daemon["enabled"] and daemon["runCoordinator"]["enabled"] and daemon["backfills"]["useThreads"]
    # the chart refuses a run limit both under concurrency and in the run coordinator
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert "maxConcurrentRuns" not in queued and values["concurrency"]["runs"]["maxConcurrentRuns"] >= 1
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "bids_hub_dagster.definitions"]
    assert deployment["env"]["BIDS_HUB_STORAGE"].startswith("s3://") and deployment["env"]["AWS_ENDPOINT_URL"]
    assert "resources" not in deployment  # it would reach the run pods and override their requests
    bids = [m for m in deployment["volumeMounts"] if m["mountPath"] == "/bids"]
    assert bids and bids[0]["readOnly"] is True


def test_the_chart_default_is_the_default_spec_tag(values):
    """UI asset backfills carry no job tag: the chart default gives them the default spec's figures."""
    run_k8s = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    expected = chart_run_k8s_config(run_resources(DEFAULT_MAX_SHARD_SIZE, DEFAULT_ROW_GROUP_SIZE))
    assert run_k8s == expected


# ---- the pod manifest of a shard run, rendered by dagster-k8s ------------------------------------


def _launcher_config(values: dict[str, Any], kubeconfig: Path) -> dict[str, Any]:
    """The run_launcher config the chart's template (dagsterYaml.runLauncher.k8s) writes from the values."""
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    run_k8s = k8s.get("runK8sConfig") or {}
    config = {
        # the template writes load_incluster_config from the values; out of a cluster, a kubeconfig
        "load_incluster_config": False,
        "kubeconfig_file": str(kubeconfig),
        "job_namespace": k8s.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": values["global"].get("serviceAccountName") or FULLNAME,
        "dagster_home": values["global"]["dagsterHome"],
        "instance_config_map": f"{FULLNAME}-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
        "env_config_maps": [m["name"] for m in k8s["envConfigMaps"]],
        "env_secrets": [s["name"] for s in k8s["envSecrets"]],
        "env_vars": k8s["envVars"],
        "volume_mounts": k8s["volumeMounts"],
        "volumes": k8s["volumes"],
        "fail_pod_on_run_failure": bool(k8s.get("failPodOnRunFailure")),
        "run_k8s_config": {
            snake: run_k8s[camel]
            for camel, snake in (
                ("containerConfig", "container_config"),
                ("podSpecConfig", "pod_spec_config"),
                ("podTemplateSpecMetadata", "pod_template_spec_metadata"),
                ("jobSpecConfig", "job_spec_config"),
                ("jobMetadata", "job_metadata"),
            )
            if run_k8s.get(camel)
        },
    }
    return {key: value for key, value in config.items() if value not in ([], None)}


def _code_location_context(values: dict[str, Any]) -> dict[str, Any]:
    """The container context the chart's user deployment passes to its runs (includeConfigInLaunchedRuns)."""
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    k8s = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{FULLNAME}-{deployment['name']}-user-env"],
        "env_secrets": [s["name"] for s in deployment.get("envSecrets", [])],
        "volume_mounts": deployment.get("volumeMounts", []),
        "volumes": deployment.get("volumes", []),
        "namespace": NAMESPACE,
        "service_account_name": f"{FULLNAME}-user-deployments",
    }
    return {"k8s": {key: value for key, value in k8s.items() if value}}


@pytest.fixture
def launcher(values, tmp_path) -> K8sRunLauncher:
    kubeconfig = tmp_path / "kubeconfig"  # parsed only: nothing connects to this address
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    # validated by dagster-k8s's own config schema, as the instance does when it loads dagster.yaml
    result = process_config(K8sRunLauncher.config_type(), _launcher_config(values, kubeconfig))
    assert result.success, result.errors
    return K8sRunLauncher.from_config_value(inst_data=None, config_value=result.value)


def _render(launcher: K8sRunLauncher, values, job: dg.JobDefinition, tags: dict[str, str]) -> dict:
    """The Job manifest the launcher would create for a run of ``job``: its own code path, no API call."""
    origin = JobPythonOrigin(
        job.name,
        RepositoryPythonOrigin(
            executable_path="/usr/local/bin/python",
            code_pointer=ModuleCodePointer("bids_hub_dagster.definitions", "defs", "/opt/bids_hub_dagster"),
            container_image=IMAGE,
            container_context=_code_location_context(values),
        ),
    )
    with instance_for_test() as instance:
        # a launch of the job (UI launchpad, sensor, job backfill) merges the job's tags into the run's
        run = instance.create_run_for_job(job, tags={**job.run_tags, **tags}, job_code_origin=origin)
        context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
        job_config = context.get_k8s_job_config(job_image=IMAGE, run_launcher=launcher)
        args = ExecuteRunArgs(
            job_origin=origin,
            run_id=run.run_id,
            instance_ref=instance.get_ref(),
            set_exit_code_on_failure=True,
        ).get_command_args()
        k8s_job = construct_dagster_k8s_job(
            job_config=job_config,
            args=args,
            job_name=get_job_name_from_run_id(run.run_id),
            user_defined_k8s_config=context.run_k8s_config,
            component="run_worker",
            labels={"dagster/job": job.name, "dagster/run-id": run.run_id},
            env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": job.name}],
        )
    manifest = kubernetes.client.ApiClient().sanitize_for_serialization(k8s_job)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    return manifest


def _check_pod(manifest: dict, resources) -> dict:
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # the code server's interpreter (the image's /usr/local/bin/python) runs `dagster api execute_run`
    assert container["image"] == IMAGE and container["args"][:5] == [
        "/usr/local/bin/python", "-m", "dagster", "api", "execute_run"
    ]  # fmt: skip
    assert container["resources"] == {"requests": resources.requests(), "limits": resources.limits()}
    # one scratch volume, mounted where BIDS_HUB_SCRATCH points; no name or path twice
    assert Counter(v["name"] for v in pod["volumes"]).most_common(1)[0][1] == 1
    assert Counter(m["mountPath"] for m in container["volumeMounts"]).most_common(1)[0][1] == 1
    assert Counter(e["name"] for e in container["env"]).most_common(1)[0][1] == 1
    scratch = next(v for v in pod["volumes"] if v["name"] == SCRATCH_VOLUME)
    assert scratch["emptyDir"] == {}
    env = {e["name"]: e for e in container["env"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert env["BIDS_HUB_SCRATCH"]["value"] == SCRATCH_PATH and mounts[SCRATCH_PATH]["name"] == SCRATCH_VOLUME
    # the BIDS folder: the code location's read-only claim, on the run pod too
    assert mounts["/bids"]["readOnly"] is True
    bids = next(v for v in pod["volumes"] if v["name"] == mounts["/bids"]["name"])
    assert bids["persistentVolumeClaim"] == {"claimName": "bids-data", "readOnly": True}
    # the Hub token and the object storage keys, from the Secret
    for name, optional in (
        ("HF_TOKEN", True),
        ("AWS_ACCESS_KEY_ID", False),
        ("AWS_SECRET_ACCESS_KEY", False),
    ):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": DEFAULT_SECRET, "key": name, "optional": optional}
    # the code location's env (BIDS_HUB_STORAGE, AWS_ENDPOINT_URL: a chart ConfigMap) and the Postgres password
    sources = [s.get("configMapRef", s.get("secretRef"))["name"] for s in container["envFrom"]]
    assert f"{FULLNAME}-bids-hub-dagster-user-env" in sources and DEFAULT_SECRET in sources
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "dagster-postgresql-secret"
    return pod


def test_shard_run_pod_of_the_default_spec(launcher, values, demo_spec, tmp_path):
    defs = build_definitions([demo_spec], storage_dir=str(tmp_path / "storage"))
    job = defs.resolve_job_def(names(demo_spec).jobs.shards)
    manifest = _render(launcher, values, job, {"dagster/partition": "shard-00000"})
    resources = run_resources(demo_spec.max_shard_size, demo_spec.row_group_size, 1, MAX_AUTO_THREADS)
    _check_pod(manifest, resources)
    assert manifest["metadata"]["labels"]["dagster/job"] == job.name


def test_shard_run_pod_of_a_larger_spec_gets_its_own_figures(launcher, values, demo_spec, tmp_path):
    """Bigger shards and row groups: the tag wins over the chart default, and nothing is doubled."""
    spec = demo_spec.with_overrides(max_shard_size="2GB", row_group_size="250MB")
    defs = build_definitions([spec], storage_dir=str(tmp_path / "storage"))
    job = defs.resolve_job_def(names(spec).jobs.shards)
    resources = run_resources(spec.max_shard_size, spec.row_group_size, spec.shards_per_run, MAX_AUTO_THREADS)
    default = run_resources(DEFAULT_MAX_SHARD_SIZE, DEFAULT_ROW_GROUP_SIZE)
    assert resources.requests() != default.requests()
    _check_pod(_render(launcher, values, job, {}), resources)


def test_a_run_without_tags_gets_the_chart_default(launcher, values, demo_spec, tmp_path):
    """As a run of the UI's asset backfill: no job tag, the chart's runK8sConfig sizes it."""
    defs = build_definitions([demo_spec], storage_dir=str(tmp_path / "storage"))
    job = defs.resolve_job_def(names(demo_spec).jobs.prepare)  # carries no dagster-k8s/config tag
    assert USER_DEFINED_K8S_CONFIG_KEY not in job.run_tags
    manifest = _render(launcher, values, job, {})
    _check_pod(manifest, run_resources(DEFAULT_MAX_SHARD_SIZE, DEFAULT_ROW_GROUP_SIZE))


def test_the_tag_is_plain_json_of_kubernetes_fields():
    tag = k8s_run_tags(run_resources(DEFAULT_MAX_SHARD_SIZE, DEFAULT_ROW_GROUP_SIZE), s3_secret=None)
    config = json.loads(tag[USER_DEFINED_K8S_CONFIG_KEY])
    assert set(config) == {"container_config", "pod_spec_config"}
    names_ = [e["name"] for e in config["container_config"]["env"]]
    assert "AWS_ACCESS_KEY_ID" not in names_ and "HF_TOKEN" in names_  # a pod with a cloud role


def test_the_cluster_command_prints_a_specs_chart_block(demo_spec, tmp_path, capsys):
    from bids_hub_dagster.cluster.__main__ import main

    spec_file = tmp_path / "big.yaml"
    spec_file.write_text(
        yaml.safe_dump({"name": "big", "bids_root": str(demo_spec.bids_root), "max_shard_size": "2GB",
                        "row_group_size": "200MB", "shards_per_run": 8})
    )  # fmt: skip
    assert main([str(spec_file)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    block = printed["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    assert block == chart_run_k8s_config(run_resources(2 * 10**9, 200 * 10**6, 8, MAX_AUTO_THREADS))
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_the_upload_run_has_room_for_one_commit_batch():
    from bids_hub_dagster.cluster import upload_run_resources

    shard = math.ceil(273 * 10**9 / 900)
    upload = upload_run_resources(shard, 50)
    assert upload.ephemeral_storage_bytes >= 50 * shard  # ~15 GB: far above a shard run's default
    default = run_resources(DEFAULT_MAX_SHARD_SIZE, DEFAULT_ROW_GROUP_SIZE)
    assert upload.ephemeral_storage_bytes > 5 * default.ephemeral_storage_bytes
    assert upload_run_resources(shard, 5).ephemeral_storage_bytes < upload.ephemeral_storage_bytes
    with pytest.raises(ValueError, match="files_per_commit"):
        upload_run_resources(shard, 0)
