//! Keys' token budgets: `tokens_per_day` and `tokens_per_month`, over UTC
//! calendar days and months, reserved and settled with the per-minute limits
//! (see [`super::limiter`]) and kept in the embedded store, a redb file
//! (`[key_store].path`), so that a restart does not reset them.
//!
//! What is kept is what requests settled; tokens reserved by requests still
//! in flight are not, so a request cut off by a crash is not charged its
//! whole reservation. The store is written every
//! [`gantry_config::BUDGET_FLUSH_INTERVAL_MS`] when something settled, and
//! once more when the gateway stops (after its requests drained): a restart
//! forgets nothing, a crash at most that interval's spending.

use super::limiter::Limiter;
use super::Tenants;
use anyhow::Context;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use time::{Date, Month, OffsetDateTime};

/// `"<key name>/<period>"` → (the period's id, tokens settled in it).
const BUDGETS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("budgets");
/// API keys made at run time (see [`super::keyring`]): digest (hex) → tenant.
const KEYS: TableDefinition<&str, &str> = TableDefinition::new("keys");

/// A budget's calendar period, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// `tokens_per_day`.
    Day = 0,
    /// `tokens_per_month`.
    Month = 1,
}

impl Period {
    /// Both, in the order of a key's budgets.
    pub const ALL: [Period; 2] = [Period::Day, Period::Month];

    /// The limit's name in configuration, messages and the `limit` label of
    /// `gantry_key_rejections_total`.
    pub fn field(self) -> &'static str {
        match self {
            Period::Day => "tokens_per_day",
            Period::Month => "tokens_per_month",
        }
    }

    /// The period `at` falls in (days since 1970, or months since year 0)
    /// and how long until the next one starts.
    pub fn at(self, at: SystemTime) -> (u64, Duration) {
        let now = OffsetDateTime::from(at);
        let secs = now.unix_timestamp().max(0) as u64;
        match self {
            Period::Day => (secs / 86_400, Duration::from_secs(86_400 - secs % 86_400)),
            Period::Month => {
                let (year, month) = (now.year(), now.month());
                let (next_year, next_month) = match month {
                    Month::December => (year + 1, Month::January),
                    m => (year, m.next()),
                };
                let next = Date::from_calendar_date(next_year, next_month, 1)
                    .expect("the first of a month is a date")
                    .midnight()
                    .assume_utc();
                let left = (next - now).unsigned_abs();
                (year as u64 * 12 + month as u64 - 1, left)
            }
        }
    }
}

/// One budget's state: the period it counts and the tokens counted in it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    pub limit: u64,
    pub period: Period,
    /// The period counted (see [`Period::at`]).
    pub id: u64,
    /// Settled plus reserved and not yet settled.
    pub counted: u64,
    /// Reserved and not yet settled.
    pub outstanding: u64,
}

impl Budget {
    pub fn new(period: Period, limit: u64) -> Budget {
        Budget {
            limit,
            period,
            id: 0,
            counted: 0,
            outstanding: 0,
        }
    }

    /// Move to the period `at` falls in (starting from nothing when it is a
    /// new one); how long until the next.
    pub fn roll(&mut self, at: SystemTime) -> Duration {
        let (id, left) = self.period.at(at);
        if id != self.id {
            *self = Budget {
                id,
                ..Budget::new(self.period, self.limit)
            };
        }
        left
    }

    /// Tokens settled in the current period (what the store keeps).
    pub fn settled(&self) -> u64 {
        self.counted - self.outstanding
    }
}

/// The embedded store: one redb file.
pub struct BudgetStore {
    db: Database,
    /// Each key with a budget, by name.
    keys: Vec<(String, Arc<Limiter>)>,
}

