//! Running the real `rialto` binary from tests.
#![allow(dead_code)] // Each test file uses its own subset.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_rialto");

/// Spawns `rialto ARGS` (killed when dropped) and waits, at most 30 s, for the stdout line
/// starting with `prefix`; returns the child and the first `http://` URL on that line.
pub async fn spawn(args: &[&str], prefix: &str) -> (Child, String) {
    let (child, mut urls) = spawn_with(args, &[], prefix, Stdio::null()).await;
    (child, urls.remove(0))
}

/// [`spawn`] with extra environment variables and stderr sent to `stderr`; returns every
/// `http://` URL on the line (serve prints the API's, then the ops listener's).
pub async fn spawn_with(
    args: &[&str],
    envs: &[(&str, &str)],
    prefix: &str,
    stderr: Stdio,
) -> (Child, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn rialto");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let urls = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if line.starts_with(prefix) {
                let urls: Vec<String> = line
                    .split_whitespace()
                    .filter(|w| w.starts_with("http://"))
                    .map(str::to_string)
                    .collect();
                assert!(!urls.is_empty(), "a URL on the line {line:?}");
                return urls;
            }
        }
        panic!("rialto {args:?} exited before printing {prefix:?}");
    })
    .await
    .expect("started within 30 s");
    // Keep reading stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, urls)
}

/// `rialto serve` on the data dir `data` with both listeners on free loopback ports, plus
/// `extra` arguments; returns it with its URLs (the API's, then the ops listener's).
pub async fn serve(
    data: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
    stderr: Stdio,
) -> (Child, Vec<String>) {
    let mut args = vec![
        "serve",
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    spawn_with(&args, envs, "rialto listening", stderr).await
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

/// Writes `text` to `dir/name`; returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// A `rialto psp-sim --config` file: PSP `remote`, 2 ms per call.
pub const PSP_SIM_TOML: &str = "[psp]\nid = \"remote\"\nsecret = \"loopback-secret\"\nlatency = { kind = \"fixed\", ms = 2 }\n";

/// The `[[psp]]` table of a serve config that reaches that PSP over HTTP at `url`.
pub fn http_psp_toml(url: &str) -> String {
    format!(
        "[[psp]]\nid = \"remote\"\nkind = \"http\"\nurl = \"{url}\"\nsecret = \"loopback-secret\"\n"
    )
}
