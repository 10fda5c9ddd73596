//! The CDR writer: a dedicated thread that takes finished calls off a channel and inserts
//! them, so call tasks never wait on disk. What queued up during one commit is written in the
//! next, as one transaction: a flood of short calls costs one sync to disk per batch, not per
//! call. `flush`/`shutdown` let the process exit without losing queued CDRs; if the thread is
//! gone, `write` falls back to a synchronous insert.

use std::fmt;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::error::StoreError;
use crate::model::Cdr;
use crate::store::Store;

/// Attempts per CDR when the database stays busy (each attempt already waits out the
/// connection's busy timeout).
const BUSY_ATTEMPTS: u32 = 5;
const BUSY_BACKOFF: Duration = Duration::from_millis(100);
/// The most CDRs written in one transaction.
const MAX_BATCH: usize = 1000;

enum Msg {
    Write(Box<Cdr>),
    Flush(mpsc::SyncSender<()>),
}

struct Inner {
    // `None` once shut down. Only this one Sender exists, so taking it disconnects the
    // channel, and the thread stops after writing everything queued before that point.
    sender: Mutex<Option<Sender<Msg>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    store: Store,
}

/// Cloneable handle to the CDR writer thread.
#[derive(Clone)]
pub struct CdrWriter {
    inner: Arc<Inner>,
}

impl fmt::Debug for CdrWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CdrWriter").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values (a Sender, a JoinHandle) stay valid even if a holder panicked.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CdrWriter {
    /// Starts the writer thread. If the OS refuses a thread, the writer still works:
    /// every `write` then inserts synchronously.
    pub fn spawn(store: Store) -> CdrWriter {
        // A write connection of its own: a commit waiting for the disk or for another
        // process's lock never holds up the API's or the calls' use of the store.
        let store = store.own_connection().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot open a connection for the CDR writer; sharing one");
            store
        });
        // Unbounded: a CDR is small, and blocking a call task because the disk is slow
        // would be worse than holding a backlog in memory.
        let (tx, rx) = mpsc::channel();
        let thread_store = store.clone();
        let (sender, thread) = match thread::Builder::new()
            .name("cdr-writer".into())
            .spawn(move || run(&thread_store, rx))
        {
            Ok(handle) => (Some(tx), Some(handle)),
            Err(e) => {
                tracing::error!(error = %e, "cannot start CDR writer thread; writing CDRs synchronously");
                (None, None)
            }
        };
        CdrWriter {
            inner: Arc::new(Inner {
                sender: Mutex::new(sender),
                thread: Mutex::new(thread),
                store,
            }),
        }
    }

    /// Queues `cdr` for writing and returns at once. After [`CdrWriter::shutdown`] (or if the
    /// thread died) it is written synchronously instead, and the result is returned.
    pub fn write(&self, cdr: Cdr) -> Result<(), StoreError> {
        let msg = {
            let sender = lock(&self.inner.sender);
            match sender.as_ref() {
                Some(s) => match s.send(Msg::Write(Box::new(cdr))) {
                    Ok(()) => return Ok(()),
                    Err(mpsc::SendError(msg)) => msg,
                },
                None => Msg::Write(Box::new(cdr)),
            }
        };
        match msg {
            Msg::Write(cdr) => write_with_retry(&self.inner.store, &cdr),
            Msg::Flush(_) => Ok(()),
        }
    }

    /// Waits until every CDR queued before this call has been written (or given up on).
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        {
            let sender = lock(&self.inner.sender);
            let Some(s) = sender.as_ref() else {
                return;
            };
            if s.send(Msg::Flush(ack_tx)).is_err() {
                return;
            }
        }
        // Err only if the thread is gone, and then nothing is left to wait for.
        let _ = ack_rx.recv();
    }

    /// Writes everything queued, stops the thread and waits for it. Idempotent; affects all
    /// clones. Later `write`s are done synchronously.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

impl Inner {
    fn shutdown(&self) {
        drop(lock(&self.sender).take());
        let handle = lock(&self.thread).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("CDR writer thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle going away must not drop queued CDRs on the floor.
        self.shutdown();
    }
}

fn run(store: &Store, rx: Receiver<Msg>) {
    let mut batch: Vec<Box<Cdr>> = Vec::new();
    let mut acks = Vec::new();
    while let Ok(first) = rx.recv() {
        // Whatever queued up while the last batch was being committed goes into the next one:
        // no added latency when calls are few, one commit (one sync) per batch under a flood.
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Write(cdr) => batch.push(cdr),
                Msg::Flush(ack) => acks.push(ack),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            write_batch(store, &batch);
            batch.clear();
        }
        // Every CDR queued before a flush was taken into this batch or an earlier one.
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// Writes `batch` in one transaction, retrying while the database is busy. If the
/// transaction cannot be made at all, each CDR is tried on its own so that one problem
/// loses as little as possible. Errors are logged inside (see [`write_with_retry`]).
fn write_batch(store: &Store, batch: &[Box<Cdr>]) {
    if batch.len() == 1 {
        let _ = write_with_retry(store, &batch[0]);
        return;
    }
    let refs: Vec<&Cdr> = batch.iter().map(|c| &**c).collect();
    let mut attempt = 1;
    loop {
        match store.insert_cdrs(&refs) {
            Ok(results) => {
                for (cdr, r) in batch.iter().zip(results) {
                    if let Err(e) = r {
                        log_lost(cdr, &e);
                    }
                }
                return;
            }
            Err(e) if e.is_busy() && attempt < BUSY_ATTEMPTS => {
                tracing::warn!(
                    cdrs = batch.len(),
                    attempt,
                    "database busy writing CDRs; retrying"
                );
                thread::sleep(BUSY_BACKOFF * attempt);
                attempt += 1;
            }
            Err(e) => {
                tracing::warn!(cdrs = batch.len(), error = %e, "CDR batch failed; writing one by one");
                for cdr in batch {
                    let _ = write_with_retry(store, cdr);
                }
                return;
            }
        }
    }
}

fn log_lost(cdr: &Cdr, e: &StoreError) {
    let json = serde_json::to_string(cdr).unwrap_or_else(|_| format!("{cdr:?}"));
    tracing::error!(call_id = %cdr.call_id, error = %e, cdr = %json, "CDR could not be written");
}

/// Inserts `cdr`, retrying while the database is busy. A CDR that cannot be written is
/// logged in full as JSON so it can still be recovered from the logs.
fn write_with_retry(store: &Store, cdr: &Cdr) -> Result<(), StoreError> {
    let mut attempt = 1;
    loop {
        match store.insert_cdr(cdr) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_busy() && attempt < BUSY_ATTEMPTS => {
                tracing::warn!(call_id = %cdr.call_id, attempt, "database busy writing CDR; retrying");
                thread::sleep(BUSY_BACKOFF * attempt);
                attempt += 1;
            }
            Err(e) => {
                log_lost(cdr, &e);
                return Err(e);
            }
        }
    }
}
