"""Kubernetes manifests (issue 15, deploy/kubernetes): every object of the base and of the rendered example
overlay validates offline against the Kubernetes schemas (kubernetes-validate, strict: unknown fields
fail), and the settings that make the deployment safe hold: non-root, read-only root, seccomp
RuntimeDefault, no privilege escalation, every capability dropped, requests and limits, /tmp an emptyDir,
keys only from Secrets (none in the tree), a ReadWriteMany repository, mTLS exec probes with
`sealgate health`, and selectors, ports and the TOML that agree with each other.

kustomize is not a Python package: `render()` below implements the part of it these kustomizations use
(resources, namespace, labels, images, replicas, strategic-merge patches, config map and secret
generators with a content-hash suffix) and refuses any other kustomization key, so it can never silently
skip something. Where `kubectl` is installed, a test checks that its built-in kustomize renders the same.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from gateway.config import load_config

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
BASE = KUBE / "base"
OVERLAY = KUBE / "overlays" / "example"
VERSIONS = ("1.28", "1.37")  # the oldest and newest schema versions the manifests are checked against
PROBE_DIR = "/etc/sealgate/probe"
GENERATED = "test.sealgate/generated-from"  # the renderer's own mark, removed by render()
CLUSTER_SCOPED = {"Namespace"}
KNOWN_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "replicas",
    "patches",
    "configMapGenerator",
    "secretGenerator",
}

Obj = dict[str, Any]


# --- a small kustomize ---------------------------------------------------------------------------------
def _docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def merge(dst: Any, patch: Any) -> Any:
    """Strategic merge as these patches use it: maps merge, lists of named maps merge by name, else replace."""
    if isinstance(dst, dict) and isinstance(patch, dict):
        out = dict(dst)
        for key, value in patch.items():
            out[key] = merge(dst[key], value) if key in dst else copy.deepcopy(value)
        return out
    named = isinstance(dst, list) and isinstance(patch, list)
    if named and all(isinstance(x, dict) and "name" in x for x in [*dst, *patch]):
        out_list = [copy.deepcopy(x) for x in dst]
        for item in patch:
            index = next((i for i, x in enumerate(out_list) if x["name"] == item["name"]), None)
            if index is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[index] = merge(out_list[index], item)
        return out_list
    return copy.deepcopy(patch)


def _generated(kind: str, spec: Obj, folder: Path) -> tuple[Obj, dict[str, bytes]]:
    """A ConfigMap or Secret from a generator's files (a missing secret file reads as empty: names only)."""
    files: dict[str, bytes] = {}
    for entry in spec.get("files", []):
        key, _, rel = entry.rpartition("=") if "=" in entry else (Path(entry).name, "", entry)
        path = folder / rel
        files[key] = path.read_bytes() if path.exists() else b""
    unknown = set(spec) - {"name", "files", "type", "behavior"}
    assert not unknown, f"generator keys this renderer does not implement: {unknown}"
    obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if kind == "Secret":
        obj["type"] = spec.get("type", "Opaque")
        obj["data"] = {k: base64.b64encode(v).decode() for k, v in files.items()}
    else:
        obj["data"] = {k: v.decode() for k, v in files.items()}
    return obj, files


