//! The continuous-batching scheduler of one generation model.
//!
//! One OS thread owns the model. Between two steps it takes new requests from
//! its queue into the running batch (up to `max_running`, and within the KV cache
//! budget), drops the sequences whose client went away or whose deadline passed
//! (freeing their caches), then runs ONE batched forward for every running
//! sequence: newcomers feed their prompt (in chunks of at most
//! `max_batch_tokens` prompt tokens per step), the others their last token.
//!
//! Admission is bounded: [`GenerateEngine::submit`] refuses at once when
//! `max_queued` requests are already waiting.
//!
//! On the CPU, KV caches are blocks of a [`KvBlocks`]: a newcomer first takes
//! the longest run of blocks already computed for the same prompt prefix (by
//! an earlier request or one still running) and prefills only the rest; each
//! block a sequence fills is named for the ones after it.

use crate::kv_blocks::{KvBlocks, KvLimits};
use crate::kv_events::{KvEventLog, KV_CHANGES_BUFFERED};
use crate::llama::{argmax_rows, Llama, SeqCache};
use crate::sequence::{sample, Sampler, TextStream};
use candle_core::Tensor;
use candle_transformers::generation::LogitsProcessor;
use gantry_config::backend::ModelLimits;
use gantry_proto::prefix::{block_hashes, extend_block_hashes, KV_BLOCK_TOKENS};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenizers::Tokenizer;
use tokio::sync::{mpsc as tmpsc, watch};

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// `max_tokens` or the context limit.
    Length,
    /// A stop string.
    Stop,
    /// An end-of-sequence token.
    Eos,
    /// The backend stopped it (drain past the grace period).
    Cancelled,
    /// This sequence failed on its own (its sampling or detokenizing): it alone
    /// leaves the batch; the others go on.
    Failed,
}

/// What a request's stream receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text and the tokens it covers.
    Delta {
        /// Whole UTF-8 characters.
        text: String,
        /// Token ids.
        ids: Vec<u32>,
    },
    /// The last event.
    Finished {
        /// Why.
        reason: Finish,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Prompt tokens whose KV was reused, not computed.
        cached_tokens: usize,
        /// Generated tokens.
        completion_tokens: usize,
        /// Arrival to admission.
        queue_time: Duration,
        /// Arrival to first token.
        time_to_first_token: Duration,
    },
    /// The request failed after admission (its deadline passed).
    DeadlineExceeded {
        /// Tokens generated before.
        completion_tokens: usize,
    },
}

/// A request for the scheduler.
#[derive(Debug)]
pub struct Job {
    /// Id for logs.
    pub request_id: String,
    /// Prompt token ids (non-empty, validated against the context).
    pub prompt: Vec<u32>,
    /// Sampling parameters (validated).
    pub sampler: Sampler,
    /// When it arrived.
    pub arrived: Instant,
    /// When to give up, from `grpc-timeout`.
    pub deadline: Option<Instant>,
    /// Where events go; closed receiver = client gone.
    pub events: tmpsc::UnboundedSender<Event>,
}

/// A snapshot of a model's load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    /// Waiting requests.
    pub queued: usize,
    /// Running sequences.
    pub running: usize,
    /// Tokens in running sequences' caches.
    pub tokens_in_flight: usize,
    /// Bytes of KV cache running sequences use (a shared block counted once).
    pub kv_cache_bytes: usize,
    /// Bytes of KV blocks kept for prefix reuse, no sequence using them.
    pub kv_kept_bytes: usize,
    /// Named KV blocks (used or kept): prefixes a prompt can reuse.
    pub kv_named_blocks: usize,
    /// Generated tokens per second over the last second.
    pub tokens_per_second: f32,
    /// Forward steps run since start.
    pub steps: u64,
}

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// `max_queued` requests are already waiting.
    #[error("queue full: {max_queued} requests are already waiting (max_queued)")]
    QueueFull {
        /// The limit.
        max_queued: usize,
    },
    /// The engine stopped.
    #[error("the model's scheduler has stopped")]
    Stopped,
}

/// Handle to a running scheduler.
#[derive(Debug, Clone)]
pub struct GenerateEngine {
    jobs: mpsc::Sender<Msg>,
    queued: Arc<AtomicUsize>,
    /// Requests accepted and not yet finished (queued or running): the drain
    /// condition, exact at any instant, unlike the published [`Load`].
    active: Arc<AtomicUsize>,
    abort: Arc<AtomicBool>,
    limits: ModelLimits,
    load: watch::Receiver<Load>,
    kv_log: Arc<KvEventLog>,
}

