"""Render the Kubernetes manifests (deploy/kubernetes: the base and each overlay)
with `kubectl kustomize`, validate every object against the Kubernetes schemas of
KUBE_VERSION (kubernetes-validate, strict: no unknown fields), check what the
manifests promise, and run `gantry config check` on every configuration they
carry, laid out as the pods mount them.

    python3 deploy_check.py GANTRY_BIN REPO

Prints one JSON line per rendering: {"kustomization", "kinds", "configs"}; exits
non-zero naming the first broken promise.
"""

import json
import os
import subprocess
import sys
import tempfile
import tomllib

import kubernetes_validate
import yaml

KUBE_VERSION = "1.32.0"
KUSTOMIZATIONS = ["base", "overlays/edge-cpu", "overlays/gpu-cluster"]

gantry, repo = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])


def fail(where, message):
    sys.exit(f"{where}: {message}")


def render(path):
    out = subprocess.run(
        ["kubectl", "kustomize", path], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        fail(path, f"kubectl kustomize failed: {out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs, kind, name):
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"].startswith(name):
            return d
    return None


def container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


def config_check(where, path):
    out = subprocess.run([gantry, "config", "check", path], capture_output=True, text=True)
    if out.returncode != 0:
        fail(where, f"gantry config check: {out.stdout}{out.stderr}")


def mounted(where, deployment, config_maps):
    """The file the container's --config names, from the ConfigMap volume mounted
    at its directory: (mount path, file name, text)."""
    c = container(deployment)
    path = c["args"][c["args"].index("--config") + 1]
    directory, name = os.path.split(path)
    mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == directory), None)
    if mount is None:
        fail(where, f"nothing is mounted at {directory}, where --config {path} is")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == mount["name"])
    cm = config_maps.get(volume.get("configMap", {}).get("name"))
    if cm is None or name not in cm["data"]:
        fail(where, f"{path} is not a key of the ConfigMap mounted at {directory}")
    return directory, name, cm["data"][name]


def check(kustomization):
    where = f"deploy/kubernetes/{kustomization}"
    docs = render(os.path.join(repo, "deploy/kubernetes", kustomization))
    for d in docs:
        try:
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
        except Exception as e:  # the library raises its own error classes
            fail(where, f"{d['kind']}/{d['metadata']['name']} is not valid for Kubernetes {KUBE_VERSION}: {e}")
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    gateway = by_kind(docs, "Deployment", "gantry-gateway")
    backend = by_kind(docs, "Deployment", "gantry-backend")
    if not gateway or not backend:
        fail(where, "a gateway and a backend Deployment")

    # The gateway's configuration, as the pod sees it; its probes and grace period.
    _, _, text = mounted(where, gateway, config_maps)
    gw_config = tomllib.loads(text)
    with tempfile.TemporaryDirectory() as t:
        path = os.path.join(t, "gantry.toml")
        with open(path, "w") as f:
            f.write(text)
        config_check(where, path)
    c = container(gateway)
    admin_port = int(gw_config["admin"]["address"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if ports.get("admin") != admin_port:
        fail(where, f"the admin port {admin_port} is not the container's `admin` port")
    if c["readinessProbe"]["httpGet"]["path"] != "/readyz":
        fail(where, "the gateway's readiness probe is /readyz")
    if c["livenessProbe"]["httpGet"]["path"] != "/healthz":
        fail(where, "the gateway's liveness probe is /healthz")
    grace = gw_config["limits"]["shutdown_grace_period_ms"] / 1000
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    period = gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    if period < pre_stop + grace:
        fail(where, f"gateway: terminationGracePeriodSeconds {period} < preStop {pre_stop} + shutdown grace {grace}")

    # The backends: behind the headless Service the gateway's pool names.
    _, _, text = mounted(where, backend, config_maps)
    be_config = tomllib.loads(text)
    with tempfile.TemporaryDirectory() as t:
        # As in the pod: the file in $GANTRY_HOME/etc, the models in $GANTRY_HOME/models.
        os.mkdir(os.path.join(t, "etc"))
        os.symlink(os.path.join(repo, "models"), os.path.join(t, "models"))
        path = os.path.join(t, "etc", "backend.toml")
        with open(path, "w") as f:
            f.write(text)
        config_check(where, path)
    grpc_port = int(be_config["backend"]["listen"].rsplit(":", 1)[1])
    b = container(backend)
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
        if b[probe].get("grpc", {}).get("port") != grpc_port:
            fail(where, f"the backend's {probe} is a gRPC health probe on {grpc_port}")
    grace = be_config["backend"]["shutdown_grace_period_ms"] / 1000
    pre_stop = b["lifecycle"]["preStop"]["sleep"]["seconds"]
    period = backend["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    if period < pre_stop + grace:
        fail(where, f"backend: terminationGracePeriodSeconds {period} < preStop {pre_stop} + shutdown grace {grace}")
    service = by_kind(docs, "Service", "gantry-backend")
    if not service or service["spec"].get("clusterIP") != "None":
        fail(where, "the backends are behind a headless Service")
    endpoints = [e for p in gw_config["inference_pools"] for e in p["endpoints"]]
    wanted = f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    if wanted not in endpoints or service["spec"]["ports"][0]["port"] != grpc_port:
        fail(where, f"the gateway's inference pool names {wanted}: {endpoints}")
    if backend["spec"]["selector"]["matchLabels"].items() > service["spec"]["selector"].items():
        fail(where, "the headless Service selects the backend pods")

    # Disruption budgets and who may reach what.
    for d in (gateway, backend):
        pdb = by_kind(docs, "PodDisruptionBudget", d["metadata"]["name"])
        if not pdb or pdb["spec"]["selector"]["matchLabels"] != d["spec"]["selector"]["matchLabels"]:
            fail(where, f"a PodDisruptionBudget for {d['metadata']['name']}")
    policy = by_kind(docs, "NetworkPolicy", "gantry-gateway")
    admin_rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == admin_port for p in r["ports"])]
    if not admin_rules or any(not r.get("from") or any("ipBlock" in f for f in r["from"]) for r in admin_rules):
        fail(where, "the admin port is reachable only from inside the cluster")
    policy = by_kind(docs, "NetworkPolicy", "gantry-backend")
    grpc_rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == grpc_port for p in r["ports"])]
    gateway_labels = gateway["spec"]["template"]["metadata"]["labels"]
    for r in grpc_rules:
        for f in r.get("from", [{}]):
            selector = f.get("podSelector", {}).get("matchLabels")
            if not selector or "namespaceSelector" in f or selector.items() > gateway_labels.items():
                fail(where, "the backends' gRPC port is reachable only from the gateway's pods")
    if not grpc_rules:
        fail(where, "a rule for the backends' gRPC port")

    # GPU backends: a GPU each, on GPU nodes, the model on it.
    if "gpu" in kustomization:
        spec = backend["spec"]["template"]["spec"]
        limits = b["resources"].get("limits", {})
        if limits.get("nvidia.com/gpu") != "1":
            fail(where, "each GPU backend asks for one nvidia.com/gpu")
        if not spec.get("nodeSelector") or not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])):
            fail(where, "GPU backends select GPU nodes and tolerate their taint")
        devices = [m.get("device", "cpu") for m in be_config["models"] if m["kind"] == "generate"]
        if not all(d.startswith("cuda") for d in devices):
            fail(where, f"the generation model runs on the GPU: {devices}")

    kinds = {}
    for d in docs:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    print(json.dumps({"kustomization": kustomization, "kinds": kinds, "configs": sorted(config_maps)}), flush=True)


for k in KUSTOMIZATIONS:
    check(k)
