//! The shared key store: each key's limits, budgets and requests in flight
//! counted in one Redis server for every replica (`[key_store].redis`), so a
//! fleet of gateways holds a key to its limits exactly as one gateway does.
//!
//! Every check and its update is one Lua script, atomic in Redis: admitting
//! a request (requests per minute, a lease of a concurrency slot), reserving
//! its tokens (per minute, per day, per month) and settling them. The
//! minute window is the same as in one process (it starts with the first
//! request after the last one ended) and is timed by Redis's own clock, so
//! replicas' clocks do not matter. A concurrency slot is a lease, renewed
//! while its request runs, so a replica that dies gives its slots back
//! within [`LEASE`].
//!
//! A command unanswered within [`gantry_config::REDIS_TIMEOUT_MS`] marks the
//! store unreachable: until a probe (every [`PROBE_EVERY`]) finds it again,
//! requests get the configured behaviour at once (`closed`: 503; `local`:
//! this replica's own limits, divided by the number of replicas), never a
//! wait. Settlements that cannot be delivered are dropped: the store then
//! keeps the reservation, which errs on the side of the limit.

use super::budget::Period;
use super::limiter::{Exceeded, Tokens};
use gantry_config::KeyLimits;
use prometheus::{IntCounter, IntGauge};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long a concurrency slot is held without renewal.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often this replica renews the leases of its requests in flight.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How often an unreachable store is tried again.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Seconds a client is told to wait when the store is unreachable.
pub const UNREACHABLE_RETRY_AFTER: u32 = 1;
/// How long Redis keeps a day's and a month's budget counter.
const DAY_TTL: Duration = Duration::from_secs(2 * 86_400);
const MONTH_TTL: Duration = Duration::from_secs(32 * 86_400);

/// Run-time API keys: digest (hex) → tenant, and its version counter.
const KEYS_HASH: &str = "gantry:keys";
const KEYS_VERSION: &str = "gantry:keys:version";

/// Shared by the scripts: the time by Redis's clock, and the key's minute
/// window (hash `w`: `start` in ms, `req`, `in`, `out`), opened afresh when
/// none is open or the last has ended.
const WINDOW_LUA: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function window(w, now)
  local start = tonumber(redis.call('HGET', w, 'start'))
  if start == nil or now - start >= 60000 then
    start = now
    redis.call('HSET', w, 'start', start, 'req', 0, 'in', 0, 'out', 0)
    redis.call('PEXPIRE', w, 120000)
  end
  return start
end
"#;

/// KEYS: window, leases. ARGV: requests_per_minute, max_concurrent (0: no
/// limit), lease member, lease ms, then leases this replica gave back since
/// (see [`SharedStore::settle`]). Returns {0 | 1 (requests) | 2
/// (concurrent), ms to the window's end, window start, requests counted,
/// output tokens counted}.
const ADMIT_LUA: &str = r#"
for i = 5, #ARGV do redis.call('ZREM', KEYS[2], ARGV[i]) end
local now = now_ms()
local w = KEYS[1]
local start = window(w, now)
local reset = 60000 - (now - start)
local req = tonumber(redis.call('HGET', w, 'req'))
local out = tonumber(redis.call('HGET', w, 'out'))
local rpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2])
if rpm > 0 and req >= rpm then return {1, reset, start, req, out} end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= conc then return {2, reset, start, req, out} end
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
  redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[4]))
end
redis.call('HINCRBY', w, 'req', 1)
return {0, reset, start, req + 1, out}
"#;

/// KEYS: window, day, month. ARGV: input and output tokens per minute,
/// input and output asked, tokens per day and per month (0: no limit), day
/// and month ttl ms. Returns {0 | 1 (input) | 2 (output) | 3 (day) | 4
/// (month), ms to the window's end, window start, output tokens counted}.
const RESERVE_LUA: &str = r#"
local now = now_ms()
local w = KEYS[1]
local start = window(w, now)
local reset = 60000 - (now - start)
local field = {'in', 'out'}
local lim = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local ask = {tonumber(ARGV[3]), tonumber(ARGV[4])}
local budget = {tonumber(ARGV[5]), tonumber(ARGV[6])}
local ttl = {tonumber(ARGV[7]), tonumber(ARGV[8])}
local out = tonumber(redis.call('HGET', w, 'out'))
for i = 1, 2 do
  if lim[i] > 0 and tonumber(redis.call('HGET', w, field[i])) + ask[i] > lim[i] then
    return {i, reset, start, out}
  end
