//! Every task the node spawns, owned: one [`TaskTracker`] and the node's
//! [`CancellationToken`] (the iroh pattern).
//!
//! - A **service** ([`Tasks::spawn_service`]) runs for the node's whole life (the KLP swarm,
//!   the sync actor and its op persister, the KLP event recorder, the remote-call server,
//!   the signal handler). If it ends before shutdown was asked for, or panics, the failure
//!   is logged with the task's name and recorded, and `/readyz` answers 503 from then on: a
//!   node that lost part of itself must not keep receiving traffic as if it were whole.
//! - A **job** ([`Tasks::spawn`]) is short-lived work (one peer's API call, one sync
//!   request, the OIDC first fetch). A panic is logged; it does not make the node unready.
//!
//! Two tokens: the node's **shutdown** token (Ctrl-C, SIGTERM, `stop`) turns readiness off
//! and starts the API's drain; services stop on the **services** token ([`Tasks::token`]),
//! which [`Tasks::close_and_wait`] cancels once the drain and KLP's goodbyes are done, so
//! requests still draining can use the sync actor. `close_and_wait` then waits, with a
//! limit, until every task has ended; the caller closes the stores after it. See "Shutdown
//! order" in docs/ARCHITECTURE.md.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info_span, warn};

/// Failures kept for `/readyz` (the first ones: the cause is usually the first).
const MAX_FAILURES: usize = 32;

/// The node's tasks and its readiness. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tasks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tracker: TaskTracker,
    /// The node's shutdown token.
    shutdown: CancellationToken,
    /// Cancelled by `close_and_wait`: what services stop on.
    services: CancellationToken,
    /// Serving: set once start-up is complete, cleared when shutdown begins.
    serving: AtomicBool,
    /// (task name, what happened).
    failures: Mutex<Vec<(String, String)>>,
}

impl Tasks {
    /// The tasks of a node whose shutdown token is `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                tracker: TaskTracker::new(),
                shutdown,
                services: CancellationToken::new(),
                serving: AtomicBool::new(false),
                failures: Mutex::new(Vec::new()),
            }),
        }
    }

    /// What services and jobs stop on: cancelled by [`Tasks::close_and_wait`], after the
    /// node's shutdown token.
    pub fn token(&self) -> &CancellationToken {
        &self.inner.services
    }

    /// The node's shutdown token (readiness, the API's drain).
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Whether shutdown has been asked for.
    pub fn stopping(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Starts a long-lived service. It should run until [`Tasks::token`] is cancelled; ending
    /// before the node's shutdown was asked for (returning or panicking) is a failure that
    /// makes the node unready.
    pub fn spawn_service<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let inner = self.inner.clone();
        self.inner.tracker.spawn(
            async move {
                let outcome = AssertUnwindSafe(fut).catch_unwind().await;
                if inner.shutdown.is_cancelled() && outcome.is_ok() {
                    return;
                }
                let what = match &outcome {
                    Ok(()) => "ended unexpectedly".to_string(),
                    Err(p) => format!("panicked: {}", panic_message(p.as_ref())),
                };
                error!(task = name, failure = %what, "a node task failed; /readyz now answers 503");
                inner.fail(name, what);
            }
            .instrument(info_span!("task", name)),
        );
    }

    /// Starts a short job (one request's work). A panic is logged, nothing more.
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.tracker.spawn(async move {
            if let Err(p) = AssertUnwindSafe(fut).catch_unwind().await {
                error!(task = name, panic = %panic_message(p.as_ref()), "a node job panicked");
            }
        });
    }

    /// Records a failure of a part of the node that is not a task of this tracker (the KLP
    /// swarm's event loop, whose handle the node awaits itself).
    pub fn report_failure(&self, name: &str, what: String) {
        error!(task = name, failure = %what, "a node task failed; /readyz now answers 503");
        self.inner.fail(name, what);
    }

    /// Marks the node as serving (end of start-up) or not (start of shutdown).
    pub fn set_serving(&self, serving: bool) {
        self.inner.serving.store(serving, Ordering::SeqCst);
    }

    /// Ready for traffic: serving, not stopping, and no service has failed.
    pub fn is_ready(&self) -> bool {
        self.inner.serving.load(Ordering::SeqCst)
            && !self.stopping()
            && self.lock_failures().is_empty()
    }

    /// What failed, in order (at most the first 32), as `name: what happened`.
    pub fn failures(&self) -> Vec<String> {
        self.lock_failures()
            .iter()
            .map(|(n, w)| format!("{n}: {w}"))
            .collect()
    }

    /// The names of the tasks that failed (what `/readyz` shows: no panic text leaves the
    /// node).
    pub fn failed_tasks(&self) -> Vec<String> {
        self.lock_failures()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, Vec<(String, String)>> {
        self.inner
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.inner.tracker.len()
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.inner.tracker.is_empty()
    }

    /// Cancels the shutdown token (if not yet) and then the services token, closes the
    /// tracker (so that waiting can finish once it is empty) and waits at most `limit` for
    /// every task to end. Returns whether they all ended.
    pub async fn close_and_wait(&self, limit: Duration) -> bool {
        self.inner.shutdown.cancel();
        self.inner.services.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout(limit, self.inner.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                running = self.inner.tracker.len(),
                ?limit,
                "tasks still running at shutdown; the stores close anyway"
            );
            return false;
        }
        true
    }
}

