#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
//! The Kubernetes manifests (`k8s/`) against Kubernetes and against the binaries they run.
//!
//! - every overlay renders with `kubectl kustomize` and validates strictly with the pinned
//!   `kubernetes-validate` (`.tools/k8s-venv`, installed by `deploy/local/prereqs.sh`) for the
//!   Kubernetes of the local kubectl (1.32) and the newest the package knows, and so do the
//!   Secret templates;
//! - every env key, port, probe path and binary name of each overlay is one the binaries print
//!   themselves with `--print-config-keys` (built here with `cargo build`, the same profile as
//!   this test), and the grace period is longer than their drain;
//! - the copies kustomize needs below its root (prices, rules, dashboards) equal their originals.
//!
//! The checks of the rendered YAML are in `tests/k8s/check_manifests.py`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const OVERLAYS: [&str; 2] = ["dev", "prod"];
const SERVICES: [&str; 5] = ["collector", "aggregator", "analyzer", "monitor", "rl-pipeline"];
/// The Kubernetes of the local kubectl, and the newest kubernetes-validate knows.
const KUBERNETES: [&str; 2] = ["1.32.0", "latest"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate sits in the workspace").to_path_buf()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("k8s_manifests").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn python() -> PathBuf {
    let python = root().join(".tools/k8s-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run deploy/local/prereqs.sh (it installs tests/k8s/requirements.txt there)",
        python.display()
    );
    python
}

/// Runs the checker; its output is the failure message.
fn check(args: &[&str]) {
    let out = Command::new(python())
        .arg(root().join("tests/k8s/check_manifests.py"))
        .args(args)
        .output()
        .expect("run tests/k8s/check_manifests.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "check_manifests.py {args:?} failed:\n{text}");
    eprint!("{text}");
}

/// `kubectl kustomize k8s/overlays/<overlay>`, written to a file of the test `test` (tests run
/// at the same time, each in its own process).
fn render(overlay: &str, test: &str) -> PathBuf {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join("k8s/overlays").join(overlay))
        .output()
        .unwrap_or_else(|e| panic!("kubectl not found on PATH ({e}): the manifests' test renders k8s/ with it"));
    assert!(out.status.success(), "kubectl kustomize {overlay}: {}", String::from_utf8_lossy(&out.stderr));
    let path = scratch(test).join(format!("{overlay}.yaml"));
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

/// How many top-level resources of `kind` a rendered overlay holds.
fn count(rendered: &Path, kind: &str) -> usize {
    let wanted = format!("kind: {kind}");
    std::fs::read_to_string(rendered).unwrap().lines().filter(|l| *l == wanted).count()
}

#[test]
fn every_overlay_renders_and_validates() {
    let mut files = Vec::new();
    for overlay in OVERLAYS {
        let rendered = render(overlay, "validate");
        // What the base promises in every overlay; dev adds its NATS, InfluxDB, Alertmanager
        // and Grafana.
        let extra = if overlay == "dev" { 4 } else { 0 };
        for (kind, n) in [
            ("Namespace", 1),
            ("Deployment", SERVICES.len() + extra),
            ("PodDisruptionBudget", SERVICES.len()),
            ("HorizontalPodAutoscaler", 3),
        ] {
            assert_eq!(count(&rendered, kind), n, "{kind} in {overlay}");
        }
        assert_eq!(count(&rendered, "PersistentVolumeClaim"), if overlay == "dev" { 2 } else { 0 }, "{overlay}");
        assert!(count(&rendered, "NetworkPolicy") >= 5, "{overlay}");
        files.push(rendered);
    }
    for entry in std::fs::read_dir(root().join("k8s/secrets")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    let files: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    for version in KUBERNETES {
        let mut args = vec!["validate", version];
        args.extend(&files);
        check(&args);
    }
}

#[test]
fn copies_equal_their_originals() {
    let root = root();
    let same = |copy: &Path, original: &Path| {
        let a = std::fs::read(copy).unwrap_or_else(|e| panic!("{}: {e}", copy.display()));
        let b = std::fs::read(original).unwrap_or_else(|e| panic!("{}: {e}", original.display()));
        assert!(a == b, "{} differs from {}: copy it again", copy.display(), original.display());
    };
    same(&root.join("k8s/base/prices.toml"), &root.join("deploy/prices.toml"));
    same(&root.join("k8s/base/alerts.toml"), &root.join("deploy/alerts.toml"));

    // Every dashboard of deploy/grafana/dashboards has an identical copy the dev overlay
    // provisions, and no copy outlives its original.
    let originals = root.join("deploy/grafana/dashboards");
    let copies = root.join("k8s/overlays/dev/grafana/dashboards");
    let kustomization = std::fs::read_to_string(root.join("k8s/overlays/dev/kustomization.yaml")).unwrap();
    let json_in = |dir: &Path| -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut names: Vec<String> = entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        names
    };
    for name in json_in(&originals) {
        same(&copies.join(&name), &originals.join(&name));
        assert!(
            kustomization.contains(&format!("grafana/dashboards/{name}")),
            "the grafana-dashboards generator of k8s/overlays/dev/kustomization.yaml does not list {name}"
        );
    }
    for name in json_in(&copies) {
        assert!(originals.join(&name).exists(), "{name} in k8s/overlays/dev/grafana/dashboards has no original");
    }
}

/// Builds the service binaries as cargo builds this test (same target directory and profile)
/// and returns their paths.
fn service_binaries() -> Vec<PathBuf> {
    // <target>/<profile>/deps/k8s_manifests-<hash>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).expect("the test runs from <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("<target>/<profile>");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(other) => other.to_owned(),
        None => panic!("no profile directory in {}", exe.display()),
    };
    let mut build = Command::new(env!("CARGO"));
    build.current_dir(root()).args(["build", "--bins", "--profile", &profile]).env("CARGO_TARGET_DIR", target_dir);
    for service in SERVICES {
        build.args(["-p", &format!("modelperf-{service}")]);
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build of the service binaries failed");
    SERVICES
        .iter()
        .map(|s| {
            let bin = profile_dir.join(format!("modelperf-{s}"));
            assert!(bin.exists(), "{} was not built", bin.display());
            bin
        })
        .collect()
}

/// `<binary> --print-config-keys`, written to a file. A binary that does not know the flag
/// would start the service instead: it gets an unreachable NATS and a deadline.
fn describe(bin: &Path, dir: &Path) -> PathBuf {
    let out_path = dir.join(format!("{}.json", bin.file_name().unwrap().to_string_lossy()));
    let mut child = Command::new(bin)
        .arg("--print-config-keys")
        .env("MODELPERF_NATS__URL", "nats://127.0.0.1:1")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{} --print-config-keys did not exit within 20 s: does it know the flag?", bin.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{} --print-config-keys exited with {status}", bin.display());
    out_path
}

#[test]
fn manifests_match_the_binaries() {
    let dir = scratch("describe");
    let described: Vec<PathBuf> = service_binaries().iter().map(|b| describe(b, &dir)).collect();
    let grace = modelperf_telemetry::process::DRAIN_GRACE.as_secs_f64().to_string();
    for overlay in OVERLAYS {
        let rendered = render(overlay, "match");
        let mut args = vec!["match", rendered.to_str().unwrap(), &grace];
        args.extend(described.iter().map(|p| p.to_str().unwrap()));
        check(&args);
    }
}
