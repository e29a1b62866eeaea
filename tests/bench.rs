//! The benchmark scripts, run small with the binary cargo just built, so that they keep
//! working between the runs whose figures the README reports. Only what the scripts
//! check and record is asserted (every path delivered the blob's exact bytes, every
//! transfer was counted); never a speed, which belongs to the benchmark runs themselves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_scopegate");

#[test]
fn ceiling_script_measures_every_path_and_records_every_transfer() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ceiling.json");
    let run = Command::new("timeout")
        .args(["300", "bash", &format!("{root}/bench/ceiling.sh")])
        .env("SKIP_BUILD", "1")
        .env("SCOPEGATE_BIN", BIN)
        .env("ROUNDS", "2")
        .env("REPS", "1")
        .env("MIB", "16")
        .env("OUT", &out)
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run bench/ceiling.sh: {e} (install coreutils and bash)"));
    let text = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "bench/ceiling.sh failed; run .ci/run to install golang-go, docker-registry, jq, curl:\n{text}");

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let paths = json["paths"].as_object().unwrap();
    let mut names: Vec<&str> = paths.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["direct", "relay_copy", "relay_splice", "scopegate"], "{text}");
    for (name, p) in paths {
        assert!(p["mbps_median"].as_f64().unwrap() > 0.0, "{name}: {p}");
        assert!(p["ratio_vs_direct"].as_f64().unwrap() > 0.0, "{name}: {p}");
        assert_eq!(p["proxy_us_per_mb"].is_null(), name == "direct", "{name}: {p}");
    }
    assert_eq!(paths["direct"]["ratio_vs_direct"].as_f64(), Some(1.0));
    assert_eq!(json["samples"].as_array().unwrap().len(), 4 * 2, "one sample per path, round and transfer");
    assert!(text.contains("scopegate "), "the table names scopegate's row:\n{text}");
}
