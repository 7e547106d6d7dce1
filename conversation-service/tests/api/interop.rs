//! Drives the service from a client that shares none of our Rust code: Python grpcio,
//! with message types built from server reflection, as an operator's tool would.

use std::process::Command;

use crate::helpers::spawn_app;

#[tokio::test]
async fn python_client_through_reflection() {
    let app = spawn_app().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/reflection_client.py"
    );
    let addr = app.addr.to_string();
    let output =
        tokio::task::spawn_blocking(move || Command::new("python3").arg(script).arg(addr).output())
            .await
            .unwrap()
            .expect("python3 with grpcio (see .ci/run)");
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