impl BudgetStore {
    /// Open (or make) the store at `path` and give each of `tenants`' keys
    /// with a budget what it spent in the current periods.
    pub fn open(path: &Path, tenants: &Tenants) -> anyhow::Result<Arc<BudgetStore>> {
        let db = open_db(path)?;
        let keys: Vec<(String, Arc<Limiter>)> = tenants
            .all()
            .filter(|t| t.limiter.limits().has_budget())
            .map(|t| (t.name.clone(), t.limiter.clone()))
            .collect();
        let read = db.begin_read().context("reading the key store")?;
        match read.open_table(BUDGETS) {
            Ok(table) => {
                for (name, limiter) in &keys {
                    for period in Period::ALL {
                        if let Some(row) = table.get(row_key(name, period).as_str())? {
                            let (id, tokens) = row.value();
                            limiter.restore(period, id, tokens, SystemTime::now());
                        }
                    }
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e).context("reading the key store"),
        }
        drop(read);
        Ok(Arc::new(BudgetStore { db, keys }))
    }

    /// Write what changed since the last write; how many keys were written.
    pub fn flush(&self) -> anyhow::Result<usize> {
        let changed: Vec<_> = self
            .keys
            .iter()
            .filter_map(|(name, l)| l.budgets_to_keep().map(|b| (name, b)))
            .collect();
        if changed.is_empty() {
            return Ok(0);
        }
        let write = self.db.begin_write()?;
        {
            let mut table = write.open_table(BUDGETS)?;
            for (name, budgets) in &changed {
                for b in budgets {
                    table.insert(row_key(name, b.period).as_str(), (b.id, b.settled()))?;
                }
            }
        }
        write.commit()?;
        Ok(changed.len())
    }

    /// Write every [`gantry_config::BUDGET_FLUSH_INTERVAL_MS`] on `runtime`,
    /// for as long as the store lives.
    pub fn keep(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let weak = Arc::downgrade(self);
        let every = Duration::from_millis(gantry_config::BUDGET_FLUSH_INTERVAL_MS);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(store) = weak.upgrade() else { return };
                let written = tokio::task::spawn_blocking(move || store.flush()).await;
                if let Ok(Err(e)) = written {
                    tracing::error!(error = %e, "cannot write keys' budgets to the key store");
                }
            }
        });
    }
}

impl BudgetStore {
    /// Keep `digest` as a key of `tenant`.
    pub fn add_key(&self, digest: &[u8; 32], tenant: &str) -> anyhow::Result<()> {
        let write = self.db.begin_write()?;
        write
            .open_table(KEYS)?
            .insert(super::keyring::hex(digest).as_str(), tenant)?;
        write.commit()?;
        Ok(())
    }

    /// Forget `digest`; whether it was kept.
    pub fn remove_key(&self, digest: &[u8; 32]) -> anyhow::Result<bool> {
        let write = self.db.begin_write()?;
        let removed = write
            .open_table(KEYS)?
            .remove(super::keyring::hex(digest).as_str())?
            .is_some();
        write.commit()?;
        Ok(removed)
    }

    /// Every stored key.
    pub fn keys(&self) -> anyhow::Result<Vec<super::keyring::StoredKey>> {
        let read = self.db.begin_read()?;
        let table = match read.open_table(KEYS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut keys = Vec::new();
        for row in table.iter()? {
            let (digest, tenant) = row?;
            if let Some(d) = super::keyring::parse_hex(digest.value()) {
                keys.push((d, tenant.value().to_string()));
            }
        }
        Ok(keys)
    }
}

impl BudgetStore {
    /// The store at `path` for its keys alone (`gantry keys`).
    pub fn open_file(path: &Path) -> anyhow::Result<Arc<BudgetStore>> {
        Ok(Arc::new(BudgetStore {
            db: open_db(path)?,
            keys: Vec::new(),
        }))
    }
}

fn open_db(path: &Path) -> anyhow::Result<Database> {
    Database::create(path).with_context(|| {
        format!(
            "[key_store].path: cannot open {} (is another gantry using it?)",
            path.display()
        )
    })
}

fn row_key(name: &str, period: Period) -> String {
    format!("{name}/{}", period.field())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(year: i32, month: Month, day: u8, h: u8, m: u8, s: u8) -> SystemTime {
        Date::from_calendar_date(year, month, day)
            .unwrap()
            .with_hms(h, m, s)
            .unwrap()
            .assume_utc()
            .into()
    }

    #[test]
    fn periods_are_utc_calendar_days_and_months() {
        use Month::*;
        let (day, left) = Period::Day.at(at(2026, November, 30, 23, 59, 30));
        assert_eq!(left, Duration::from_secs(30));
        assert_eq!(Period::Day.at(at(2026, December, 1, 0, 0, 0)).0, day + 1);
        let (month, left) = Period::Month.at(at(2026, December, 31, 23, 0, 0));
        assert_eq!(left, Duration::from_secs(3600));
        assert_eq!(Period::Month.at(at(2027, January, 1, 0, 0, 0)).0, month + 1);
        assert_eq!(Period::Month.at(at(2026, December, 1, 0, 0, 0)).0, month);
        let (_, left) = Period::Month.at(at(2026, February, 1, 0, 0, 0));
        assert_eq!(left, Duration::from_secs(28 * 86_400));
    }
}