end
local total = ask[1] + ask[2]
for i = 1, 2 do
  if budget[i] > 0 and tonumber(redis.call('GET', KEYS[i + 1]) or '0') + total > budget[i] then
    return {i + 2, reset, start, out}
  end
end
for i = 1, 2 do
  if lim[i] > 0 then redis.call('HINCRBY', w, field[i], ask[i]) end
  if budget[i] > 0 then
    redis.call('INCRBY', KEYS[i + 1], total)
    redis.call('PEXPIRE', KEYS[i + 1], ttl[i])
  end
end
if lim[2] > 0 then out = out + ask[2] end
return {0, reset, start, out}
"#;

/// KEYS: window, leases, day, month. ARGV: window start the tokens were
/// reserved in, input and output tokens per minute (0: not counted), input
/// reserved, input used, output reserved, output used, tokens per day and per
/// month (0: not counted), lease member ('' : none).
const SETTLE_LUA: &str = r#"
local w = KEYS[1]
local a = {}
for i = 1, 9 do a[i] = tonumber(ARGV[i]) end
if tonumber(redis.call('HGET', w, 'start')) == a[1] then
  if a[2] > 0 then redis.call('HINCRBY', w, 'in', a[5] - a[4]) end
  if a[3] > 0 then redis.call('HINCRBY', w, 'out', a[7] - a[6]) end
end
local delta = (a[5] + a[7]) - (a[4] + a[6])
for i = 1, 2 do
  if a[7 + i] > 0 and delta ~= 0 and redis.call('EXISTS', KEYS[i + 2]) == 1 then
    redis.call('INCRBY', KEYS[i + 2], delta)
  end
end
if ARGV[10] ~= '' then redis.call('ZREM', KEYS[2], ARGV[10]) end
return 0
"#;

/// KEYS: leases. ARGV: members given back.
const RELEASE_LUA: &str = r#"
for i = 1, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end
return 0
"#;

/// How long a lease given back waits to ride on the next admit of its key
/// before it is sent alone.
const RELEASE_WITHIN: Duration = Duration::from_millis(20);

/// KEYS: leases. ARGV: lease ms, then members to renew (those still held).
const RENEW_LUA: &str = r#"
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
return 0
"#;

/// Why the shared store did not let a request in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreRefusal {
    /// A limit or budget.
    Exceeded(Exceeded),
    /// The store did not answer.
    Unreachable,
}

/// The shared store's health, for metrics.
pub struct StoreMetrics {
    /// `gantry_key_store_up`: 1 while Redis answers.
    pub up: IntGauge,
    /// `gantry_key_store_errors_total`: commands that failed or timed out.
    pub errors: IntCounter,
}

/// One Redis server, shared by every replica.
pub struct SharedStore {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    up: AtomicBool,
    admit: Script,
    reserve: Script,
    settle: Script,
    renew: Script,
    release: Script,
    /// Leases given back and not yet known gone from the store, by leases
    /// key: the next admit of the key takes them along, else a flush within
    /// [`RELEASE_WITHIN`]. A flush forgets them only once its release is
    /// answered, so an admit sent while one is on its way still gives them
    /// back (removing a lease twice is nothing: members are never reused).
    released: Mutex<HashMap<String, HashSet<String>>>,
    /// This process, in lease members.
    replica: String,
    seq: AtomicU64,
    /// Leases this replica holds, by leases key.
    leases: Mutex<HashMap<String, HashSet<String>>>,
    runtime: tokio::runtime::Handle,
    metrics: StoreMetrics,
}

/// One key in the shared store.
pub struct SharedKey {
    /// `gantry:{<name>}`: the braces keep a key's counters in one Redis
    /// Cluster slot.
    base: String,
    limits: KeyLimits,
}