def _build(folder: Path) -> list[Obj]:
    """The objects of a kustomization folder, generated ones under their plain names (marked for suffixing)."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(k) - KNOWN_KEYS
    assert not unknown, f"kustomization keys this renderer does not implement: {unknown}"
    objs: list[Obj] = []
    for res in k.get("resources", []):
        path = folder / res
        objs += _build(path) if path.is_dir() else _docs(path)
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for spec in k.get(key, []):
            obj, _ = _generated(kind, spec, folder)
            existing = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == spec["name"]]
            if spec.get("behavior") == "replace":
                assert existing, f"{kind} {spec['name']} to replace does not exist"
                objs.remove(existing[0])
            else:
                assert not existing, f"{kind} {spec['name']} generated twice"
            obj["metadata"]["annotations"] = {GENERATED: spec["name"]}
            objs.append(obj)
    for entry in k.get("patches", []):
        assert set(entry) == {"path"}, f"patch forms this renderer does not implement: {entry}"
        for patch in _docs(folder / entry["path"]):
            ident = (patch["kind"], patch["metadata"]["name"])
            target = [o for o in objs if (o["kind"], o["metadata"]["name"]) == ident]
            assert len(target) == 1, f"patch {entry['path']} matches {len(target)} objects"
            objs[objs.index(target[0])] = merge(target[0], patch)
    for entry in k.get("labels", []):
        assert set(entry) <= {"pairs", "includeSelectors"} and not entry.get("includeSelectors")
        for obj in objs:
            if GENERATED not in obj["metadata"].get("annotations", {}):
                obj["metadata"].setdefault("labels", {}).update(entry["pairs"])
    for entry in k.get("images", []):
        for container in _containers(objs):
            name = container["image"].rsplit(":", 1)[0]
            if name == entry["name"]:
                container["image"] = f"{entry.get('newName', name)}:{entry['newTag']}"
    for entry in k.get("replicas", []):
        [deployment] = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == entry["name"]]
        deployment["spec"]["replicas"] = entry["count"]
    if "namespace" in k:
        for obj in objs:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    return objs


def render(folder: Path) -> list[Obj]:
    """What `kustomize build folder` gives: generated names get a content hash, pod volumes follow them."""
    objs = _build(folder)
    renames: dict[tuple[str, str], str] = {}
    for obj in objs:
        meta = obj["metadata"]
        if meta.get("annotations", {}).pop(GENERATED, None) is not None:
            meta.pop("annotations")
            suffixed = f"{meta['name']}-{hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]}"
            renames[(obj["kind"], meta["name"])] = suffixed
            meta["name"] = suffixed
    for pod in _pod_specs(objs):
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                volume["configMap"]["name"] = renames.get(("ConfigMap", name), name)
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                volume["secret"]["secretName"] = renames.get(("Secret", name), name)
    return objs


def _pod_specs(objs: list[Obj]) -> list[Obj]:
    return [o["spec"]["template"]["spec"] for o in objs if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def _containers(objs: list[Obj]) -> list[Obj]:
    return [c for pod in _pod_specs(objs) for c in [*pod.get("initContainers", []), *pod["containers"]]]


def _one(objs: list[Obj], kind: str) -> Obj:
    [obj] = [o for o in objs if o["kind"] == kind]
    return obj


@pytest.fixture(scope="module")
def overlay() -> list[Obj]:
    return render(OVERLAY)


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return render(BASE)


# --- schemas ---------------------------------------------------------------------------------------------
def _files() -> list[Path]:
    """Every manifest file but the kustomizations and the patches (partial objects: checked once merged)."""
    patches = {
        (k.parent / entry["path"]).resolve()
        for k in KUBE.rglob("kustomization.yaml")
        for entry in yaml.safe_load(k.read_text()).get("patches", [])
    }
    return sorted(p for p in KUBE.rglob("*.yaml") if p.name != "kustomization.yaml" and p.resolve() not in patches)


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(KUBE)))
def test_every_manifest_file_validates_against_the_schemas(path: Path) -> None:
    """Each resource file as written (the rendered objects, patches merged, are checked below)."""
    for doc in _docs(path):
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_rendered_objects_validate(which: str, base: list[Obj], overlay: list[Obj]) -> None:
    objs = base if which == "base" else overlay
    kinds = sorted(o["kind"] for o in objs)
    expected = {"ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PersistentVolumeClaim"}
    assert expected | {"PodDisruptionBudget", "Service", "ServiceAccount"} <= set(kinds)
    for obj in objs:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_refuses_what_it_must() -> None:
    """The check itself: an unknown field and a wrongly typed one both fail."""
    deployment = _one(render(BASE), "Deployment")
    typo = merge(
        deployment, {"spec": {"template": {"spec": {"containers": [{"name": "sealgate", "readOnlyRootFs": True}]}}}}
    )
    wrong = merge(deployment, {"spec": {"replicas": "three"}})
    for bad in (typo, wrong):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)


# --- security settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["base", "overlay"])
def test_pods_run_locked_down(which: str, base: list[Obj], overlay: list[Obj]) -> None:
    objs = base if which == "base" else overlay
    [pod] = _pod_specs(objs)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert not any("hostPath" in v for v in pod["volumes"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in _containers(objs):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc.get("privileged", False) is False and sc["runAsNonRoot"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (kind, c["resources"])
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "/tmp must be an emptyDir (read-only root)"
        for m in c["volumeMounts"]:
            source = volumes[m["name"]]
            if "secret" in source or "configMap" in source:
                assert m.get("readOnly") is True, m
    assert _one(objs, "ServiceAccount").get("automountServiceAccountToken") is False


def test_keys_come_only_from_secrets_and_none_is_in_the_tree(overlay: list[Obj]) -> None:
    for path in KUBE.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text, path
    tracked = subprocess.run(
        ["git", "ls-files", "--others", "--cached", "--exclude-standard", str(OVERLAY / "secrets")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if tracked.returncode == 0:  # what git would commit there: the README and .gitignore only
        names = {Path(p).name for p in tracked.stdout.split()}
        assert names <= {"README.md", ".gitignore"}, names
    assert not any(o["kind"] == "Secret" for o in render(BASE)), "the base must not carry Secrets"
    secrets = {o["metadata"]["name"]: o for o in overlay if o["kind"] == "Secret"}
    [pod] = _pod_specs(overlay)
    referenced = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert referenced == set(secrets), "every Secret volume is generated by the overlay, and only those"
    for v in pod["volumes"]:
        if "secret" in v:
            assert v["secret"].get("defaultMode", 0o644) & 0o007 == 0, "secret files not world-readable"


def test_the_tomls_load_and_agree_with_the_mounts(base: list[Obj], overlay: list[Obj], tmp_path: Path) -> None:
    for objs in (base, overlay):
        config_map = _one(objs, "ConfigMap")
        text = config_map["data"]["sealgate.toml"]
        (tmp_path / "sealgate.toml").write_text(text)
        config = load_config(tmp_path / "sealgate.toml")  # unknown keys or bad values fail here
        [pod] = _pod_specs(objs)
        [container] = pod["containers"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        assert container["args"] == ["serve", "--config", "/etc/sealgate/config/sealgate.toml"]
        assert mounts["/etc/sealgate/config"]["configMap"]["name"] == config_map["metadata"]["name"]
        pvc = _one(objs, "PersistentVolumeClaim")
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        repo = mounts[str(config.repository.path)]
        assert repo["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        secret_keys = _secret_keys(objs)
        for path in (config.tls.ca, config.tls.cert, config.tls.key, config.auth.jwks, *config.keys.identities):
            source = mounts[str(path.parent)]
            assert "secret" in source, f"{path} must come from a Secret"
            if secret_keys:
                assert path.name in secret_keys[source["secret"]["secretName"]], path
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for name, address in (("grpc", config.server.grpc_address), ("rest", config.server.rest_address)):
            assert int(address.rsplit(":", 1)[1]) == ports[name]
        assert int(config.server.metrics_address.rsplit(":", 1)[1]) == ports["metrics"]
        assert tomllib.loads(text)["audit"]["path"] == "-"


def _secret_keys(objs: list[Obj]) -> dict[str, set[str]]:
    return {o["metadata"]["name"]: set(o["data"]) for o in objs if o["kind"] == "Secret"}


def test_probes_run_sealgate_health_over_mtls(overlay: list[Obj]) -> None:
    [pod] = _pod_specs(overlay)
    [container] = pod["containers"]
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    probe_secret = mounts[PROBE_DIR]["secret"]["secretName"]
    assert {"ca.pem", "client.pem", "client.key"} <= _secret_keys(overlay)[probe_secret]
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        command = container[kind]["exec"]["command"]
        assert command[:2] == ["sealgate", "health"], kind
        args = dict(zip(command[2::2], command[3::2], strict=True))
        assert args == {"--address": f"127.0.0.1:{grpc_port}", "--dir": PROBE_DIR}, kind
        assert container[kind]["timeoutSeconds"] >= 2
    assert container["livenessProbe"]["failureThreshold"] * container["livenessProbe"]["periodSeconds"] >= 20


def test_selectors_ports_and_budgets_agree(overlay: list[Obj]) -> None:
    deployment = _one(overlay, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    named_ports = {
        p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    service = _one(overlay, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"grpc", "rest"}
    pdb, hpa = _one(overlay, "PodDisruptionBudget"), _one(overlay, "HorizontalPodAutoscaler")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sealgate"}
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]
    policy = _one(overlay, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    metrics_rules = [
        r for r in policy["spec"]["ingress"] if any(p["port"] == named_ports["metrics"] for p in r["ports"])
    ]
    assert metrics_rules and all("namespaceSelector" in f for r in metrics_rules for f in r["from"])
    served = {p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]}
    assert served == set(named_ports.values())


def test_overlay_changes_what_it_says(base: list[Obj], overlay: list[Obj]) -> None:
    deployment = _one(overlay, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert deployment["spec"]["replicas"] == 3
    assert container["image"] == "registry.example.com/ml/sealgate:0.1.0"
    assert container["resources"]["limits"]["cpu"] == "4"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True  # the patch merged, not replaced
    assert all(o["metadata"].get("namespace") == "sealgate" for o in overlay if o["kind"] != "Namespace")
    namespace = _one(overlay, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert _one(overlay, "ConfigMap")["metadata"]["name"] != _one(base, "ConfigMap")["metadata"]["name"]


def test_kubectl_kustomize_renders_the_same(overlay: list[Obj], tmp_path: Path) -> None:
    """Where kubectl (with its built-in kustomize) is installed: the same objects, names up to the hash."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    copy_root = tmp_path / "kubernetes"
    shutil.copytree(KUBE, copy_root)
    for entry in yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["secretGenerator"]:
        for item in entry["files"]:
            (copy_root / "overlays" / "example" / item.split("=", 1)[1]).write_text("placeholder\n")
    proc = subprocess.run(
        [kubectl, "kustomize", str(copy_root / "overlays" / "example")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = [d for d in yaml.safe_load_all(proc.stdout) if d]

    def key(o: Obj) -> tuple[str, str]:
        name = o["metadata"]["name"]
        return o["kind"], name.rsplit("-", 1)[0] if o["kind"] in ("ConfigMap", "Secret") else name

    assert sorted(map(key, theirs)) == sorted(map(key, overlay))
    mine = {key(o): o for o in overlay}
    for obj in theirs:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        if obj["kind"] in ("Deployment", "Service", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget"):
            assert _strip_generated(obj) == _strip_generated(mine[key(obj)]), obj["kind"]


def _strip_generated(obj: Obj) -> Obj:
    """An object with generated names cut to their base (hashes differ between renderers)."""
    text = json.dumps(obj, sort_keys=True)
    for name in ("sealgate-config", "sealgate-tls", "sealgate-keys", "sealgate-probe"):
        text = _cut_suffix(text, name)
    return dict(json.loads(text))


def _cut_suffix(text: str, name: str) -> str:
    return re.sub(rf'"{name}-[a-z0-9]{{10}}"', f'"{name}"', text)
