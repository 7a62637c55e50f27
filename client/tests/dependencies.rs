//! brainstemctl must not link the daemon: it shares `brainstem-proto` and `brainstem-keys` with it,
//! never `brainstemd` itself, and so never sled or Cedar (issue 8; `.ci/run` checks the same).

use std::process::Command;

#[test]
fn the_client_depends_on_neither_the_daemon_nor_its_store_or_policy_engine() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "brainstem-client",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8(output.stdout).expect("utf-8 cargo tree output");
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"brainstem-proto"), "{tree}");
    assert!(crates.contains(&"brainstem-keys"), "{tree}");
    for forbidden in ["brainstemd", "sled", "cedar-policy"] {
        assert!(
            !crates.contains(&forbidden),
            "brainstem-client depends on {forbidden}:\n{tree}"
        );
    }
}