/// What admitting a request in the shared store holds.
pub struct Admitted {
    /// The lease of its concurrency slot, if the key limits concurrency.
    pub member: Option<String>,
    /// The minute window as the store answered: requests and output
    /// tokens counted, and its end.
    pub view: WindowView,
}

/// A key's minute window as the shared store last answered.
#[derive(Debug, Clone, Copy)]
pub struct WindowView {
    pub requests: u64,
    pub output_tokens: u64,
    pub reset: Duration,
}

/// Tokens reserved in the shared store.
pub struct Reserved {
    /// The window (its start, ms) the per-minute tokens are counted in.
    pub window_start: u64,
    /// By [`Period`]: the budget periods they are counted in.
    pub periods: [u64; 2],
    pub view: WindowView,
}

/// What a request settles: by [`Tokens`], reserved and used.
pub struct Settlement {
    pub window_start: u64,
    pub periods: [u64; 2],
    pub reserved: [u64; 2],
    pub used: [u64; 2],
    pub member: Option<String>,
}

impl SharedKey {
    /// Key `name` with `limits`.
    pub fn new(name: &str, limits: KeyLimits) -> SharedKey {
        SharedKey {
            base: format!("gantry:{{{name}}}"),
            limits,
        }
    }

    /// Its limits.
    pub fn limits(&self) -> &KeyLimits {
        &self.limits
    }

    fn window(&self) -> String {
        format!("{}:w", self.base)
    }

    fn leases(&self) -> String {
        format!("{}:f", self.base)
    }

    fn budget(&self, period: Period, id: u64) -> String {
        let tag = match period {
            Period::Day => 'd',
            Period::Month => 'm',
        };
        format!("{}:{tag}:{id}", self.base)
    }
}