impl GenerateEngine {
    /// Start the scheduler thread for `model`.
    pub fn start(
        name: &str,
        model: Llama,
        tokenizer: Arc<Tokenizer>,
        eos: Vec<u32>,
        limits: ModelLimits,
    ) -> GenerateEngine {
        let (jobs, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let abort = Arc::new(AtomicBool::new(false));
        let (load_tx, load) = watch::channel(Load::default());
        let kv = KvBlocks::new(
            model.block_layout(),
            KvLimits {
                total_bytes: limits.kv_cache_budget_bytes,
                kept_bytes: if model.uses_blocks() {
                    limits.prefix_cache_bytes
                } else {
                    0
                },
            },
        );
        let kv_log = Arc::new(KvEventLog::new(KV_CHANGES_BUFFERED));
        let scheduler = Scheduler {
            kv,
            kv_log: kv_log.clone(),
            model,
            tokenizer,
            eos,
            limits,
            jobs: rx,
            queued: queued.clone(),
            active: active.clone(),
            abort: abort.clone(),
            load: load_tx,
            waiting: VecDeque::new(),
            running: Vec::new(),
            recent: VecDeque::new(),
            steps: 0,
        };
        std::thread::Builder::new()
            .name(format!("sched-{name}"))
            .spawn(move || scheduler.run())
            .expect("spawn scheduler thread");
        GenerateEngine {
            jobs,
            queued,
            active,
            abort,
            limits,
            load,
            kv_log,
        }
    }

    /// Which KV blocks this model holds, and their changes.
    pub fn kv_log(&self) -> &Arc<KvEventLog> {
        &self.kv_log
    }

    /// Queue a request, or refuse at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let max_queued = self.limits.max_queued;
        if self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < max_queued).then_some(q + 1)
            })
            .is_err()
        {
            return Err(SubmitError::QueueFull { max_queued });
        }
        self.active.fetch_add(1, Ordering::AcqRel);
        self.jobs.send(Msg::Job(job)).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.active.fetch_sub(1, Ordering::AcqRel);
            SubmitError::Stopped
        })
    }

    /// Requests waiting for a batch slot, now (the published [`Load`] is as of
    /// the last step).
    pub fn queued_now(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// True when no accepted request is waiting or running.
    pub fn is_idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }

    /// Follow the load.
    pub fn load(&self) -> watch::Receiver<Load> {
        self.load.clone()
    }

    /// Finish every sequence now with [`Finish::Cancelled`] (end of the grace period).
    pub fn abort_all(&self) {
        self.abort.store(true, Ordering::Release);
        let _ = self.jobs.send(Msg::Wake);
    }
}

/// What the scheduler's queue carries.
#[derive(Debug)]
enum Msg {
    Job(Job),
    /// Look at the abort flag now.
    Wake,
}

struct Running {
    job: Job,
    cache: SeqCache,
    /// Hashes of the whole blocks of `tokens` in the cache, first first.
    hashes: Vec<u64>,
    /// Blocks of `cache` offered to [`KvBlocks::name`] so far.
    named: usize,
    /// Prompt tokens taken from blocks computed before.
    cached_tokens: usize,
    /// Prompt tokens not yet fed to the model.
    unfed: usize,
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    generated: usize,
    processor: LogitsProcessor,
    stream: TextStream,
    admitted: Instant,
    first_token: Option<Instant>,
}

impl Running {
    /// Pick this sequence's next token from its row of `logits` (or take the
    /// batch's greedy pick) and send the text it completes; `Some` when the
    /// sequence ends here (end of sequence, stop string).
    fn advance(
        &mut self,
        greedy: Option<u32>,
        logits: &candle_core::Tensor,
        row: usize,
        tokenizer: &Tokenizer,
        eos: &[u32],
        now: Instant,
    ) -> candle_core::Result<Option<Finish>> {
        let token = match greedy {
            Some(token) => token,
            None => sample(
                &mut self.processor,
                &self.job.sampler,
                &logits.get(row)?,
                &self.tokens,
            )?,
        };
        self.first_token.get_or_insert(now);
        self.generated += 1;
        self.tokens.push(token);
        if eos.contains(&token) {
            return Ok(Some(Finish::Eos));
        }
        let step = self.stream.push(tokenizer, token, &self.job.sampler.stop);
        if !step.text.is_empty() || !step.ids.is_empty() {
            let _ = self.job.events.send(Event::Delta {
                text: step.text,
                ids: step.ids,
            });
        }
        Ok(step.stopped.then_some(Finish::Stop))
    }
}

