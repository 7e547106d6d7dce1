//! Drives the service from a client that shares none of our Rust code: Python grpcio,
//! with message types built from server reflection, as an operator's tool would.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::helpers::spawn_app;

/// `INTEROP_PYTHON` (scripts/test.sh sets it to target/venv's), else that venv when it
/// exists, else `python3`.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("INTEROP_PYTHON") {
        return python.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

#[tokio::test]
async fn python_client_through_reflection() {
    let app = spawn_app().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/reflection_client.py"
    );
    let addr = app.addr.to_string();
    let python = python();
    let output =
        tokio::task::spawn_blocking(move || Command::new(&python).arg(script).arg(addr).output())
            .await
            .unwrap()
            .expect("python with grpcio: run scripts/test.sh, which installs it into target/venv");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["seqs"], serde_json::json!([1, 2]));
    assert_eq!(report["bad_argument_code"], "INVALID_ARGUMENT");
    assert_eq!(report["not_found_code"], "NOT_FOUND");
    assert_eq!(report["listed"], 1);
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 2);
}
