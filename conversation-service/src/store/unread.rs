//! Unread summaries (migration `20261206091100_unread_counts`): kept per participant by
//! the statements that move heads and read positions, read here in one row.

use sqlx::{Postgres, Transaction};

use super::handle::Store;
use crate::{
    domain::{Participant, Role},
    error::{Error, Result},
};

/// A participant's unread messages and the conversations that have any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct UnreadSummary {
    pub unread_messages: i64,
    pub unread_conversations: i64,
}

impl UnreadSummary {
    /// How one conversation's unread state for one participant changes when its head and
    /// that participant's read position move from `before` to `after` (each `(head,
    /// read)`).
    pub fn change(before: (i64, i64), after: (i64, i64)) -> Self {
        let unread = |(head, read): (i64, i64)| (head - read).max(0);
        Self {
            unread_messages: unread(after) - unread(before),
            unread_conversations: i64::from(unread(after) > 0) - i64::from(unread(before) > 0),
        }
    }

    fn is_zero(self) -> bool {
        self == Self::default()
    }
}

impl Store {
    /// `owner`'s summary; zero for a participant with no conversation (or an anonymous
    /// visitor, who has no id to keep one under).
    pub async fn unread_summary(&self, owner: &Participant) -> Result<UnreadSummary> {
        let summary = sqlx::query_as(
            "SELECT unread_messages, unread_conversations FROM unread_counts \
             WHERE role = $1 AND participant_id = $2",
        )
        .bind(owner.role())
        .bind(owner.id())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::db("unread summary", e))?;
        Ok(summary.unwrap_or_default())
    }
}

/// Adds `change` to `participant_id`'s summary, in the transaction that made it (which
/// holds the conversation's row lock, so changes of one conversation apply in order).
pub(super) async fn add_unread(
    tx: &mut Transaction<'_, Postgres>,
    role: Role,
    participant_id: &str,
    change: UnreadSummary,
) -> Result<()> {
    if change.is_zero() || participant_id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO unread_counts AS n (role, participant_id, unread_messages, \
           unread_conversations) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (role, participant_id) DO UPDATE SET \
           unread_messages = n.unread_messages + excluded.unread_messages, \
           unread_conversations = n.unread_conversations + excluded.unread_conversations",
    )
    .bind(role)
    .bind(participant_id)
    .bind(change.unread_messages)
    .bind(change.unread_conversations)
    .execute(&mut **tx)
    .await
    .map_err(|e| Error::db("count unread", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::UnreadSummary;

    fn change(before: (i64, i64), after: (i64, i64)) -> (i64, i64) {
        let c = UnreadSummary::change(before, after);
        (c.unread_messages, c.unread_conversations)
    }

    #[test]
    fn changes_of_one_conversation() {
        assert_eq!(change((0, 0), (3, 0)), (3, 1), "first messages arrive");
        assert_eq!(change((3, 0), (5, 0)), (2, 0), "more arrive");
        assert_eq!(change((5, 0), (5, 2)), (-2, 0), "part read");
        assert_eq!(change((5, 2), (5, 5)), (-3, -1), "all read");
        assert_eq!(change((5, 5), (6, 6)), (0, 0), "own message");
    }
}
