//! The engine: accepts inbound calls from the SIP layer and starts one Call actor per call.
//! It holds only shared handles (store, CDR writer, SIP server, media engine, prompts).

use crate::call::{run_inbound_call, CallServices};
use crate::prompts::{PromptConfig, PromptLibrary};
use callplane_media::MediaEngine;
use callplane_sip::{InboundCall, SipServer};
use callplane_store::{CdrWriter, Store};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub prompts: PromptConfig,
}

#[derive(Clone)]
pub struct Engine {
    svc: Arc<CallServices>,
}

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        store: Store,
        cdrs: CdrWriter,
        sip: SipServer,
        media: MediaEngine,
    ) -> Self {
        let prompts = Arc::new(PromptLibrary::new(cfg.prompts, store.clone()));
        Engine {
            svc: Arc::new(CallServices {
                store,
                cdrs,
                sip,
                media,
                prompts,
                active_calls: AtomicUsize::new(0),
                finished_calls: AtomicU64::new(0),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Runs until the SIP layer stops delivering calls.
    pub async fn run(&self, mut calls: mpsc::Receiver<InboundCall>) {
        while let Some(call) = calls.recv().await {
            tokio::spawn(run_inbound_call(self.svc.clone(), call));
        }
    }

    /// Ends every call in progress (NORMAL_TEMPORARY_FAILURE: a final response before answer,
    /// BYE with Reason after) and waits, at most `grace`, until their CDRs are queued.
    /// Returns the number of calls still running when the grace time ran out.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.svc.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        while self.active_calls() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.active_calls()
    }

    pub fn active_calls(&self) -> usize {
        self.svc.active_calls.load(Ordering::Relaxed)
    }

    pub fn finished_calls(&self) -> u64 {
        self.svc.finished_calls.load(Ordering::Relaxed)
    }
}
