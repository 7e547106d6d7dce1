//! What a CreateConversation batch does, decided without the database: given the answers
//! already recorded under the batch's idempotency keys and the open conversations of its
//! (provider, customer) pairs, each call is answered again, refused, given the active
//! conversation, or given a new one. The SQL step (`create.rs`) only reads the inputs and
//! carries this out.

use std::collections::HashMap;

use uuid::Uuid;

use crate::domain::NewConversation;

/// What one CreateConversation of a batch gets, decided from what the database holds
/// (under the batch's locks) and from the calls before it in the batch, exactly as if the
/// calls had run one after another in batch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Plan {
    /// A retry: what the first call with this key returned.
    Answered(Uuid),
    /// The key belongs to another provider's conversation.
    KeyReused,
    /// The customer's active conversation with the provider; the key is recorded for it.
    Reuse(Uuid),
    /// A new conversation with this id.
    Create(Uuid),
}

/// What the database said before a batch was decided.
#[derive(Debug, Default)]
pub(super) struct Known {
    /// Earlier answers by request_id: the conversation and its provider.
    pub(super) answered: HashMap<Uuid, (Uuid, String)>,
    /// The most recently active open conversation per (provider, customer).
    pub(super) active: HashMap<(String, String), Uuid>,
}

/// Decides every call of a batch; `new_id` names each conversation to create.
pub(super) fn plan(
    batch: &[NewConversation],
    mut known: Known,
    mut new_id: impl FnMut() -> Uuid,
) -> Vec<Plan> {
    let mut plans = Vec::with_capacity(batch.len());
    for new in batch {
        if let Some(request_id) = new.request_id
            && let Some((id, provider_id)) = known.answered.get(&request_id)
        {
            plans.push(if *provider_id == new.provider_id {
                Plan::Answered(*id)
            } else {
                Plan::KeyReused
            });
            continue;
        }
        let pair = new
            .customer
            .customer_id
            .as_ref()
            .map(|customer| (new.provider_id.clone(), customer.clone()));
        let reused = pair
            .as_ref()
            .filter(|_| new.reuse_active)
            .and_then(|pair| known.active.get(pair).copied());
        let (plan, id) = match reused {
            Some(id) => (Plan::Reuse(id), id),
            None => {
                let id = new_id();
                if let Some(pair) = pair {
                    // The newest open conversation of this pair from now on.
                    known.active.insert(pair, id);
                }
                (Plan::Create(id), id)
            }
        };
        if let Some(request_id) = new.request_id {
            // A later call with this key in the same batch is its retry.
            known
                .answered
                .insert(request_id, (id, new.provider_id.clone()));
        }
        plans.push(plan);
    }
    plans
}

#[cfg(test)]
mod tests {
    use crate::domain::CustomerDetails;

    use super::*;

    fn new(
        key: Option<u128>,
        provider: &str,
        customer: Option<&str>,
        reuse: bool,
    ) -> NewConversation {
        NewConversation {
            request_id: key.map(Uuid::from_u128),
            provider_id: provider.into(),
            customer: CustomerDetails {
                customer_id: customer.map(str::to_owned),
                ..CustomerDetails::default()
            },
            reuse_active: reuse,
            origin: String::new(),
            session_id: None,
        }
    }

    /// Ids 1001, 1002, ... for the conversations a plan creates.
    fn ids() -> impl FnMut() -> Uuid {
        let mut next = 1000;
        move || {
            next += 1;
            Uuid::from_u128(next)
        }
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn duplicates_in_one_batch_resolve_to_one_conversation() {
        let batch = [
            new(Some(1), "p", None, false),
            new(Some(1), "p", None, false),
            new(Some(2), "p", None, false),
            new(Some(1), "p", None, false),
        ];
        assert_eq!(
            plan(&batch, Known::default(), ids()),
            [
                Plan::Create(id(1001)),
                Plan::Answered(id(1001)),
                Plan::Create(id(1002)),
                Plan::Answered(id(1001)),
            ]
        );
    }

    #[test]
    fn a_key_used_by_another_provider_is_refused() {
        let mut known = Known::default();
        known.answered.insert(id(1), (id(7), "other".into()));
        let batch = [
            new(Some(1), "p", None, false),
            new(Some(2), "p", None, false),
            new(Some(2), "q", None, false),
        ];
        assert_eq!(
            plan(&batch, known, ids()),
            [Plan::KeyReused, Plan::Create(id(1001)), Plan::KeyReused]
        );
    }

    #[test]
    fn the_key_decides_before_reuse() {
        let mut known = Known::default();
        known.answered.insert(id(1), (id(7), "p".into()));
        known.active.insert(("p".into(), "c".into()), id(8));
        let batch = [
            new(Some(1), "p", Some("c"), true),
            new(Some(2), "p", Some("c"), true),
        ];
        assert_eq!(
            plan(&batch, known, ids()),
            [Plan::Answered(id(7)), Plan::Reuse(id(8))]
        );
    }

    #[test]
    fn reuse_sees_what_earlier_calls_of_the_batch_created() {
        let batch = [
            new(Some(1), "p", Some("c"), true),
            new(Some(2), "p", Some("c"), true),
            new(Some(3), "p", Some("d"), false),
            new(None, "p", Some("d"), true),
            new(Some(5), "p", Some("d"), false),
        ];
        assert_eq!(
            plan(&batch, Known::default(), ids()),
            [
                Plan::Create(id(1001)),
                Plan::Reuse(id(1001)),
                Plan::Create(id(1002)),
                Plan::Reuse(id(1002)),
                Plan::Create(id(1003)),
            ]
        );
    }
}
