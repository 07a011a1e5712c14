//! Running the real `rialto` binary from tests.
#![allow(dead_code)] // Each test file uses its own subset.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_rialto");

/// Spawns `rialto ARGS` (killed when dropped) and waits, at most 30 s, for the stdout line
/// starting with `prefix`; returns the child and the first `http://` URL on that line.
pub async fn spawn(args: &[&str], prefix: &str) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn rialto");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if line.starts_with(prefix) {
                let url = line.split_whitespace().find(|w| w.starts_with("http://"));
                return url.expect("a URL on the line").to_string();
            }
        }
        panic!("rialto {args:?} exited before printing {prefix:?}");
    })
    .await
    .expect("started within 30 s");
    (child, url)
}

/// `rialto merchant create` with no rate limit; returns the API key.
pub fn merchant(data_dir: &str, name: &str) -> String {
    let out = std::process::Command::new(BIN)
        .args([
            "merchant",
            "create",
            "--name",
            name,
            "--rate-per-min",
            "0",
            "--data-dir",
            data_dir,
        ])
        .output()
        .expect("run rialto merchant create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert!(key.starts_with("sk_"), "only the key on stdout");
    key
}

/// `rialto ledger check`: (passed, its report).
pub fn ledger_check(data_dir: &str) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args(["ledger", "check", "--data-dir", data_dir])
        .output()
        .expect("run rialto ledger check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
