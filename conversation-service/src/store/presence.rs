//! Presence rows: each replica refreshes one row per participant it serves, with an
//! expiry; a participant is online while any replica's row for it has not expired.
//! Changes are announced (presence_events, numbered into the feed) under the
//! participant's `presence_state` row lock, so however many replicas see a change, it
//! is announced once.

use std::{collections::HashMap, time::Duration};

use uuid::Uuid;

use super::{
    Store,
    notice::{Notice, PresenceNote, notify},
};
use crate::{
    domain::{Participant, Role},
    error::{Error, Result},
};

/// Bytes of presence changes per notice: under NOTIFY's 8000 with room for the envelope.
const NOTICE_BUDGET: usize = 7000;
/// Providers named per customer change: its most recent conversations' (at 128 bytes an
/// id, that still fits a notice).
const PROVIDERS_PER_CUSTOMER: i64 = 50;

/// A participant as presence keys it.
pub type PresenceKey = (Role, String);

fn columns(keys: &[PresenceKey]) -> (Vec<i16>, Vec<String>) {
    keys.iter()
        .map(|(role, id)| (*role as i16, id.clone()))
        .unzip()
}

impl Store {
    /// One beat of replica `replica`: refreshes its rows for `alive` (expiring after
    /// `ttl`), deletes its rows for `gone`, deletes every replica's expired rows, and
    /// announces what changed for the participants touched.
    pub async fn presence_beat(
        &self,
        replica: Uuid,
        alive: &[PresenceKey],
        gone: &[PresenceKey],
        ttl: Duration,
    ) -> Result<()> {
        let ctx = "presence beat";
        let mut tx = self.pool.begin().await.map_err(|e| Error::db(ctx, e))?;
        let (roles, ids) = columns(alive);
        // New rows, and rows that had expired unswept (another replica may have
        // announced the participant offline meanwhile), change presence.
        let mut touched: Vec<PresenceKey> = sqlx::query_as(
            "WITH stale AS (
                 SELECT role, participant_id FROM presence
                  WHERE replica = $3 AND expires_at <= now()),
             up AS (
                 INSERT INTO presence (role, participant_id, replica, expires_at)
                 SELECT r, p, $3, now() + $4::interval
                   FROM unnest($1::smallint[], $2::text[]) a(r, p)
                 ON CONFLICT (role, participant_id, replica)
                 DO UPDATE SET expires_at = EXCLUDED.expires_at
                 RETURNING role, participant_id, xmax = 0 AS inserted)
             SELECT role, participant_id FROM up WHERE inserted
             UNION SELECT role, participant_id FROM stale",
        )
        .bind(&roles)
        .bind(&ids)
        .bind(replica)
        .bind(ttl)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        let (roles, ids) = columns(gone);
        // Expired rows of any replica (one killed without a word); SKIP LOCKED, so
        // replicas sweeping together never wait on each other.
        let swept: Vec<PresenceKey> = sqlx::query_as(
            "WITH mine AS (
                 DELETE FROM presence WHERE replica = $3
                    AND (role, participant_id) IN
                        (SELECT * FROM unnest($1::smallint[], $2::text[]))
                 RETURNING role, participant_id),
             expired AS (
                 DELETE FROM presence WHERE ctid IN (
                     SELECT ctid FROM presence WHERE expires_at <= now()
                      FOR UPDATE SKIP LOCKED)
                 RETURNING role, participant_id)
             SELECT * FROM mine UNION SELECT * FROM expired",
        )
        .bind(&roles)
        .bind(&ids)
        .bind(replica)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        touched.extend(swept);
        touched.extend(gone.iter().cloned());
        touched.sort_by(|a, b| (a.0 as i16, &a.1).cmp(&(b.0 as i16, &b.1)));
        touched.dedup();
        if !touched.is_empty() {
            let changes = announce(&mut tx, &touched).await?;
            // Streams of the participants' conversations, and the inboxes that show them,
            // are told on every replica, in notices under NOTIFY's 8000-byte payload.
            let mut chunk: Vec<PresenceNote> = Vec::new();
            let mut size = 0;
            for change in changes {
                let bytes = 32
                    + change.id.len()
                    + change.providers.iter().map(|p| p.len() + 3).sum::<usize>();
                if size + bytes > NOTICE_BUDGET && !chunk.is_empty() {
                    let changes = std::mem::take(&mut chunk);
                    notify(&mut tx, &Notice::Presence { changes }).await?;
                    size = 0;
                }
                size += bytes;
                chunk.push(change);
            }
            if !chunk.is_empty() {
                notify(&mut tx, &Notice::Presence { changes: chunk }).await?;
            }
        }
        tx.commit().await.map_err(|e| Error::db(ctx, e))
    }

    /// Whether `customer` has a conversation with `provider`.
    pub async fn customer_talks_to(&self, customer: &str, provider: &str) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM conversations
                             WHERE customer_id = $1 AND provider_id = $2)",
        )
        .bind(customer)
        .bind(provider)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| Error::db("read a customer's providers", e))
    }

    /// Whether each participant has a row on some replica that has not expired.
    pub async fn presence(&self, participants: &[Participant]) -> Result<Vec<bool>> {
        let keys: Vec<PresenceKey> = participants
            .iter()
            .map(|p| (p.role(), p.id().to_owned()))
            .collect();
        let (roles, ids) = columns(&keys);
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM presence p
                             WHERE p.role = a.r AND p.participant_id = a.p
                               AND p.expires_at > now())
               FROM unnest($1::smallint[], $2::text[]) WITH ORDINALITY a(r, p, n)
              ORDER BY a.n",
        )
        .bind(&roles)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::db("read presence", e))
    }
}

