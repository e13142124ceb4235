//! `gantry keys`: make, list and revoke API keys. Without a configuration a
//! key is made offline and its `[[keys]]` entry printed; with one that has a
//! `[key_store]`, keys are written to that store, exactly as the admin
//! listener's `/admin/keys` does (see [`gantry::tenants::keyring`]).

use anyhow::{bail, Context};
use clap::Subcommand;
use gantry::tenants::budget::BudgetStore;
use gantry::tenants::keyring::{hex, parse_hex, KeyRing};
use gantry::tenants::shared::SharedStore;
use gantry::tenants::{digest_hex, key_digest, new_key};
use gantry_config::{Config, KeyStore};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the command waits for Redis to answer.
const REDIS_WAIT: Duration = Duration::from_secs(3);

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a new random key and print it once. With --config, keep it in the
    /// configuration's [key_store] as a key of the tenant NAME; without, print
    /// the `[[keys]]` entry (its SHA-256, never the key) to add to a file.
    #[command(
        after_help = "Examples:\n  gantry keys create --name team-a\n  gantry keys create --name team-a --config gantry.toml"
    )]
    Create {
        /// The tenant (`[[keys]].name`): letters, digits, `-`, `_`.
        #[arg(long)]
        name: String,
        /// A gateway configuration with a [key_store] to keep the key in.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List every key of a configuration, by SHA-256: those in the file and
    /// those in its [key_store].
    #[command(after_help = "Example:\n  gantry keys list --config gantry.toml")]
    List {
        #[arg(long)]
        config: PathBuf,
    },
    /// Revoke a key kept in the configuration's [key_store], by its SHA-256.
    #[command(after_help = "Example:\n  gantry keys revoke --config gantry.toml 9f86d08…")]
    Revoke {
        /// The key's SHA-256 (64 hex digits, as `list` shows it).
        sha256: String,
        #[arg(long)]
        config: PathBuf,
    },
}

/// Run a `gantry keys` command.
pub fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { name, config: None } => {
            if !gantry_config::file::valid_key_name(&name) {
                bail!(
                    "--name `{name}` must be 1 to {} letters, digits, `-` or `_` (it is a metric label)",
                    gantry_config::file::MAX_KEY_NAME_BYTES
                );
            }
            let key = new_key();
            println!("key (shown once, keep it secret): {key}\n");
            println!("# add to the gateway's configuration:");
            println!("[[keys]]\nname = {name:?}\nsha256 = {:?}", digest_hex(&key));
            Ok(())
        }
        KeysCommand::Create {
            name,
            config: Some(path),
        } => with_store(&path, |config, ring| async move {
            if !config.keys.iter().any(|k| k.name == name) {
                let known: Vec<_> = config.keys.iter().map(|k| k.name.as_str()).collect();
                bail!("no tenant named `{name}` in [[keys]] (known: {known:?}): a stored key takes a configured tenant's limits");
            }
            let key = new_key();
            let digest = key_digest(&key);
            ring.add(digest, &name).await?;
            println!("key (shown once, keep it secret): {key}");
            println!("tenant: {name}\nsha256: {}", hex(&digest));
            Ok(())
        }),
        KeysCommand::List { config: path } => with_store(&path, |config, ring| async move {
            for k in &config.keys {
                if let Some(d) = &k.sha256 {
                    println!("{}\t{}\tconfig", k.name, hex(d));
                }
            }
            for (d, name) in ring.list().await? {
                println!("{name}\t{}\tstore", hex(&d));
            }
            Ok(())
        }),
        KeysCommand::Revoke {
            sha256,
            config: path,
        } => with_store(&path, |config, ring| async move {
            let Some(digest) = parse_hex(&sha256) else {
                bail!("`{sha256}` is not a SHA-256 (64 hex digits, as `gantry keys list` shows)");
            };
            if config.keys.iter().any(|k| k.sha256 == Some(digest)) {
                bail!("this key is in the configuration file: remove its sha256 there");
            }
            if !ring.remove(digest).await? {
                bail!("no key with this sha256 is in the key store");
            }
            println!("revoked {sha256}");
            Ok(())
        }),
    }
}

/// Open `path`'s key store and run `f` on it.
fn with_store<F, Fut>(path: &Path, f: F) -> anyhow::Result<()>
where
    F: FnOnce(Config, KeyRing) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let config = gantry_config::load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let ring = match &config.key_store {
        None => bail!(
            "{} has no [key_store]: keys are only in the file (gantry keys create --name NAME prints an entry)",
            path.display()
        ),
        Some(KeyStore::Embedded(file)) => KeyRing::Embedded(
            BudgetStore::open_file(file).context("a running gateway holds this file: use its admin listener (POST /admin/keys/<tenant>)")?,
        ),
        Some(KeyStore::Redis { url, .. }) => {
            let metrics = gantry::metrics::Metrics::new();
            let store = SharedStore::connect(url, runtime.handle(), metrics.key_store())?;
            let waited = runtime.block_on(async {
                tokio::time::timeout(REDIS_WAIT, async {
                    while !store.is_up() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
                .await
            });
            if waited.is_err() {
                bail!("the key store at {url} did not answer within {REDIS_WAIT:?}");
            }
            KeyRing::Shared(store)
        }
    };
    runtime.block_on(f(config, ring))
}
