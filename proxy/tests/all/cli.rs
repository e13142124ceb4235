//! `gantry config check` prints, per problem, the file, the field path and what is wrong.

use crate::harness::{Gateway, Origin};
use std::path::{Path, PathBuf};
use std::process::Command;

fn check(files: &[&Path]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .arg("config")
        .arg("check")
        .args(files)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const BASE: &str = r#"
[[listeners]]
name = "http"
address = "127.0.0.1:8080"
[[pools]]
name = "p"
endpoints = ["127.0.0.1:3000"]
"#;

#[test]
fn shipped_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    assert!(
        files.len() >= 3,
        "default, edge and tls-edge examples: {files:?}"
    );
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (ok, text) = check(&refs);
    assert!(ok, "{text}");
}

#[test]
fn keys_create_prints_a_new_key_once_and_an_entry_config_check_accepts() {
    let create = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["keys", "create", "--name", name])
            .output()
            .unwrap()
    };
    let (a, b) = (create("team-a"), create("team-a"));
    assert!(a.status.success());
    let text = String::from_utf8(a.stdout).unwrap();
    assert_ne!(
        text,
        String::from_utf8(b.stdout).unwrap(),
        "a new key each time"
    );
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("gk-"))
        .expect("the key");
    let entry = &text[text.find("[[keys]]").expect("an entry")..];
    assert!(
        !entry.contains(key),
        "the entry holds the digest, not the key"
    );
    assert!(entry.contains(&gantry::tenants::digest_hex(key)), "{entry}");
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "keys.toml",
        &format!("{BASE}[[routes]]\nname = \"r\"\npool = \"p\"\nauth = \"keys\"\n{entry}"),
    );
    let (ok, out) = check(&[&file]);
    assert!(ok, "{out}");
    let bad = create("not a label");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--name `not a label` must be"));
}

