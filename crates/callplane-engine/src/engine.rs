//! The engine: accepts inbound calls from the SIP layer and starts one Call actor per call.
//! It holds only shared handles (store, CDR writer, SIP server, media engine, prompts).

use crate::call::{run_inbound_call, CallServices};
use crate::prompts::{PromptConfig, PromptLibrary};
use callplane_media::MediaEngine;
use callplane_sip::{InboundCall, SipServer};
use callplane_store::{CdrWriter, Store};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

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
            }),
        }
    }

    /// Runs until the SIP layer stops delivering calls.
    pub async fn run(&self, mut calls: mpsc::Receiver<InboundCall>) {
        while let Some(call) = calls.recv().await {
            tokio::spawn(run_inbound_call(self.svc.clone(), call));
        }
    }

    pub fn active_calls(&self) -> usize {
        self.svc.active_calls.load(Ordering::Relaxed)
    }

    pub fn finished_calls(&self) -> u64 {
        self.svc.finished_calls.load(Ordering::Relaxed)
    }
}
