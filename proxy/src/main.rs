//! The `gantry` command line.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use gantry::{ConfigSource, Gantry, Process, ShutdownTrigger};
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "backend")]
mod backend_cli;
mod keys_cli;
#[cfg(feature = "backend")]
use backend_cli::{backend_config, model_command, run_backend, ModelCommand};
use keys_cli::KeysCommand;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for this process, before it allocates much:
/// mimalloc advises its arena for huge pages, so the short-lived heap of
/// compiling a plugin stayed resident as 2 MiB pages (one plugin route: 79 MiB
/// idle RSS with them, 34 MiB without; docs/BENCHMARKS.md).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("warning: could not turn transparent huge pages off: {e}");
    }
}

/// Gantry: an edge gateway for web and AI inference traffic.
#[derive(Parser)]
#[command(
    version,
    about,
    long_about = None,
    after_help = "Examples:\n  gantry serve\n  gantry gateway --config config/examples/edge.toml\n  gantry backend --config config/examples/backend.toml\n  gantry config check config/examples/*.toml"
)]
struct Cli {
    /// Log line format. The level comes from `RUST_LOG` (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway from a configuration file.
    #[command(after_help = "Example:\n  gantry gateway --config config/examples/edge.toml")]
    Gateway {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Take the listening sockets over from the running gateway (binary
        /// upgrade): build, then wait on `server.upgrade_socket` until it is
        /// sent SIGQUIT.
        #[arg(long)]
        upgrade: bool,
    },
    /// Run the gateway and an inference backend in one process: on the embedded
    /// defaults, the gateway on 127.0.0.1:8080 (OpenAI-compatible API on /v1,
    /// OpenAPI document on /openapi.json, docs on /docs), admin on 127.0.0.1:9090,
    /// and SmolLM2-135M + all-MiniLM-L6-v2 on the CPU over gRPC on 127.0.0.1:50051.
    #[command(
        after_help = "Example:\n  gantry serve\n  curl http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{\"model\": \"smollm2-135m\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'\n  gantry serve --config gateway.toml --backend-config backend.toml"
    )]
    Serve {
        /// Gateway configuration instead of the embedded default (config/examples/default.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Backend configuration instead of the embedded default (config/examples/backend.toml).
        #[arg(long)]
        backend_config: Option<PathBuf>,
        /// Run the gateway only (as `gantry gateway`).
        #[arg(long, conflicts_with = "backend_config")]
        no_backend: bool,
        /// Take the listening sockets over from the running gateway (binary
        /// upgrade; with --no-backend: a backend's gRPC port is not handed over).
        #[arg(long, requires = "no_backend")]
        upgrade: bool,
    },
    /// Run the inference backend: models behind a continuous-batching scheduler,
    /// served over gRPC (gantry.inference.v1). Without --config, the embedded
    /// default serves SmolLM2-135M and all-MiniLM-L6-v2 from models/ on
    /// 127.0.0.1:50051 (scripts/setup.sh installs them).
    #[cfg(feature = "backend")]
    #[command(
        after_help = "Example:\n  gantry backend\n  gantry backend --config config/examples/backend.toml\n  grpcurl -plaintext -d '{\"model\":\"smollm2-135m\",\"prompt\":\"Hi\"}' 127.0.0.1:50051 gantry.inference.v1.Inference/Generate"
    )]
    Backend {
        /// Use this file instead of the embedded default (config/examples/backend.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Work with configuration files.
    #[command(subcommand, after_help = "Example:\n  gantry config check gantry.toml")]
    Config(ConfigCommand),
    /// Model files for device checks and baselines.
    #[cfg(feature = "backend")]
    #[command(subcommand)]
    Model(ModelCommand),
    /// API keys for routes with `auth = "keys"`.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate files (gateway or backend configurations, told apart by their
    /// `[backend]`/`[[models]]` tables): exit 0 if all are valid, else print each
    /// problem as `FILE: FIELD.PATH: what is wrong` and exit 1.
    #[command(after_help = "Example:\n  gantry config check config/examples/*.toml")]
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the embedded default configuration.
    #[command(after_help = "Example:\n  gantry config default > gantry.toml")]
    Default,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Run the gateway on `source` until SIGTERM (or SIGQUIT, handing over to a
/// new one); SIGHUP reloads `source`. `then` runs just before the process exits.
fn run_gateway(
    source: ConfigSource,
    process: Process,
    then: Box<dyn FnOnce() + Send>,
) -> anyhow::Result<()> {
    let gantry = Gantry::load_as(source, process).context("starting the gateway")?;
    gantry.run_then(ShutdownTrigger::Signals, then);
    Ok(())
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    let config = match cli.command {
        #[cfg(feature = "backend")]
        Command::Backend { config } => {
            init_logging(cli.log_format);
            return match backend_config(config).and_then(run_backend) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Config(ConfigCommand::Check { files }) => return check(&files),
        #[cfg(feature = "backend")]
        Command::Model(command) => {
            return match model_command(command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Keys(command) => {
            return match keys_cli::run(command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Config(ConfigCommand::Default) => {
            print!("{}", gantry_config::EMBEDDED_DEFAULT);
            return ExitCode::SUCCESS;
        }
        Command::Gateway { config, upgrade } => (ConfigSource::file(&config), upgrade),
        Command::Serve {
            config,
            backend_config: backend_path,
            no_backend,
            upgrade,
        } => {
            init_logging(cli.log_format);
            return match serve(config, backend_path, no_backend, upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    init_logging(cli.log_format);
    let (config, take_over) = config;
    let process = Process::Own {
        take_over,
        hand_over: true,
    };
    match run_gateway(config, process, Box::new(|| {})) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `gantry serve`: the backend on a thread of its own (it drains on SIGTERM as
/// `gantry backend` does), the gateway on this one; exits when both have stopped.
fn serve(
    config: Option<PathBuf>,
    backend_path: Option<PathBuf>,
    no_backend: bool,
    upgrade: bool,
) -> anyhow::Result<()> {
    let gateway = match config {
        Some(path) => ConfigSource::file(&path),
        None => ConfigSource::embedded(),
    };
    // A bad file is said before the backend loads its models.
    gateway.read()?;
    #[cfg(feature = "backend")]
    let backend = if no_backend {
        None
    } else {
        let config = backend_config(backend_path)?;
        Some(
            std::thread::Builder::new()
                .name("gantry-backend".into())
                .spawn(move || run_backend(config))?,
        )
    };
    #[cfg(not(feature = "backend"))]
    let backend: Option<std::thread::JoinHandle<anyhow::Result<()>>> = match (no_backend, backend_path) {
        (_, Some(_)) => anyhow::bail!(
            "this gantry was built without the model runtime (the `backend` feature): it serves the gateway only"
        ),
        _ => None,
    };
    // A gateway that could not start returns at once; exiting the process then
    // stops the backend too. Otherwise both got the shutdown signal: the
    // gateway waits for the backend's drain before the process exits.
    let backend = std::sync::Mutex::new(backend);
    let join_backend = move || -> anyhow::Result<()> {
        match backend.lock().expect("backend handle lock").take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("the backend thread panicked"))?,
            None => Ok(()),
        }
    };
    let join_backend = std::sync::Arc::new(join_backend);
    let at_exit = join_backend.clone();
    let process = Process::Own {
        take_over: upgrade,
        hand_over: no_backend,
    };
    run_gateway(
        gateway,
        process,
        Box::new(move || {
            if let Err(e) = at_exit() {
                eprintln!("error: {e:#}");
            }
        }),
    )?;
    join_backend()
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for f in files {
        let is_backend = std::fs::read_to_string(f)
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .is_some_and(|t| t.contains_key("backend") || t.contains_key("models"));
        let result = if is_backend {
            gantry_config::backend::load_backend(f).map(drop)
        } else {
            gantry_config::load(f).map(drop)
        };
        match result {
            Ok(()) => println!("{}: ok", f.display()),
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
