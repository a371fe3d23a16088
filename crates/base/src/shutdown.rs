//! The shutdown signal: one sender in the daemon, a [`Shutdown`] in every task.

use tokio::sync::watch;

/// A task's view of shutdown: cheap to clone, resolves [`Shutdown::stopped`] once the
/// daemon has begun to stop (or the daemon's sender is gone).
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// The daemon's side: [`Trigger::fire`] begins shutdown for every [`Shutdown`].
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A new trigger and the first view of it.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }

    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }
}

impl Shutdown {
    /// Resolves once shutdown has been requested.
    pub async fn stopped(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn fire_reaches_every_view() {
        let (t, mut a) = super::channel();
        let mut b = t.subscribe();
        assert!(!a.is_stopped());
        t.fire();
        a.stopped().await;
        b.stopped().await;
        assert!(b.is_stopped());
    }
}
