//! The `gantry` command line.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use gantry::{Gantry, ShutdownTrigger};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gantry: an edge gateway for web and AI inference traffic.
#[derive(Parser)]
#[command(
    version,
    about,
    long_about = None,
    after_help = "Examples:\n  gantry serve\n  gantry gateway --config config/examples/edge.toml\n  gantry config check config/examples/*.toml"
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
    },
    /// Run everything on the embedded default configuration (gateway on
    /// 127.0.0.1:8080, admin on 127.0.0.1:9090), or on --config if given.
    #[command(after_help = "Example:\n  gantry serve\n  curl -i http://127.0.0.1:8080/")]
    Serve {
        /// Use this file instead of the embedded default (config/examples/default.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Work with configuration files.
    #[command(subcommand, after_help = "Example:\n  gantry config check gantry.toml")]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate files: exit 0 if all are valid, else print each problem as
    /// `FILE: FIELD.PATH: what is wrong` and exit 1.
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

fn run_gateway(config: gantry_config::Config) -> anyhow::Result<()> {
    let gantry = Gantry::build(config).context("starting the gateway")?;
    gantry.run(ShutdownTrigger::Signals);
    Ok(())
}

fn load(path: &Path) -> anyhow::Result<gantry_config::Config> {
    Ok(gantry_config::load(path)?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.command {
        Command::Config(ConfigCommand::Check { files }) => return check(&files),
        Command::Config(ConfigCommand::Default) => {
            print!("{}", gantry_config::EMBEDDED_DEFAULT);
            return ExitCode::SUCCESS;
        }
        Command::Gateway { config }
        | Command::Serve {
            config: Some(config),
        } => load(&config),
        Command::Serve { config: None } => gantry_config::parse(
            gantry_config::EMBEDDED_DEFAULT,
            "<embedded default>",
            Path::new("."),
        )
        .map_err(Into::into),
    };
    init_logging(cli.log_format);
    match config.and_then(run_gateway) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for f in files {
        match gantry_config::load(f) {
            Ok(_) => println!("{}: ok", f.display()),
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
