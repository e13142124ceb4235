//! A `gantry gateway` process under steady load (HTTP requests and streamed
//! completions, on kept-alive connections): its configuration reloaded by
//! SIGHUP every second and its binary upgraded (a new process started with
//! `--upgrade`, SIGQUIT to the old one). Not one request may fail and not
//! one stream may break. bench/upgrade.sh runs the minute-long version.

use crate::harness::*;
use gantry::process::HAND_OVER_OVERLAP;
use gantry_fixture_backend::{Behaviour, Fixture};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one run does.
struct Plan {
    /// How long the load runs.
    seconds: u64,
    /// Binary upgrades, spread over the run.
    upgrades: usize,
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    requests: AtomicUsize,
    streams: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

fn config(
    gateway: &str,
    admin: &str,
    socket: &Path,
    origin: &str,
    backend: &str,
    n: usize,
) -> String {
    format!(
        "[server]\nupgrade_socket = \"{}\"\n\
         [limits]\nshutdown_grace_period_ms = 20000\n\
         [admin]\naddress = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n\
         [[listeners]]\nname = \"http\"\naddress = \"{gateway}\"\n\
         [[pools]]\nname = \"web\"\nendpoints = [\"{origin}\"]\n\
         [[inference_pools]]\nname = \"ai\"\nendpoints = [\"{backend}\"]\nmodels = [\"fixture\"]\n\
         [[routes]]\nname = \"openai\"\npath_prefix = \"/v1\"\ninference_pools = [\"ai\"]\n\
         [[routes]]\nname = \"web\"\npool = \"web\"\n\
         [routes.response_headers]\nset = {{ \"x-config\" = \"{n}\" }}\n",
        socket.display()
    )
}

/// Start `gantry gateway` on `file`, its log in `log`.
fn gateway(file: &Path, log: &Path, upgrade: bool) -> Child {
    let log = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
    cmd.args(["gateway", "--config"]).arg(file);
    if upgrade {
        cmd.arg("--upgrade");
    }
    cmd.stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("gantry starts")
}

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).expect("signal sent");
}

/// Wait for `child` to exit; its status must be success.
async fn exits(mut child: Child, within: Duration, log: &Path) -> Duration {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            assert!(status.success(), "{status}\n{log}");
            return started.elapsed();
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("gantry did not exit within {within:?}\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn http_client(url: String, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let client = client();
    while !stop.load(Ordering::Relaxed) {
        match client.get(&url).header("x-delay-ms", "20").send().await {
            Ok(res) if res.status() == 200 => match res.bytes().await {
                Ok(_) => tally.requests.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tally.fail(format!("GET body: {e}"));
                    0
                }
            },
            Ok(res) => {
                tally.fail(format!("GET: {}", res.status()));
                0
            }
            Err(e) => {
                tally.fail(format!("GET: {e:?}"));
                0
            }
        };
    }
}

async fn stream_client(url: String, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let client = client();
    let body = serde_json::json!({"model": "fixture", "stream": true,
        "messages": [{"role": "user", "content": "count"}]});
    while !stop.load(Ordering::Relaxed) {
        let res = match client.post(&url).json(&body).send().await {
            Ok(res) if res.status() == 200 => res,
            Ok(res) => {
                tally.fail(format!("stream: {}", res.status()));
                continue;
            }
            Err(e) => {
                tally.fail(format!("stream: {e:?}"));
                continue;
            }
        };
        match res.text().await {
            Ok(text) if text.trim_end().ends_with("data: [DONE]") => {
                tally.streams.fetch_add(1, Ordering::Relaxed);
            }
            Ok(text) => tally.fail(format!("stream ended without [DONE]: {text}")),
            Err(e) => tally.fail(format!("stream broke: {e:?}")),
        }
    }
}