impl SharedStore {
    /// A store at `url` (checked now; connected in the background, so a
    /// gateway starts while Redis is down), probed and kept on `runtime`.
    pub fn connect(
        url: &str,
        runtime: &tokio::runtime::Handle,
        metrics: StoreMetrics,
    ) -> anyhow::Result<Arc<SharedStore>> {
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("[key_store].redis: {e}"))?;
        let script = |body: &str| Script::new(&format!("{WINDOW_LUA}{body}"));
        let store = Arc::new(SharedStore {
            client,
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            admit: script(ADMIT_LUA),
            reserve: script(RESERVE_LUA),
            settle: Script::new(SETTLE_LUA),
            renew: Script::new(RENEW_LUA),
            release: Script::new(RELEASE_LUA),
            released: Mutex::new(HashMap::new()),
            replica: format!("{:016x}", rand::random::<u64>()),
            seq: AtomicU64::new(0),
            leases: Mutex::new(HashMap::new()),
            runtime: runtime.clone(),
            metrics,
        });
        store.metrics.up.set(0);
        let weak = Arc::downgrade(&store);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(RELEASE_WITHIN).await;
                let Some(store) = weak.upgrade() else { return };
                store.flush_released().await;
            }
        });
        let weak = Arc::downgrade(&store);
        runtime.spawn(async move {
            let mut renewed = tokio::time::Instant::now();
            loop {
                let Some(store) = weak.upgrade() else { return };
                if !store.is_up() {
                    store.probe().await;
                } else if renewed.elapsed() >= RENEW_EVERY {
                    renewed = tokio::time::Instant::now();
                    store.renew_leases().await;
                }
                drop(store);
                tokio::time::sleep(PROBE_EVERY).await;
            }
        });
        Ok(store)
    }

    /// Whether the store answered its last command.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Count a request of `key`'s minute and lease it a concurrency slot.
    pub async fn admit(&self, key: &SharedKey) -> Result<Admitted, StoreRefusal> {
        let member = key.limits.max_concurrent.map(|_| {
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            format!("{}:{n}", self.replica)
        });
        let released = self
            .released
            .lock()
            .expect("released lock")
            .remove(&key.leases())
            .unwrap_or_default();
        let mut call = self.admit.prepare_invoke();
        call.key(key.window())
            .key(key.leases())
            .arg(key.limits.requests_per_minute.unwrap_or(0))
            .arg(key.limits.max_concurrent.unwrap_or(0))
            .arg(member.as_deref().unwrap_or(""))
            .arg(LEASE.as_millis() as u64);
        for m in &released {
            call.arg(m);
        }
        let answer: Vec<u64> = self
            .run(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        let [code, reset, _start, requests, output_tokens] = answer[..] else {
            return Err(self.failed("unexpected answer to admit"));
        };
        let reset = Duration::from_millis(reset);
        match code {
            0 => {
                if let Some(m) = &member {
                    self.held(key, m, true);
                }
                Ok(Admitted {
                    member,
                    view: WindowView {
                        requests,
                        output_tokens,
                        reset,
                    },
                })
            }
            1 => Err(StoreRefusal::Exceeded(Exceeded::Requests {
                limit: key.limits.requests_per_minute.unwrap_or(0),
                retry_after: reset,
            })),
            _ => Err(StoreRefusal::Exceeded(Exceeded::Concurrent {
                limit: key.limits.max_concurrent.unwrap_or(0),
                retry_after: super::limiter::CONCURRENCY_RETRY_AFTER,
            })),
        }
    }

    /// Reserve `input` and `output` tokens of `key`'s minute and budgets.
    pub async fn reserve(
        &self,
        key: &SharedKey,
        input: u64,
        output: u64,
    ) -> Result<Reserved, StoreRefusal> {
        let now = SystemTime::now();
        let (day, day_left) = Period::Day.at(now);
        let (month, month_left) = Period::Month.at(now);
        let l = &key.limits;
        let mut call = self.reserve.prepare_invoke();
        call.key(key.window())
            .key(key.budget(Period::Day, day))
            .key(key.budget(Period::Month, month))
            .arg(l.input_tokens_per_minute.unwrap_or(0))
            .arg(l.output_tokens_per_minute.unwrap_or(0))
            .arg(input)
            .arg(output)
            .arg(l.tokens_per_day.unwrap_or(0))
            .arg(l.tokens_per_month.unwrap_or(0))
            .arg(DAY_TTL.as_millis() as u64)
            .arg(MONTH_TTL.as_millis() as u64);
        let answer: Vec<u64> = self
            .run(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        let [code, reset, start, output_tokens] = answer[..] else {
            return Err(self.failed("unexpected answer to reserve"));
        };
        let reset = Duration::from_millis(reset);
        let tokens = |kind: Tokens, limit: Option<u64>, asked| {
            StoreRefusal::Exceeded(Exceeded::Tokens {
                kind,
                limit: limit.unwrap_or(0),
                asked,
                retry_after: reset,
            })
        };
        let budget = |period: Period, limit: Option<u64>, left| {
            StoreRefusal::Exceeded(Exceeded::Budget {
                period,
                limit: limit.unwrap_or(0),
                asked: input + output,
                retry_after: left,
            })
        };
        match code {
            0 => Ok(Reserved {
                window_start: start,
                periods: [day, month],
                view: WindowView {
                    requests: 0,
                    output_tokens,
                    reset,
                },
            }),
            1 => Err(tokens(Tokens::Input, l.input_tokens_per_minute, input)),
            2 => Err(tokens(Tokens::Output, l.output_tokens_per_minute, output)),
            3 => Err(budget(Period::Day, l.tokens_per_day, day_left)),
            _ => Err(budget(Period::Month, l.tokens_per_month, month_left)),
        }
    }

    /// Settle a request's tokens and give back its lease, in the background
    /// (when the request ends in a destructor).
    /// A request that reserved no tokens gives back only its lease: it rides
    /// on the key's next admit from this replica (so this replica's next
    /// request never finds it held), or goes alone within
    /// [`RELEASE_WITHIN`]: one script per request rather than two.
    pub fn settle(self: &Arc<Self>, key: &Arc<SharedKey>, s: Settlement) {
        if let (Some(member), [0, 0]) = (&s.member, s.reserved) {
            self.held(key, member, false);
            self.released
                .lock()
                .expect("released lock")
                .entry(key.leases())
                .or_default()
                .insert(member.clone());
            return;
        }
        let (store, key) = (self.clone(), key.clone());
        self.runtime
            .spawn(async move { store.settle_now(&key, s).await });
    }

    /// Send the leases given back that no admit took along (a background
    /// task does this every [`RELEASE_WITHIN`]).
    pub async fn flush_released(&self) {
        let pending = self.released.lock().expect("released lock").clone();
        for (leases, members) in pending {
            let mut call = self.release.prepare_invoke();
            call.key(&leases);
            for m in &members {
                call.arg(m);
            }
            let _: Result<i64, _> = self
                .run(|mut c| async move { call.invoke_async(&mut c).await })
                .await;
            // Sent (or the store is away, and the leases lapse): forget
            // those no admit took along meanwhile.
            let mut released = self.released.lock().expect("released lock");
            if let Some(left) = released.get_mut(&leases) {
                left.retain(|m| !members.contains(m));
                if left.is_empty() {
                    released.remove(&leases);
                }
            }
        }
    }

    /// Settle a request's tokens and give back its lease, done when the
    /// store has them (or could not be reached).
    pub async fn settle_now(&self, key: &SharedKey, s: Settlement) {
        if let Some(m) = &s.member {
            self.held(key, m, false);
        }
        if s.member.is_none() && s.reserved == [0, 0] {
            return;
        }
        let l = &key.limits;
        let budgets = s.reserved != [0, 0];
        let mut call = self.settle.prepare_invoke();
        call.key(key.window())
            .key(key.leases())
            .key(key.budget(Period::Day, s.periods[Period::Day as usize]))
            .key(key.budget(Period::Month, s.periods[Period::Month as usize]))
            .arg(s.window_start)
            .arg(l.input_tokens_per_minute.unwrap_or(0))
            .arg(l.output_tokens_per_minute.unwrap_or(0))
            .arg(s.reserved[Tokens::Input as usize])
            .arg(s.used[Tokens::Input as usize])
            .arg(s.reserved[Tokens::Output as usize])
            .arg(s.used[Tokens::Output as usize])
            .arg(l.tokens_per_day.filter(|_| budgets).unwrap_or(0))
            .arg(l.tokens_per_month.filter(|_| budgets).unwrap_or(0))
            .arg(s.member.as_deref().unwrap_or(""));
        let _: Result<i64, _> = self
            .run(|mut c| async move { call.invoke_async(&mut c).await })
            .await;
    }

    /// Keep `digest` as a key of `tenant` (see [`super::keyring`]).
    pub async fn add_key(&self, digest: &[u8; 32], tenant: &str) -> anyhow::Result<()> {
        let hex = super::keyring::hex(digest);
        let tenant = tenant.to_string();
        self.run(|mut c| async move {
            redis::pipe()
                .atomic()
                .hset(KEYS_HASH, hex, tenant)
                .incr(KEYS_VERSION, 1)
                .exec_async(&mut c)
                .await
        })
        .await
        .map_err(|_| anyhow::anyhow!("the shared key store (Redis) cannot be reached"))
    }

    /// Forget `digest`; whether it was kept.
    pub async fn remove_key(&self, digest: &[u8; 32]) -> anyhow::Result<bool> {
        let hex = super::keyring::hex(digest);
        let (removed, _): (u64, u64) = self
            .run(|mut c| async move {
                redis::pipe()
                    .atomic()
                    .hdel(KEYS_HASH, hex)
                    .incr(KEYS_VERSION, 1)
                    .query_async(&mut c)
                    .await
            })
            .await
            .map_err(|_| anyhow::anyhow!("the shared key store (Redis) cannot be reached"))?;
        Ok(removed == 1)
    }

    /// Every stored key.
    pub async fn keys(&self) -> anyhow::Result<Vec<super::keyring::StoredKey>> {
        let all: HashMap<String, String> = self
            .run(|mut c| async move {
                redis::cmd("HGETALL")
                    .arg(KEYS_HASH)
                    .query_async(&mut c)
                    .await
            })
            .await
            .map_err(|_| anyhow::anyhow!("the shared key store (Redis) cannot be reached"))?;
        Ok(all
            .into_iter()
            .filter_map(|(hex, tenant)| Some((super::keyring::parse_hex(&hex)?, tenant)))
            .collect())
    }

    /// The stored keys' version (bumped on every change); `None` when the
    /// store cannot be reached.
    pub async fn keys_version(&self) -> Option<u64> {
        let v: Option<u64> = self
            .run(|mut c| async move {
                redis::cmd("GET")
                    .arg(KEYS_VERSION)
                    .query_async(&mut c)
                    .await
            })
            .await
            .ok()?;
        Some(v.unwrap_or(0))
    }

    /// Note a lease this replica holds (renewed while held) or gave back.
    fn held(&self, key: &SharedKey, member: &str, holding: bool) {
        let mut leases = self.leases.lock().expect("leases lock");
        let set = leases.entry(key.leases()).or_default();
        if holding {
            set.insert(member.to_string());
        } else {
            set.remove(member);
        }
    }

    async fn renew_leases(&self) {
        let batches: Vec<(String, Vec<String>)> = self
            .leases
            .lock()
            .expect("leases lock")
            .iter()
            .filter(|(_, members)| !members.is_empty())
            .map(|(k, members)| (k.clone(), members.iter().cloned().collect()))
            .collect();
        for (leases, members) in batches {
            let mut call = self.renew.prepare_invoke();
            call.key(leases).arg(LEASE.as_millis() as u64);
            for m in members {
                call.arg(m);
            }
            let renewed: Result<i64, _> = self
                .run(|mut c| async move { call.invoke_async(&mut c).await })
                .await;
            if renewed.is_err() {
                return;
            }
        }
    }

    /// (Re)connect and PING; up again when it answers.
    async fn probe(&self) {
        let existing = self.conn.lock().expect("conn lock").clone();
        let conn = match existing {
            Some(c) => c,
            None => {
                let timeout = Duration::from_millis(gantry_config::REDIS_TIMEOUT_MS);
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(1);
                let made = tokio::time::timeout(
                    timeout * 4,
                    ConnectionManager::new_with_config(self.client.clone(), config),
                )
                .await;
                match made {
                    Ok(Ok(c)) => {
                        *self.conn.lock().expect("conn lock") = Some(c.clone());
                        c
                    }
                    _ => return,
                }
            }
        };
        let pong: Result<String, _> = self
            .timed(async move {
                let mut c = conn;
                redis::cmd("PING").query_async(&mut c).await
            })
            .await;
        if pong.is_ok() {
            tracing::info!("the shared key store (Redis) answers");
            self.up.store(true, Ordering::Release);
            self.metrics.up.set(1);
        }
    }

    /// Run one command on the connection, within the timeout; a failure
    /// marks the store unreachable.
    async fn run<T, F, Fut>(&self, command: F) -> Result<T, StoreRefusal>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return Err(StoreRefusal::Unreachable);
        }
        let Some(conn) = self.conn.lock().expect("conn lock").clone() else {
            return Err(StoreRefusal::Unreachable);
        };
        match self.timed(command(conn)).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let lost = e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal();
                if !lost {
                    // Redis answered, but not as the scripts do: never let
                    // the request through uncounted, nor call Redis down.
                    self.metrics.errors.inc();
                    tracing::error!(error = %e, "the shared key store refused a command");
                    return Err(StoreRefusal::Unreachable);
                }
                Err(self.failed(&e.to_string()))
            }
        }
    }

    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        let timeout = Duration::from_millis(gantry_config::REDIS_TIMEOUT_MS);
        match tokio::time::timeout(timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            ))),
        }
    }

    fn failed(&self, why: &str) -> StoreRefusal {
        self.metrics.errors.inc();
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = why, "the shared key store (Redis) is unreachable");
            self.metrics.up.set(0);
        }
        StoreRefusal::Unreachable
    }
}
