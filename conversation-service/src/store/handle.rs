//! The store's handle: its pools, SendMessage's kept writer connections and known rows,
//! CreateConversation's queue.

use std::sync::Arc;

use sqlx::PgPool;

use super::{create_queue, kept, records::ConversationRow, rows};
use crate::{domain::NewConversation, error::Result};

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(super) pool: PgPool,
    /// SendMessage's batches: connections of the send pool, kept between batches.
    pub(super) writers: Arc<kept::Kept>,
    /// The conversation rows SendMessage's writers last read or wrote.
    pub(super) known: Arc<rows::KnownRows>,
    pub(super) creates: create_queue::CreateQueue,
    /// The writers' pools, closed with the store.
    pub(super) writer_pools: Arc<(PgPool, PgPool)>,
}

impl Store {
    /// Creates a conversation, or returns what an earlier call with the same
    /// `request_id` returned (`false`): the key decides before `reuse_active` does, so a
    /// retry never gets another conversation, even when reuse would now pick one.
    /// Concurrent calls are written together (see `create_queue`).
    pub async fn create_conversation(
        &self,
        new: NewConversation,
    ) -> Result<(ConversationRow, bool)> {
        self.creates.create(new).await
    }

    /// The query pool: migrations and health checks run on it too.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) fn writers(&self) -> &kept::Kept {
        &self.writers
    }

    /// Connections SendMessage's writers keep between batches now.
    pub fn kept_writers(&self) -> usize {
        self.writers.count()
    }

    /// Reports the pools' connections (read at each scrape).
    pub fn sample_metrics(&self) {
        let (send, create) = &*self.writer_pools;
        crate::metrics::sample_pool(&self.pool);
        crate::metrics::sample_writer_pool("send", send, self.kept_writers());
        crate::metrics::sample_writer_pool("create", create, 0);
    }

    /// Closes every pool, waiting for the connections in use. The connections
    /// SendMessage's writers keep go back to their pool first (later batches return
    /// theirs).
    pub async fn close(&self) {
        self.pool.close().await;
        self.writers.close();
        let (send, create) = &*self.writer_pools;
        send.close().await;
        create.close().await;
    }

    pub(crate) fn known(&self) -> &rows::KnownRows {
        &self.known
    }
}