/// `gantry keys create|list|revoke --config` work on the configuration's
/// key store (here the embedded file), and a gateway started on it honours
/// what they wrote.
#[tokio::test]
async fn keys_commands_write_the_configured_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{BASE}[[routes]]\nname = \"r\"\npool = \"p\"\nauth = \"keys\"\n\
         [key_store]\npath = \"keys.redb\"\n[[keys]]\nname = \"team-a\"\n"
    );
    let file = write(dir.path(), "gantry.toml", &config);
    let keys = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .arg("keys")
            .args(args)
            .args(["--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = keys(&["create", "--name", "nobody"]);
    assert!(!ok && text.contains("no tenant named `nobody`"), "{text}");
    let (ok, text) = keys(&["create", "--name", "team-a"]);
    assert!(ok, "{text}");
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("gk-"))
        .expect("the key")
        .to_string();
    let sha = gantry::tenants::digest_hex(&key);
    let (ok, listed) = keys(&["list"]);
    assert!(
        ok && listed.contains(&format!("team-a\t{sha}\tstore")),
        "{listed}"
    );
    assert!(!listed.contains(&key));

    // A gateway on this configuration lets the key in.
    let origin = Origin::start("o").await;
    let served = config.replace("127.0.0.1:3000", &origin.addr.to_string());
    let gw = Gateway::start_in(&served.replace("127.0.0.1:8080", "{gateway}"), dir.path()).await;
    let res = gw
        .client
        .get(gw.url("/x"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // While it runs it holds the file: the command says to use its admin listener.
    let (ok, text) = keys(&["list"]);
    assert!(!ok && text.contains("admin listener"), "{text}");
    drop(gw);

    let (ok, text) = keys(&["revoke", &sha]);
    assert!(ok, "{text}");
    let (ok, text) = keys(&["revoke", &sha]);
    assert!(!ok && text.contains("no key with this sha256"), "{text}");
    let gw = Gateway::start_in(&served.replace("127.0.0.1:8080", "{gateway}"), dir.path()).await;
    let res = gw
        .client
        .get(gw.url("/x"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "revoked");
}

/// `gantry serve` on the embedded defaults from a directory that is not the
/// source tree finds its data in `$GANTRY_HOME` (laid out as the tree, as
/// scripts/install.sh makes it); without it, the error names the missing
/// file and what installs it.
#[test]
fn serve_runs_from_any_directory_on_the_data_home() {
    use std::io::BufRead;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cwd = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let serve = |home: &Path| {
        Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["serve", "--no-backend"])
            .current_dir(cwd.path())
            .env("GANTRY_HOME", home)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = serve(empty.path()).wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains(&format!("{}", empty.path().display()))
            && text.contains("predict_compat.wasm")
            && text.contains("scripts/install.sh"),
        "{text}"
    );

    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("config/examples")).unwrap();
    std::os::unix::fs::symlink(repo.join("plugins"), home.path().join("plugins")).unwrap();
    let mut child = serve(home.path());
    let log = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    for line in log.lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        // Health checks of the default's pool (nothing on :3000 here) warn
        // before that; only a failure to start ends the wait early.
        if line.contains("gantry gateway starting")
            || line.contains("ERROR")
            || line.starts_with("error:")
        {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if seen.contains("in use") {
        eprintln!("SKIPPED the start: the embedded default's ports are taken here: {seen}");
        return;
    }
    assert!(seen.contains("gantry gateway starting"), "{seen}");
}

#[test]
fn every_problem_is_reported_with_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.toml",
        &format!(
            r#"{BASE}
[[pools]]
name = "p"
endpoints = ["nowhere"]
connect_timeout_ms = 0
[pools.health_check]
kind = "tcp"
unhealthy_threshold = 0
[[routes]]
name = "r"
pool = "p"
[[routes]]
name = "r2"
pool = "missing"
[[listeners]]
name = "tls"
address = "999.1.1.1:443"
[listeners.tls]
[[listeners.tls.certificates]]
cert = "nope.crt"
key = "nope.key"
"#
        ),
    );
    let (ok, text) = check(&[&bad]);
    assert!(!ok);
    let file = bad.display().to_string();
    for expected in [
        "pools[1].name: duplicate pool name `p`",
        "pools[1].endpoints[0]: `nowhere` is not `host:port`",
        "pools[1].connect_timeout_ms: must be at least 1 millisecond",
        "pools[1].health_check.unhealthy_threshold: must be at least 1",
        "routes[1].pool: no pool named `missing` (defined pools: `p`, `p`)",
        "listeners[1].address: `999.1.1.1:443` is not an `ip:port` address",
        "listeners[1].tls.certificates[0].cert: cannot read",
        "nope.crt",
        "listeners[1].tls.certificates[0].key: cannot read",
    ] {
        assert!(
            text.contains(&format!("{file}: {expected}")) || text.contains(expected),
            "missing `{expected}` in:\n{text}"
        );
    }
    assert!(
        text.lines().all(|l| l.starts_with(&file)),
        "every line names the file:\n{text}"
    );
}

#[test]
fn unknown_field_names_the_nearest_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "typo.toml",
        &format!("{BASE}\n[[routes]]\nname = \"r\"\npool = \"p\"\npath_prefx = \"/a\"\n"),
    );
    let (ok, text) = check(&[&bad]);
    assert!(!ok);
    assert!(text.contains("routes[0]"), "{text}");
    assert!(text.contains("unknown field `path_prefx`"), "{text}");
    assert!(text.contains("did you mean `path_prefix`?"), "{text}");
    assert!(text.contains("line 12"), "{text}");
}

#[test]
fn help_has_examples() {
    for args in [
        &["serve", "--help"][..],
        &["gateway", "--help"],
        &["config", "check", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Example:"),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn a_taken_address_fails_fast_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "busy.toml",
        &BASE.replace("127.0.0.1:8080", &addr.to_string()),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["gateway", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains(&format!("listener `http`: cannot listen on {addr}")),
        "{text}"
    );
}

/// The gateway turns transparent huge pages off for itself: with them, the
/// allocator's arena kept a plugin compile's heap resident in 2 MiB pages (79
/// against 34 MiB idle with one plugin route, docs/BENCHMARKS.md).
#[cfg(target_os = "linux")]
#[test]
fn the_gateway_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "gantry.toml",
        &BASE.replace("127.0.0.1:8080", "127.0.0.1:0"),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .arg("gateway")
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut thp = None;
    for _ in 0..50 {
        thp = std::fs::read_to_string(&status).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("THP_enabled:").map(|v| v.trim().to_string()))
        });
        if thp.as_deref() == Some("0") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(thp.as_deref(), Some("0"), "THP_enabled in {status}");
}
