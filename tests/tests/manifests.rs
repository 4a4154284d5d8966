//! The Kubernetes manifests (`deploy/kubernetes/`): they render with kustomize, validate
//! strictly against every Kubernetes version they support, hold the least privilege the
//! agent checks for, and ship a configuration `sluice check` accepts. No API server is
//! needed. kubectl and kubernetes-validate (`cargo xtask setup` installs the latter) must be
//! there: without them the tests skip, and under CI=true they fail.

use std::{path::PathBuf, process::Command};

use serde_yaml::Value;

/// The Kubernetes versions the manifests are for: 1.30 and later take them as they are
/// (`recursiveReadOnly` came in 1.30); 1.29 takes the `kubernetes-1.29` overlay.
const VERSIONS: std::ops::RangeInclusive<u32> = 30..=37;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// A tool that must be there; skips (or, under CI, fails) without it.
fn tool(env: &str, default: &str, test: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    if Command::new(&path).arg("--help").output().is_ok() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test} needs {} and CI=true forbids skipping it",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED {test}: {} is not installed (cargo xtask setup installs it)",
        path.display()
    );
    None
}

/// The rendered manifests of `dir`, one document each.
fn rendered_at(kubectl: &PathBuf, dir: &std::path::Path) -> (String, Vec<Value>) {
    let out = Command::new(kubectl)
        .args(["kustomize"])
        .arg(dir)
        .output()
        .expect("kubectl kustomize");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let docs = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a document"))
        .collect();
    (text, docs)
}

fn rendered(kubectl: &PathBuf) -> (String, Vec<Value>) {
    rendered_at(kubectl, &deploy_dir())
}

/// Validates rendered manifests strictly for one Kubernetes version.
fn validate(validator: &PathBuf, text: &str, version: &str) {
    let file = std::env::temp_dir().join(format!("sluice-manifests-{}.yaml", std::process::id()));
    std::fs::write(&file, text).expect("write");
    let out = Command::new(validator)
        .args(["--strict", "--kubernetes-version", version])
        .arg(&file)
        .output()
        .expect("kubernetes-validate");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !report.contains("ERROR"),
        "{version}: {report}"
    );
    for kind in ["namespace", "serviceaccount", "configmap", "daemonset"] {
        assert!(
            report.contains(&format!("passed for resource {kind}/")),
            "{version} {kind}: {report}"
        );
    }
    let _ = std::fs::remove_file(&file);
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn the_manifests_validate_strictly_for_kubernetes_1_29_to_1_37() {
    let test = "the_manifests_validate_strictly_for_kubernetes_1_29_to_1_37";
    let Some(kubectl) = tool("KUBECTL", "kubectl", test) else {
        return;
    };
    let Some(validate_bin) = tool("SLUICE_KUBERNETES_VALIDATE", "kubernetes-validate", test) else {
        return;
    };
    let (text, _) = rendered(&kubectl);
    for minor in VERSIONS {
        validate(&validate_bin, &text, &format!("1.{minor}.0"));
    }
    let (old, docs) = rendered_at(&kubectl, &deploy_dir().join("../kubernetes-1.29"));
    validate(&validate_bin, &old, "1.29.0");
    // The overlay drops that one field and nothing else.
    let (_, base) = rendered(&kubectl);
    let mut patched = base.clone();
    let ds = patched
        .iter_mut()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .expect("DaemonSet");
    ds["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][1]
        .as_mapping_mut()
        .expect("mount")
        .remove("recursiveReadOnly")
        .expect("the base has it");
    assert_eq!(docs, patched);
}

#[test]
fn the_daemonset_holds_least_privilege_and_what_the_docs_say() {
    let test = "the_daemonset_holds_least_privilege_and_what_the_docs_say";
    let Some(kubectl) = tool("KUBECTL", "kubectl", test) else {
        return;
    };
    let (_, docs) = rendered(&kubectl);
    let ds = kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], Value::Bool(false));
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    // Exactly what `sluice run` checks for (tests/tests/privileges.rs proves they suffice).
    assert_eq!(
        strings(&sc["capabilities"]["add"]),
        ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"]
    );
    assert_ne!(pod["hostNetwork"], Value::Bool(true));
    assert_eq!(
        pod["priorityClassName"].as_str(),
        Some("system-node-critical")
    );
    assert_eq!(pod["tolerations"][0]["operator"].as_str(), Some("Exists"));
    assert_eq!(
        ds["spec"]["updateStrategy"]["type"].as_str(),
        Some("RollingUpdate")
    );
    assert_eq!(pod["automountServiceAccountToken"], Value::Bool(false));
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/ready")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/live")
    );
    assert_eq!(c["env"][0]["name"].as_str(), Some("NODE_NAME"));
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("spec.nodeName")
    );
    let mount = |name: &str| {
        c["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|m| m["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no mount {name}"))
            .clone()
    };
    let cgroup = mount("cgroup");
    assert_eq!(cgroup["readOnly"], Value::Bool(true));
    assert_eq!(cgroup["recursiveReadOnly"].as_str(), Some("Enabled"));
    assert_eq!(mount("bpffs")["mountPath"].as_str(), Some("/sys/fs/bpf"));
    // The configuration names the cgroup tree where the DaemonSet mounts it, and listens
    // where the probes and the scrapers look.
    let config: Value = serde_yaml::from_str(
        kind(&docs, "ConfigMap")["data"]["sluice.yaml"]
            .as_str()
            .expect("sluice.yaml"),
    )
    .expect("the ConfigMap's configuration");
    assert_eq!(config["cgroup_root"], cgroup["mountPath"]);
    let port = c["ports"][0]["containerPort"].as_u64().expect("port");
    assert!(
        config["metrics_address"]
            .as_str()
            .is_some_and(|a| a.ends_with(&format!(":{port}"))),
        "{config:?}"
    );
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    let pm = kind(&docs, "PodMonitor");
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"],
        ds["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(
        pm["spec"]["podMetricsEndpoints"][0]["port"],
        c["ports"][0]["name"]
    );
}