struct Scheduler {
    model: Llama,
    /// Host KV blocks of every sequence, and those kept for reuse.
    kv: KvBlocks,
    /// Where named and evicted blocks are told.
    kv_log: Arc<KvEventLog>,
    tokenizer: Arc<Tokenizer>,
    eos: Vec<u32>,
    limits: ModelLimits,
    jobs: mpsc::Receiver<Msg>,
    queued: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    abort: Arc<AtomicBool>,
    load: watch::Sender<Load>,
    waiting: VecDeque<Job>,
    running: Vec<Running>,
    /// (when, tokens generated) of recent steps, for tokens/s.
    recent: VecDeque<(Instant, usize)>,
    steps: u64,
}

impl Scheduler {
    fn run(mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                self.publish();
                match self.jobs.recv() {
                    Ok(Msg::Job(job)) => self.waiting.push_back(job),
                    Ok(Msg::Wake) => {}
                    Err(_) => return,
                }
            }
            while let Ok(msg) = self.jobs.try_recv() {
                if let Msg::Job(job) = msg {
                    self.waiting.push_back(job);
                }
            }
            if self.abort.load(Ordering::Acquire) {
                self.cancel_all();
                continue;
            }
            self.drop_gone();
            if self.admit() {
                // Newcomers show as running before their first token goes out.
                self.publish();
            }
            if self.running.is_empty() {
                // Everything waiting was dropped, or the KV budget is exhausted
                // by nothing (a single oversized request is admitted alone).
                continue;
            }
            if let Err(err) = self.step() {
                tracing::error!(target: "gantry::backend", error = %err, "forward step failed; failing the batch");
                let failed = std::mem::take(&mut self.running);
                self.done(failed.len());
                for mut seq in failed {
                    self.kv.release(&seq.cache.take_blocks());
                    drop(seq.job.events);
                }
            }
            self.publish();
        }
    }

    /// `n` requests left for good (finished, cancelled, dropped).
    fn done(&self, n: usize) {
        self.active.fetch_sub(n, Ordering::AcqRel);
    }

    fn leave_queue(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }

    /// Remove waiting and running sequences whose client went away or whose
    /// deadline passed.
    fn drop_gone(&mut self) {
        let now = Instant::now();
        let before = self.waiting.len();
        self.waiting.retain(|job| {
            if job.events.is_closed() {
                return false;
            }
            if job.deadline.is_some_and(|d| d <= now) {
                let _ = job.events.send(Event::DeadlineExceeded {
                    completion_tokens: 0,
                });
                return false;
            }
            true
        });
        self.leave_queue(before - self.waiting.len());
        self.done(before - self.waiting.len());
        let before = self.running.len();
        let kv = &mut self.kv;
        self.running.retain_mut(|seq| {
            let stays = if seq.job.events.is_closed() {
                tracing::debug!(target: "gantry::backend", request_id = %seq.job.request_id, "client gone; sequence leaves the batch");
                false
            } else if seq.job.deadline.is_some_and(|d| d <= now) {
                let _ = seq.job.events.send(Event::DeadlineExceeded {
                    completion_tokens: seq.generated,
                });
                false
            } else {
                true
            };
            if !stays {
                kv.release(&seq.cache.take_blocks());
            }
            stays
        });
        self.done(before - self.running.len());
    }

    /// Bytes a sequence may come to hold: its prompt plus everything it may
    /// generate, in whole blocks where the cache is in blocks.
    fn reserved_bytes(&self, job: &Job) -> u64 {
        let mut tokens = job.prompt.len() + job.sampler.max_tokens;
        if self.model.uses_blocks() {
            tokens = tokens.next_multiple_of(KV_BLOCK_TOKENS);
        }
        (tokens * self.model.kv_bytes_per_token()) as u64
    }

    /// Move waiting requests into the batch; true if any moved.
    fn admit(&mut self) -> bool {
        let before = self.running.len();
        let mut reserved: u64 = self
            .running
            .iter()
            .map(|s| self.reserved_bytes(&s.job))
            .sum();
        while self.running.len() < self.limits.max_running {
            let Some(job) = self.waiting.front() else {
                break;
            };
            let need = self.reserved_bytes(job);
            if let Some(budget) = self.limits.kv_cache_budget_bytes {
                if !self.running.is_empty() && reserved + need > budget {
                    break;
                }
            }
            reserved += need;
            let job = self.waiting.pop_front().expect("front exists");
            self.leave_queue(1);
            let processor = job.sampler.processor();
            let mut cache = self.model.new_cache();
            let mut hashes = Vec::new();
            if self.kv.reuses() {
                // Whole blocks before the last prompt token only: that token is
                // fed in any case, for the logits of the first new one.
                hashes = block_hashes(&job.prompt[..job.prompt.len() - 1]);
                let taken = self.kv.take_prefix(&hashes);
                hashes.truncate(taken.len());
                cache.adopt_prefix(taken);
            }
            let cached_tokens = cache.len();
            self.running.push(Running {
                cache,
                named: hashes.len(),
                hashes,
                cached_tokens,
                unfed: job.prompt.len() - cached_tokens,
                tokens: job.prompt.clone(),
                generated: 0,
                processor,
                stream: TextStream::default(),
                admitted: Instant::now(),
                first_token: None,
                job,
            });
        }
        self.running.len() > before
    }

    /// One batched forward over every running sequence, then one token for
    /// each that has seen its whole prompt; sequences that end leave the batch.
    fn step(&mut self) -> candle_core::Result<()> {
        let feeds = self.plan_feeds();
        let logits = {
            let mut batch: Vec<(&[u32], &mut SeqCache)> = Vec::with_capacity(feeds.len());
            let mut by_index: Vec<Option<&mut Running>> =
                self.running.iter_mut().map(Some).collect();
            for &(i, start, n) in &feeds {
                let seq = by_index[i].take().expect("each sequence fed once");
                batch.push((&seq.tokens[start..start + n], &mut seq.cache));
            }
            self.model.forward(&mut self.kv, &mut batch)?
        };
        self.steps += 1;
        for &(i, _, n) in &feeds {
            let seq = &mut self.running[i];
            if seq.unfed > 0 {
                seq.unfed -= n;
            }
            if self.kv.reuses() {
                name_full_blocks(&mut self.kv, seq);
            }
        }
        let now = Instant::now();
        let (produced, mut finished) = self.next_tokens(&feeds, &logits, now)?;
        self.recent.push_back((now, produced));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(1))
        {
            self.recent.pop_front();
        }
        // Remove from the back so indices stay valid.
        finished.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        for (i, reason) in finished {
            let mut seq = self.running.swap_remove(i);
            self.kv.release(&seq.cache.take_blocks());
            finish(seq, reason);
            self.done(1);
        }
        Ok(())
    }

    /// Who feeds what this step, as `(sequence, start, len)` in sequence order:
    /// decoding sequences one token, prefilling ones a chunk within the
    /// per-step prompt budget.
    fn plan_feeds(&self) -> Vec<(usize, usize, usize)> {
        let mut budget = self.limits.max_batch_tokens;
        let mut feeds: Vec<(usize, usize, usize)> = Vec::new();
        for (i, seq) in self.running.iter().enumerate() {
            if seq.unfed == 0 {
                feeds.push((i, seq.tokens.len() - 1, 1));
            }
        }
        for (i, seq) in self.running.iter().enumerate() {
            if seq.unfed > 0 && budget > 0 {
                let n = seq.unfed.min(budget);
                budget -= n;
                let start = seq.job.prompt.len() - seq.unfed;
                feeds.push((i, start, n));
            }
        }
        feeds.sort_unstable_by_key(|f| f.0);
        feeds
    }

    /// Samples the next token of every fed sequence that has seen its whole
    /// prompt. Returns how many tokens were produced and which sequences end,
    /// with their reason.
    fn next_tokens(
        &mut self,
        feeds: &[(usize, usize, usize)],
        logits: &Tensor,
        now: Instant,
    ) -> candle_core::Result<(usize, Vec<(usize, Finish)>)> {
        let greedy = if feeds.iter().any(|&(i, _, _)| {
            self.running[i].unfed == 0 && self.running[i].job.sampler.is_plain_greedy()
        }) {
            Some(argmax_rows(logits)?)
        } else {
            None
        };
        let mut produced = 0;
        let mut finished = Vec::new();
        for (row, &(i, _, _)) in feeds.iter().enumerate() {
            let seq = &mut self.running[i];
            if seq.unfed > 0 {
                continue;
            }
            let greedy = match &greedy {
                Some(g) if seq.job.sampler.is_plain_greedy() => Some(g[row]),
                _ => None,
            };
            // One sequence's failure (an error, or a panic in sampling or the
            // tokenizer) ends that sequence only.
            let next = std::panic::catch_unwind(AssertUnwindSafe(|| {
                seq.advance(greedy, logits, row, &self.tokenizer, &self.eos, now)
            }));
            let end = match next {
                Ok(Ok(end)) => {
                    produced += 1;
                    end
                }
                Ok(Err(err)) => {
                    tracing::warn!(target: "gantry::backend", request_id = %seq.job.request_id, error = %err, "sequence failed; it alone leaves the batch");
                    Some(Finish::Failed)
                }
                Err(_) => {
                    tracing::error!(target: "gantry::backend", request_id = %seq.job.request_id, "sequence panicked; it alone leaves the batch");
                    Some(Finish::Failed)
                }
            };
            let end = end.or_else(|| {
                (seq.generated >= seq.job.sampler.max_tokens
                    || seq.tokens.len() >= self.limits.max_context)
                    .then_some(Finish::Length)
            });
            if let Some(reason) = end {
                finished.push((i, reason));
            }
        }
        Ok((produced, finished))
    }

    fn cancel_all(&mut self) {
        let n = self.waiting.len();
        for job in self.waiting.drain(..) {
            let _ = job.events.send(Event::Finished {
                reason: Finish::Cancelled,
                prompt_tokens: job.prompt.len(),
                cached_tokens: 0,
                completion_tokens: 0,
                queue_time: job.arrived.elapsed(),
                time_to_first_token: Duration::ZERO,
            });
        }
        self.leave_queue(n);
        self.done(n);
        let running = std::mem::take(&mut self.running);
        self.done(running.len());
        for mut seq in running {
            self.kv.release(&seq.cache.take_blocks());
            finish(seq, Finish::Cancelled);
        }
        self.publish();
    }

    fn publish(&mut self) {
        self.kv_log.record(&self.kv.take_events());
        let now = Instant::now();
        let window: usize = self.recent.iter().map(|(_, n)| n).sum();
        let tokens_per_second = match self.recent.front() {
            Some((first, _)) if window > 0 => {
                let span = now.duration_since(*first).as_secs_f32().max(0.05);
                window as f32 / span
            }
            _ => 0.0,
        };
        if self.running.is_empty() {
            self.recent.clear();
        }
        let load = Load {
            queued: self.queued.load(Ordering::Acquire),
            running: self.running.len(),
            tokens_in_flight: self.running.iter().map(|s| s.cache.len()).sum(),
            kv_cache_bytes: self.kv.used_bytes()
                + self
                    .running
                    .iter()
                    .map(|s| s.cache.device_bytes())
                    .sum::<usize>(),
            kv_kept_bytes: self.kv.kept_bytes(),
            kv_named_blocks: self.kv.named_blocks(),
            tokens_per_second,
            steps: self.steps,
        };
        self.load.send_if_modified(|old| {
            let changed = *old != load;
            *old = load;
            changed
        });
    }
}

