//! Deployment artifacts, checked with the binary cargo just built: the Helm chart rendered
//! for every values set and validated for Kubernetes 1.25 and later (each rendered
//! configuration accepted by `scopegate config check`), and the Containerfile built with
//! buildah and run. The work is done by the scripts in `tests/helm/`, which print one line
//! per check; these tests fail when a script does, or when its tools are missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_scopegate");

fn run_script(script: &str) {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("timeout")
        .args(["600", "bash", &format!("{root}/tests/helm/{script}"), BIN])
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e} (install coreutils and bash)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let summary = text.lines().rev().find(|l| l.contains(" passed, ")).unwrap_or("no summary line");
    assert!(
        out.status.success(),
        "{script} failed ({summary}); run .ci/run to install golang-go, golang-github-masterminds-sprig-dev, buildah, \
         and pip kubernetes-validate jsonschema pyyaml:\n{text}"
    );
    assert!(summary.ends_with(" 0 failed"), "{script}: {summary}");
}

#[test]
fn helm_chart_renders_and_validates_for_every_values_set() {
    run_script("render-and-validate.sh");
}

#[test]
fn containerfile_builds_with_buildah_and_the_image_runs() {
    run_script("buildah-build.sh");
}
