//! The Kubernetes manifests (deploy/kubernetes): the base and each overlay render
//! with `kubectl kustomize`, every object is valid for the pinned Kubernetes
//! version, what they promise holds (probes, grace periods, disruption budgets,
//! network policies, GPU scheduling), and every gantry configuration they carry
//! passes `gantry config check` where the pods mount it
//! (proxy/tests/python/deploy_check.py).

use std::path::Path;
use std::process::Command;

#[test]
fn the_kubernetes_manifests_render_validate_and_carry_valid_configurations() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .arg(repo.join("proxy/tests/python/deploy_check.py"))
        .arg(env!("CARGO_BIN_EXE_gantry"))
        .arg(&repo)
        .output()
        .expect("python3 runs (scripts/setup.sh installs kubectl and kubernetes-validate)");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let rendered: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = rendered
        .iter()
        .map(|r| r["kustomization"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["base", "overlays/edge-cpu", "overlays/gpu-cluster"],
        "{stdout}"
    );
    for r in &rendered {
        for (kind, n) in [
            ("Deployment", 2),
            ("Service", 2),
            ("ConfigMap", 2),
            ("PodDisruptionBudget", 2),
            ("NetworkPolicy", 2),
        ] {
            assert_eq!(r["kinds"][kind], n, "{r}");
        }
    }
}