/// Name the blocks `seq` has filled since the last step, so later prompts
/// with the same prefix can take them.
fn name_full_blocks(kv: &mut KvBlocks, seq: &mut Running) {
    let full = seq.cache.len() / KV_BLOCK_TOKENS;
    if full == seq.named {
        return;
    }
    extend_block_hashes(&mut seq.hashes, &seq.tokens[..full * KV_BLOCK_TOKENS]);
    for b in seq.named..full {
        kv.name(seq.cache.blocks()[b], seq.hashes[b]);
    }
    seq.named = full;
}

fn finish(mut seq: Running, reason: Finish) {
    if reason != Finish::Stop {
        let rest = seq.stream.flush();
        if !rest.text.is_empty() || !rest.ids.is_empty() {
            let _ = seq.job.events.send(Event::Delta {
                text: rest.text,
                ids: rest.ids,
            });
        }
    }
    let _ = seq.job.events.send(Event::Finished {
        reason,
        prompt_tokens: seq.job.prompt.len(),
        cached_tokens: seq.cached_tokens,
        completion_tokens: seq.generated,
        queue_time: seq.admitted.duration_since(seq.job.arrived),
        time_to_first_token: seq
            .first_token
            .map(|t| t.duration_since(seq.job.arrived))
            .unwrap_or_default(),
    });
}