/// Announces the participants (sorted: locks in one order) whose presence differs from
/// what was last announced, and returns those changes. Their state rows are locked first; the comparison is a later
/// statement, so it sees every row committed by whoever held a lock before.
async fn announce(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    touched: &[PresenceKey],
) -> Result<Vec<PresenceNote>> {
    // Rows to lock exist first, then the locks in key order, then the comparison.
    const STEPS: [&str; 3] = [
        "INSERT INTO presence_state (role, participant_id, online)
         SELECT r, p, false FROM unnest($1::smallint[], $2::text[]) a(r, p)
         ON CONFLICT DO NOTHING",
        "SELECT 1 FROM presence_state s
           JOIN unnest($1::smallint[], $2::text[]) a(r, p)
             ON s.role = a.r AND s.participant_id = a.p
          ORDER BY s.role, s.participant_id FOR UPDATE OF s",
        "WITH now_state AS (
             SELECT a.r, a.p, EXISTS (SELECT 1 FROM presence x
                                       WHERE x.role = a.r AND x.participant_id = a.p
                                         AND x.expires_at > now()) AS online
               FROM unnest($1::smallint[], $2::text[]) a(r, p)),
         changed AS (
             UPDATE presence_state s SET online = n.online FROM now_state n
              WHERE s.role = n.r AND s.participant_id = n.p AND s.online <> n.online
              RETURNING s.role, s.participant_id, s.online)
         INSERT INTO presence_events (role, participant_id, online)
         SELECT role, participant_id, online FROM changed ORDER BY role, participant_id
         RETURNING role, participant_id, online",
    ];
    let (roles, ids) = columns(touched);
    let [create, lock, compare] = STEPS;
    for step in [create, lock] {
        sqlx::query(step)
            .bind(&roles)
            .bind(&ids)
            .execute(&mut **tx)
            .await
            .map_err(|e| Error::db("announce presence", e))?;
    }
    let changed: Vec<(Role, String, bool)> = sqlx::query_as(compare)
        .bind(&roles)
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| Error::db("announce presence", e))?;
    // One statement for every customer that changed: the providers of its most recent
    // conversations.
    let customers: Vec<String> = changed
        .iter()
        .filter(|(role, ..)| *role == Role::Customer)
        .map(|(_, id, _)| id.clone())
        .collect();
    let mut providers: HashMap<String, Vec<String>> = if customers.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, (String, Vec<String>)>(
            "SELECT a.id, ARRAY(SELECT DISTINCT r.provider_id FROM (
                 SELECT provider_id FROM conversations WHERE customer_id = a.id
                  ORDER BY inbox_at DESC LIMIT $2) r)
               FROM unnest($1::text[]) a(id)",
        )
        .bind(&customers)
        .bind(PROVIDERS_PER_CUSTOMER)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| Error::db("announce presence", e))?
        .into_iter()
        .collect()
    };
    let notes = changed
        .into_iter()
        .map(|(role, id, online)| PresenceNote {
            providers: match role {
                Role::Customer => providers.remove(&id).unwrap_or_default(),
                Role::Provider => Vec::new(),
            },
            role,
            id,
            online,
        })
        .collect();
    Ok(notes)
}