#[test]
fn the_configmaps_configuration_passes_sluice_check() {
    let text = std::fs::read_to_string(deploy_dir().join("configmap.yaml")).expect("configmap");
    let cm: Value = serde_yaml::from_str(&text).expect("yaml");
    let config = cm["data"]["sluice.yaml"].as_str().expect("sluice.yaml");
    let file = std::env::temp_dir().join(format!("sluice-configmap-{}.yaml", std::process::id()));
    std::fs::write(&file, config).expect("write");
    let out = Command::new(sluice_tests::agent::sluice_bin())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("sluice check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&file);
}

/// The ConfigMap's commented `cluster:` block, uncommented, passes `sluice check`, and every
/// file it names lies in the DaemonSet's mount of the etcd client's Secret.
#[test]
fn the_configmaps_cluster_block_passes_sluice_check_and_names_the_secrets_mount() {
    let text = std::fs::read_to_string(deploy_dir().join("configmap.yaml")).expect("configmap");
    let cm: Value = serde_yaml::from_str(&text).expect("yaml");
    let config = cm["data"]["sluice.yaml"].as_str().expect("sluice.yaml");
    let block: Vec<&str> = config
        .lines()
        .skip_while(|l| !l.starts_with("# cluster:"))
        .take_while(|l| l.starts_with("# "))
        .map(|l| &l[2..])
        .collect();
    assert!(block.len() > 1, "no commented cluster block in:\n{config}");
    let enabled = format!("{}\n{config}", block.join("\n"));
    let cluster: Value = serde_yaml::from_str(&block.join("\n")).expect("the cluster block");
    let file = std::env::temp_dir().join(format!(
        "sluice-configmap-cluster-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&file, &enabled).expect("write");
    let out = Command::new(sluice_tests::agent::sluice_bin())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("sluice check");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}\n{enabled}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ds: Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy_dir().join("daemonset.yaml")).expect("daemonset"),
    )
    .expect("yaml");
    let pod = &ds["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|m| m["name"].as_str() == Some("etcd-client"))
        .expect("the etcd client's mount");
    let dir = mount["mountPath"].as_str().expect("mountPath");
    let volume = pod["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"].as_str() == Some("etcd-client"))
        .expect("the etcd client's volume");
    assert_eq!(volume["secret"]["optional"], Value::Bool(true));
    let files = [
        &cluster["cluster"]["tls"]["ca"],
        &cluster["cluster"]["tls"]["cert"],
        &cluster["cluster"]["tls"]["key"],
        &cluster["cluster"]["auth"]["password_file"],
    ];
    for f in files {
        let path = f.as_str().expect("a path");
        assert!(
            path.starts_with(&format!("{dir}/")),
            "{path} is not in {dir}"
        );
    }
}
