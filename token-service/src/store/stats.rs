//! Figures about the outbox for metrics.

use super::thread::Store;
use crate::{
    domain::to_micros,
    error::{Error, StoreResultExt},
};

const MICROS_PER_SECOND: f64 = 1e6;

/// The outbox at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutboxStats {
    /// Calls waiting to be made.
    pub pending: i64,
    /// Age of the oldest waiting call, in seconds (0 when none waits).
    pub oldest_pending_seconds: f64,
    /// Calls conversation-service refused for good, kept for operators.
    pub failed: i64,
    /// Erasures whose conversation-service part is still to be made.
    pub erasures_pending: i64,
}

impl Store {
    pub async fn outbox_stats(&self) -> Result<OutboxStats, Error> {
        let now = to_micros(crate::domain::now());
        self.call(move |conn| {
            let (pending, oldest, failed): (i64, Option<i64>, i64) = conn
                .query_row(
                    "SELECT count(*) FILTER (WHERE failed_time IS NULL) AS pending,
                            min(create_time) FILTER (WHERE failed_time IS NULL) AS oldest,
                            count(*) FILTER (WHERE failed_time IS NOT NULL) AS failed
                     FROM outbox",
                    [],
                    |r| Ok((r.get("pending")?, r.get("oldest")?, r.get("failed")?)),
                )
                .context("reading outbox figures")?;
            let erasures_pending = conn
                .query_row(
                    "SELECT count(*) FROM erasures WHERE complete_time IS NULL",
                    [],
                    |r| r.get(0),
                )
                .context("reading outbox figures")?;
            #[allow(clippy::cast_precision_loss)]
            let oldest_pending_seconds = oldest.map_or(0.0, |t| {
                (now.saturating_sub(t)).max(0) as f64 / MICROS_PER_SECOND
            });
            Ok(OutboxStats {
                pending,
                oldest_pending_seconds,
                failed,
                erasures_pending,
            })
        })
        .await
    }
}
