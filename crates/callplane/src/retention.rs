//! Recording retention: with `[server] recordingRetentionDays = N`, recordings that ended more
//! than N days ago are removed — the file first, then its row, so a crash in between leaves a
//! row whose file is gone (served as `410`, removed at the next sweep) rather than a file
//! nothing points to. A sweep runs at start and every hour, off the runtime's worker threads.

use callplane_store::Store;
use chrono::{DateTime, Duration as Days, Utc};
use std::collections::HashSet;
use std::time::Duration;
use tracing::{info, warn};

/// How often the sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// Recordings looked at per store query.
const BATCH: usize = 200;

/// Sweeps now and then every [`SWEEP_EVERY`], for as long as the server runs.
pub async fn run(store: Store, days: u32) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = store.clone();
        match tokio::task::spawn_blocking(move || sweep(&s, days, Utc::now())).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(removed = n, days, "recordings past their retention removed"),
            Ok(Err(e)) => warn!(error = %e, "recording retention sweep failed"),
            Err(e) => warn!(error = %e, "recording retention sweep panicked"),
        }
    }
}

/// Removes the recordings that ended before `now` less `days`; how many. A file that cannot
/// be removed (other than already gone) keeps its row and is tried again next time.
pub fn sweep(
    store: &Store,
    days: u32,
    now: DateTime<Utc>,
) -> Result<usize, callplane_store::StoreError> {
    let cutoff = now - Days::days(i64::from(days));
    let mut removed = 0;
    let mut stuck: HashSet<String> = HashSet::new();
    loop {
        let batch = store.recordings_ended_before(cutoff, BATCH + stuck.len())?;
        let todo: Vec<_> = batch.iter().filter(|r| !stuck.contains(&r.id)).collect();
        if todo.is_empty() {
            return Ok(removed);
        }
        for r in todo {
            match std::fs::remove_file(&r.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(recording = %r.id, path = %r.path, error = %e, "cannot remove an expired recording");
                    stuck.insert(r.id.clone());
                    continue;
                }
            }
            if store.delete_recording(&r.id)? {
                removed += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callplane_store::Recording;

    fn recording(id: &str, path: &std::path::Path, ended: DateTime<Utc>) -> Recording {
        Recording {
            id: id.into(),
            call_id: format!("call-{id}"),
            tenant: None,
            path: path.to_string_lossy().into_owned(),
            channels: 1,
            start_time: ended - Days::seconds(1),
            end_time: ended,
            duration_ms: 1000,
            size_bytes: 44,
        }
    }

    #[test]
    fn a_sweep_ends_even_when_a_file_cannot_be_removed() {
        let store = Store::open_in_memory().unwrap();
        let dir = std::env::temp_dir().join(format!("callplane-retention-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("stuck.wav")).unwrap(); // a directory: not removable
        let now = Utc::now();
        let old = now - Days::days(10);
        for r in [
            recording("gone", &dir.join("gone.wav"), old), // its file is already gone
            recording("stuck", &dir.join("stuck.wav"), old),
            recording("young", &dir.join("young.wav"), now),
        ] {
            store.insert_recording(&r).unwrap();
        }
        assert_eq!(sweep(&store, 7, now).unwrap(), 1);
        let left: Vec<String> = store
            .recordings_ended_before(now + Days::days(1), 10)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(
            left,
            ["stuck", "young"],
            "the stuck one is tried again next time"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
