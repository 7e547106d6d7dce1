//! The retention sweeper: ended sessions, the contact details of calls given up, expired
//! and revoked links, audit records and RedeemToken's request ids go once they are older
//! than their setting. It removes a bounded batch per transaction and pauses between
//! batches, so sends and redemptions never wait behind it. token-service is one writer per
//! database, so two sweepers never race.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{
    domain::{Timestamp, now},
    error::Error,
    outbox::to_chrono,
    store::{Retained, Store},
};

/// A pause between two batches, so a long sweep leaves the writer to others.
const PAUSE_BETWEEN_BATCHES: Duration = Duration::from_millis(10);

/// How long each kind of data is kept (`None`: for ever), and how the sweeper runs.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    pub ended_sessions: Option<Duration>,
    pub failed_call_contacts: Option<Duration>,
    pub links: Option<Duration>,
    pub audit_records: Option<Duration>,
    pub redeem_requests: Option<Duration>,
    pub interval: Duration,
    pub batch: u32,
}

impl RetentionSettings {
    fn keep(&self, what: Retained) -> Option<Duration> {
        match what {
            Retained::EndedSessions => self.ended_sessions,
            Retained::FailedCallContacts => self.failed_call_contacts,
            Retained::Links => self.links,
            Retained::AuditRecords => self.audit_records,
            Retained::RedeemRequests => self.redeem_requests,
        }
    }
}

/// Sweeps every kind once, batch after batch until nothing old is left; returns how many
/// rows each removed.
pub async fn sweep(
    store: &Store,
    settings: &RetentionSettings,
    now: Timestamp,
) -> Result<Vec<(Retained, usize)>, Error> {
    let mut removed = Vec::new();
    for what in Retained::ALL {
        let Some(keep) = settings.keep(what) else {
            continue;
        };
        let cutoff = now - to_chrono(keep);
        let mut total = 0;
        loop {
            let batch = store.sweep(what, cutoff, settings.batch).await?;
            total += batch;
            if batch < settings.batch as usize {
                break;
            }
            tokio::time::sleep(PAUSE_BETWEEN_BATCHES).await;
        }
        crate::metrics::retention_removed(what.name(), total);
        if total > 0 {
            tracing::info!(
                kind = what.name(),
                rows = total,
                "retention removed old data"
            );
        }
        removed.push((what, total));
    }
    Ok(removed)
}

/// Sweeps every `interval` until `shutdown`.
pub async fn run(store: Store, settings: RetentionSettings, shutdown: CancellationToken) {
    loop {
        if let Err(error) = sweep(&store, &settings, now()).await {
            tracing::warn!(%error, "retention sweep failed; retrying at the next interval");
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(settings.interval) => {}
        }
    }
}
