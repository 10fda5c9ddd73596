//! The OpenAPI document against the server that serves it: schemathesis (from PyPI, in a venv
//! under the target directory) runs every operation of `/v1/openapi.json` with all its checks,
//! a fixed seed and a bounded number of examples, as an admin key. Any disagreement between
//! the document and what the server does (a status, a body, a header, data accepted or refused
//! against the schema) fails the test. Exceptions are in `tests/schemathesis.toml`, each with
//! its reason in docs/decisions.md.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// Pinned: a new release may add checks, and a change of verdict should come with a commit.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
const SEED: &str = "20261202";
const MAX_EXAMPLES: &str = "25";
const ADMIN_KEY: &str = "e2e-fuzz-admin-key-0123456789";

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target"))
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The venv with the pinned schemathesis, made on first use (python3 -m venv, pip from
/// PyPI); a marker names the installed pin so a changed pin (or a broken venv) reinstalls.
fn schemathesis() -> PathBuf {
    let venv = target_dir().join("schemathesis-venv");
    let bin = venv.join("bin").join("schemathesis");
    let marker = venv.join(format!(".installed-{SCHEMATHESIS}"));
    let works = |bin: &Path| {
        Command::new(bin)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if marker.exists() && works(&bin) {
        return bin;
    }
    // Half-made, another pin, or its Python is gone: start again.
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .unwrap_or_else(|e| panic!("cannot remove {}: {e}", venv.display()));
    }
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "python3 -m venv (Debian: apt-get install python3-venv)",
    );
    run(
        Command::new(venv.join("bin").join("pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            SCHEMATHESIS,
        ]),
        &format!("pip install {SCHEMATHESIS}"),
    );
    std::fs::write(&marker, b"").expect("write venv marker");
    bin
}

#[test]
fn openapi_document_matches_the_server_under_schemathesis() {
    let tool = schemathesis();
    // Objects named in tests/schemathesis.toml's dictionaries.
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{ADMIN_KEY}\"\nrateLimit = 0\n\n\
         [[tenants]]\nname = \"acme\"\ncustomerNumber = 500001\nsigningSecret = \"fuzz-hmac\"\n\n\
         [[routingPlans]]\ntenant = \"acme\"\nname = \"main\"\n\
         blocks = [{{ blockType = \"HANGUP\", hangupCause = \"NORMAL_CLEARING\" }}]\n\n\
         [[numbers]]\nnumber = \"100\"\ntenant = \"acme\"\nroutingPlan = \"main\"\n\n\
         [[sipUsers]]\ntenant = \"acme\"\nusername = \"alice\"\npassword = \"fuzz-sip\"\n\n\
         [[trunks]]\ntenant = \"acme\"\nname = \"carrier\"\nhost = \"127.0.0.1\"\n\
         password = \"fuzz-trunk\"\n"
    );
    let server = Server::start(&prov, true);
    let url = format!("http://127.0.0.1:{}/v1/openapi.json", server.http_port());
    let config: &Path = &manifest_dir().join("tests").join("schemathesis.toml");
    let started = Instant::now();
    // Run from the server's temporary home: schemathesis keeps its example database and
    // reports in the working directory.
    let out = Command::new(&tool)
        .current_dir(server.dir())
        .env("NO_COLOR", "1")
        .env(
            "SCHEMATHESIS_HOOKS",
            manifest_dir().join("tests").join("schemathesis_hooks.py"),
        )
        .arg("--config-file")
        .arg(config)
        .args([
            "run",
            &url,
            "--checks",
            "all",
            "--seed",
            SEED,
            "--max-examples",
            MAX_EXAMPLES,
            // One worker: the stateful phase's order, and so the run, stays reproducible.
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--header",
            &format!("Authorization: Bearer {ADMIN_KEY}"),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains("passed") || l.contains("failure") || l.contains("error"))
        .unwrap_or("");
    eprintln!(
        "schemathesis finished in {:.1}s: {summary}",
        started.elapsed().as_secs_f64()
    );
    server.check(
        out.status.success(),
        format!(
            "schemathesis found disagreements between /v1/openapi.json and the server \
             (exit {}):\n{stdout}\n{stderr}",
            out.status
        ),
    );
    // A run that tested nothing must not pass for a clean one.
    let generated = stdout
        .lines()
        .find_map(|l| {
            // "2091 generated, 2091 passed, 60 skipped"
            let (n, _) = l.trim().split_once(" generated, ")?;
            n.parse::<u64>().ok()
        })
        .unwrap_or(0);
    assert!(
        generated >= 500,
        "schemathesis generated only {generated} test cases:\n{stdout}"
    );
}