impl Inner {
    fn fail(&self, name: &str, what: String) {
        let mut f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if f.len() < MAX_FAILURES {
            f.push((name.to_string(), what));
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn serving() -> Tasks {
        let t = Tasks::new(CancellationToken::new());
        t.set_serving(true);
        t
    }

    #[tokio::test]
    async fn a_service_that_panics_makes_the_node_unready() {
        let t = serving();
        assert!(t.is_ready());
        t.spawn_service("doomed", async { panic!("injected failure") });
        t.inner.tracker.close();
        t.inner.tracker.wait().await;
        assert!(!t.is_ready());
        assert_eq!(t.failures(), vec!["doomed: panicked: injected failure"]);
        assert_eq!(t.failed_tasks(), vec!["doomed"]);
    }

    #[tokio::test]
    async fn a_service_that_returns_early_makes_the_node_unready() {
        let t = serving();
        t.spawn_service("quitter", async {});
        t.inner.tracker.close();
        t.inner.tracker.wait().await;
        assert_eq!(t.failures(), vec!["quitter: ended unexpectedly"]);
        assert!(!t.is_ready());
    }

    #[tokio::test]
    async fn services_ending_at_shutdown_are_not_failures() {
        let t = serving();
        let token = t.token().clone();
        t.spawn_service("loop", async move { token.cancelled().await });
        assert!(t.close_and_wait(Duration::from_secs(5)).await);
        assert!(t.failures().is_empty());
        assert!(t.is_empty());
        // Stopping is not ready, although nothing failed.
        assert!(!t.is_ready());
    }

    #[tokio::test]
    async fn services_run_on_while_the_node_drains() {
        let t = serving();
        let token = t.token().clone();
        t.spawn_service("actor", async move { token.cancelled().await });
        t.shutdown_token().cancel();
        assert!(!t.is_ready());
        // The drain has begun; the service still runs until close_and_wait.
        tokio::task::yield_now().await;
        assert_eq!(t.len(), 1);
        assert!(t.close_and_wait(Duration::from_secs(5)).await);
        assert!(t.failures().is_empty());
    }

    #[tokio::test]
    async fn a_panicking_job_is_not_a_failure_of_the_node() {
        let t = serving();
        t.spawn("one call", async { panic!("bad call") });
        t.inner.tracker.close();
        t.inner.tracker.wait().await;
        assert!(t.is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn close_and_wait_gives_up_after_the_limit() {
        let t = serving();
        t.spawn("stuck", std::future::pending());
        assert!(!t.close_and_wait(Duration::from_secs(3)).await);
        assert_eq!(t.len(), 1);
    }
}