async fn run(plan: Plan) {
    let origin = Origin::start("web").await;
    let backend = Fixture::start(Behaviour {
        tokens: 40,
        inter_token_delay: Duration::from_millis(10),
        models: vec!["fixture".into()],
        ..Behaviour::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (addr, admin) = (free_addr(), free_addr());
    let socket = dir.path().join("upgrade.sock");
    let file = dir.path().join("gantry.toml");
    let write = |n: usize| {
        let text = config(
            &addr.to_string(),
            &admin.to_string(),
            &socket,
            &origin.addr.to_string(),
            &backend.addr.to_string(),
            n,
        );
        std::fs::write(file.with_extension("next"), text).unwrap();
        std::fs::rename(file.with_extension("next"), &file).unwrap();
    };
    write(0);
    let log_of = |k: usize| -> PathBuf { dir.path().join(format!("gantry-{k}.log")) };
    let mut current = gateway(&file, &log_of(0), false);
    wait_for_port(addr).await;
    let status = format!("http://{admin}/status");
    eventually("the backend takes traffic", || async {
        let Ok(res) = client().get(&status).send().await else {
            return false;
        };
        res.text()
            .await
            .is_ok_and(|t| t.contains("\"serving\": true"))
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for _ in 0..6 {
        let url = format!("http://{addr}/");
        clients.push(tokio::spawn(http_client(url, stop.clone(), tally.clone())));
    }
    for _ in 0..4 {
        let url = format!("http://{addr}/v1/chat/completions");
        clients.push(tokio::spawn(stream_client(
            url,
            stop.clone(),
            tally.clone(),
        )));
    }

    let started = Instant::now();
    let run_for = Duration::from_secs(plan.seconds);
    let every = run_for / (plan.upgrades as u32 + 1);
    let (mut reloads, mut upgrades, mut handovers) = (0, 0, Vec::new());
    let mut slow_ones = Vec::new();
    let mut next_upgrade = every;
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(1)).await;
        reloads += 1;
        write(reloads);
        signal(&current, Signal::SIGHUP);
        if upgrades < plan.upgrades && started.elapsed() >= next_upgrade {
            upgrades += 1;
            next_upgrade += every;
            let _ = std::fs::remove_file(&socket);
            let new = gateway(&file, &log_of(upgrades), true);
            eventually("the new process waits for the sockets", || async {
                socket.exists()
            })
            .await;
            // A request that outlasts the overlap: the old process must
            // finish it after it stops accepting.
            let slow = client()
                .get(format!("http://{addr}/slow"))
                .header(
                    "x-delay-ms",
                    (HAND_OVER_OVERLAP + Duration::from_secs(1))
                        .as_millis()
                        .to_string(),
                )
                .send();
            let slow = tokio::spawn(slow);
            tokio::time::sleep(Duration::from_millis(300)).await;
            signal(&current, Signal::SIGQUIT);
            let tally = tally.clone();
            slow_ones.push(tokio::spawn(async move {
                match slow.await.unwrap() {
                    Ok(res) if res.status() == 200 => {
                        tally.requests.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(res) => tally.fail(format!("slow GET: {}", res.status())),
                    Err(e) => tally.fail(format!("slow GET: {e:?}")),
                }
            }));
            let old = std::mem::replace(&mut current, new);
            let old_log = log_of(upgrades - 1);
            handovers.push(tokio::spawn(async move {
                exits(old, Duration::from_secs(30), &old_log).await
            }));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients.into_iter().chain(slow_ones) {
        c.await.unwrap();
    }
    let mut old_exits = Vec::new();
    for h in handovers {
        old_exits.push(h.await.unwrap());
    }
    // SIGHUP reloaded each file: the last process serves the latest.
    eventually("the last configuration serves", || async {
        let res = client()
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap();
        res.status() == 200 && res.headers()["x-config"] == reloads.to_string().as_str()
    })
    .await;
    signal(&current, Signal::SIGTERM);
    exits(current, Duration::from_secs(30), &log_of(upgrades)).await;

    let failures = tally.failures.lock().unwrap().clone();
    let (requests, streams) = (
        tally.requests.load(Ordering::Relaxed),
        tally.streams.load(Ordering::Relaxed),
    );
    println!(
        "upgrade-bench seconds={} reloads={reloads} upgrades={upgrades} requests={requests} streams={streams} failed={} old_exit_s={:?}",
        plan.seconds,
        failures.len(),
        old_exits.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>()
    );
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert_eq!(upgrades, plan.upgrades);
    assert!(requests > 20 * plan.seconds as usize, "{requests} requests");
    assert!(streams > 2 * plan.seconds as usize, "{streams} streams");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_and_a_binary_upgrade_under_load_fail_no_request_and_break_no_stream() {
    run(Plan {
        seconds: 8,
        upgrades: 1,
    })
    .await;
}

/// The bench: a reload every second for a minute, three upgrades.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute long: bench/upgrade.sh runs it"]
async fn bench_a_minute_of_reloads_with_three_upgrades() {
    run(Plan {
        seconds: 60,
        upgrades: 3,
    })
    .await;
}
