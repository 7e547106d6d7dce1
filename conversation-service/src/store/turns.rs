//! Writers that take turns over one queue of calls, for the batched write paths
//! (SendMessage, CreateConversation). The next batch is collected when the writer before
//! it has committed, so batches are as large as the load makes them (fewer statements
//! and WAL flushes than writers that each collect their own). A writer whose batch takes
//! longer than [`STALLED`] (a row lock held elsewhere) no longer holds the others back:
//! they write beside it.
//!
//! With [`Linger`], a batch that would be much smaller than the one before it waits a
//! moment for more calls (PostgreSQL's `commit_delay` does the same for commits). Callers
//! that each wait for their reply before sending again otherwise fall into a rhythm of a
//! full batch and a tiny one: the tiny one is what arrived while the full one was written,
//! and it costs a whole statement and WAL flush while the full batch's callers are still
//! on their way back.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Mutex, OwnedMutexGuard, mpsc};

/// How long a batch may hold the turn before the next writer goes ahead anyway.
pub const STALLED: Duration = Duration::from_millis(50);

/// When a batch waits for more calls: the batch before it had at least `after` calls,
/// and this one has fewer than a quarter of them. It then waits until it has half of them
/// or `for_at_most` has passed (Tokio's timer rounds that up to the next millisecond).
#[derive(Debug, Clone, Copy)]
pub struct Linger {
    pub after: usize,
    pub for_at_most: Duration,
}

/// The receiving end shared by the writers; cheap to clone.
pub struct Turns<J> {
    receiver: Arc<Mutex<mpsc::Receiver<J>>>,
    turn: Arc<Mutex<()>>,
    batch_max: usize,
    linger: Option<Linger>,
    /// The size of the batch collected last.
    last: Arc<AtomicUsize>,
}

impl<J> Clone for Turns<J> {
    fn clone(&self) -> Self {
        Self {
            receiver: Arc::clone(&self.receiver),
            turn: Arc::clone(&self.turn),
            batch_max: self.batch_max,
            linger: self.linger,
            last: Arc::clone(&self.last),
        }
    }
}

/// A writer's turn: held while its batch is written.
pub type Turn = Option<OwnedMutexGuard<()>>;

impl<J> Turns<J> {
    /// A queue of `capacity` calls, taken `batch_max` at most per batch.
    pub fn channel(
        capacity: usize,
        batch_max: usize,
        linger: Option<Linger>,
    ) -> (mpsc::Sender<J>, Self) {
        let (jobs, receiver) = mpsc::channel(capacity.max(1));
        let turns = Self {
            receiver: Arc::new(Mutex::new(receiver)),
            turn: Arc::new(Mutex::new(())),
            batch_max: batch_max.max(1),
            linger,
            last: Arc::new(AtomicUsize::new(0)),
        };
        (jobs, turns)
    }

    /// The next batch and the turn to write it in (`None` once every sender is gone and
    /// the queue is empty). Whoever holds the receiver collects the next batch, once the
    /// writer before it is done or stalled; meanwhile the queue fills.
    pub async fn next(&self) -> Option<(Vec<J>, Turn)> {
        let mut receiver = self.receiver.lock().await;
        let first = receiver.recv().await?;
        let turn = tokio::time::timeout(STALLED, Arc::clone(&self.turn).lock_owned())
            .await
            .ok();
        let mut batch = vec![first];
        take_queued(&mut receiver, &mut batch, self.batch_max);
        let last = self.last.load(Ordering::Relaxed);
        if let Some(linger) = self.linger
            && last >= linger.after
            && batch.len() < last / 4
        {
            let enough = (last / 2).min(self.batch_max);
            let until = tokio::time::Instant::now() + linger.for_at_most;
            while batch.len() < enough {
                let Ok(Some(job)) = tokio::time::timeout_at(until, receiver.recv()).await else {
                    break;
                };
                batch.push(job);
                take_queued(&mut receiver, &mut batch, enough);
            }
        }
        self.last.store(batch.len(), Ordering::Relaxed);
        Some((batch, turn))
    }
}

/// Moves calls already queued into `batch`, up to `max` in all.
fn take_queued<J>(receiver: &mut mpsc::Receiver<J>, batch: &mut Vec<J>, max: usize) {
    while batch.len() < max {
        match receiver.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Linger = Linger {
        after: 8,
        for_at_most: Duration::from_millis(1),
    };

    /// Queues `n` calls, numbered from `from`.
    async fn queue(jobs: &mpsc::Sender<usize>, from: usize, n: usize) {
        for job in from..from + n {
            jobs.send(job).await.unwrap();
        }
    }

    /// The next batch; a linger that never ends fails the test instead of hanging it.
    async fn next(turns: &Turns<usize>) -> Vec<usize> {
        tokio::time::timeout(Duration::from_secs(10), turns.next())
            .await
            .expect("the batch is handed out")
            .unwrap()
            .0
    }

    /// Turns whose last batch took calls 0..n.
    async fn after_a_batch_of(
        n: usize,
        linger: Option<Linger>,
    ) -> (mpsc::Sender<usize>, Turns<usize>) {
        let (jobs, turns) = Turns::channel(64, 64, linger);
        queue(&jobs, 0, n).await;
        assert_eq!(next(&turns).await.len(), n);
        (jobs, turns)
    }

    /// Queues `n` calls from `from` once the test next waits.
    fn queue_later(
        jobs: &mpsc::Sender<usize>,
        from: usize,
        n: usize,
    ) -> tokio::task::JoinHandle<()> {
        let jobs = jobs.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            queue(&jobs, from, n).await;
        })
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_much_smaller_than_the_last_waits_for_half_of_it() {
        let (jobs, turns) = after_a_batch_of(16, Some(LINGER)).await;
        // 2 queued (under a quarter of 16), 10 more on their way: the batch takes the
        // first 8 (half of 16) and leaves the rest to the next one.
        queue(&jobs, 16, 2).await;
        let _later = queue_later(&jobs, 18, 10);
        assert_eq!(next(&turns).await, (16..24).collect::<Vec<_>>());
        assert_eq!(next(&turns).await, (24..28).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn it_waits_no_longer_than_the_linger() {
        let (jobs, turns) = after_a_batch_of(16, Some(LINGER)).await;
        queue(&jobs, 16, 1).await;
        assert_eq!(next(&turns).await, [16], "nothing else came");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn small_batches_and_queues_without_linger_do_not_wait() {
        for (linger, first) in [(Some(LINGER), 7), (None, 16)] {
            let (jobs, turns) = after_a_batch_of(first, linger).await;
            queue(&jobs, first, 1).await;
            let later = queue_later(&jobs, first + 1, 10);
            assert_eq!(next(&turns).await, [first], "took what was queued");
            later.await.unwrap();
        }
    }
}
