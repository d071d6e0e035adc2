//! `demo.sh`, the README's first command, decides right on a machine without cmake: it says
//! what it installs and why, installs it with apt-get (after `apt-get update`), and only then
//! builds and runs the demo. `apt-get`, `sudo` and `cargo` are stand-ins that record their
//! arguments here (the real run, on a fresh machine without cmake, is in the README).

use std::path::Path;
use std::process::Command;

fn stub(dir: &Path, name: &str, log: &Path) {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("#!/bin/sh\necho \"{name} $*\" >> {}\n", log.display()),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&path).status().unwrap();
}

/// Run demo.sh with only `bin` and the basic tools on PATH; returns (stderr, recorded calls).
fn run(with_cmake: bool) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("calls.log");
    std::fs::write(&log, "").unwrap();
    for tool in ["apt-get", "sudo", "cargo", "cc"] {
        stub(&bin, tool, &log);
    }
    if with_cmake {
        stub(&bin, "cmake", &log);
    }
    // The few system tools the script uses, linked one by one, so that PATH holds no cmake
    // even on a machine that has one.
    for tool in ["bash", "id", "dirname", "sh"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {tool}"));
        std::os::unix::fs::symlink(found, bin.join(tool)).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo.sh");
    let out = Command::new(bin.join("bash"))
        .arg(&script)
        .arg("--seconds")
        .arg("5")
        .env_clear()
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stderr).to_string(),
        std::fs::read_to_string(&log).unwrap(),
    )
}

#[test]
fn without_cmake_it_says_why_installs_it_then_runs_the_demo() {
    let (stderr, calls) = run(false);
    assert!(
        stderr.contains("needs cmake") && stderr.contains("zlib-ng"),
        "{stderr}"
    );
    let lines: Vec<&str> = calls.lines().filter(|l| !l.starts_with("cc ")).collect();
    // As root (CI, containers) there is no sudo; otherwise every apt-get goes through it.
    let apt: Vec<&str> = lines
        .iter()
        .map(|l| l.trim_start_matches("sudo "))
        .collect();
    assert!(apt[0].starts_with("apt-get update"), "{calls}");
    assert!(
        apt[1].starts_with("apt-get install") && apt[1].contains("cmake"),
        "{calls}"
    );
    assert_eq!(
        apt[2], "cargo run --locked --release -- demo --seconds 5",
        "{calls}"
    );
}

#[test]
fn with_cmake_it_installs_nothing() {
    let (stderr, calls) = run(true);
    assert!(!stderr.contains("installing"), "{stderr}");
    assert_eq!(
        calls.trim(),
        "cargo run --locked --release -- demo --seconds 5"
    );
}
