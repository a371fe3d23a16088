//! Remote configuration and commands from the control centre (docs/remote.md).
//!
//! A transport like `control`, over MQTT: the uplink hands over what arrives on
//! `config/desired` and `cmd/{name}`, and this module checks it (signed by a key in
//! `[trust]`, for this box, not expired) before anything runs. Desired configs go through
//! the same validation and reload as SIGHUP, then a trial window with rollback
//! ([`desired`]); commands run once per request id through the command layer
//! ([`commands`]). Answers leave through the outbox, like everything upstream.

pub mod commands;
pub mod desired;

use crate::state::State;
use crate::uplink::{Inbound, InboundKind};
use std::sync::Arc;
use std::time::Duration;
use storeguard_base::shutdown::Shutdown;
use tokio::sync::mpsc;

/// Commands running at once; more wait (a burst cannot starve recording of CPU).
const PARALLEL_COMMANDS: usize = 4;
/// How often expired holds are ended.
const HOLD_SWEEP: Duration = Duration::from_secs(30);

/// Runs until shutdown: desired configs one at a time (each with its trial), commands
/// beside them, so a long trial never delays a snapshot.
pub async fn run(
    st: Arc<State>,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
    recovered: Option<desired::Recovered>,
    mut shutdown: Shutdown,
) {
    let (desired_tx, desired_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let worker = tokio::spawn(desired::worker(st.clone(), desired_rx, recovered));
    let slots = Arc::new(tokio::sync::Semaphore::new(PARALLEL_COMMANDS));
    let mut sweep = tokio::time::interval(HOLD_SWEEP);
    // Closed when remote control is off: holds and a start-up rollback report still count.
    let mut open = true;
    loop {
        tokio::select! {
            _ = shutdown.stopped() => break,
            _ = sweep.tick() => {
                let store = st.store.clone();
                let n = blocking(move || store.expire_holds(storeguard_base::now_ns())).await;
                if let Ok(n) = n && n > 0 {
                    tracing::info!(locks = n, "remote holds expired");
                }
            }
            msg = inbound.recv(), if open => {
                let Some(msg) = msg else {
                    open = false;
                    continue;
                };
                match msg.kind {
                    InboundKind::Desired => {
                        let _ = desired_tx.send(msg.payload);
                    }
                    InboundKind::Command(name) => {
                        let (st, slots) = (st.clone(), slots.clone());
                        tokio::spawn(async move {
                            let _permit = slots.acquire().await;
                            commands::handle(&st, &name, &msg.payload).await;
                        });
                    }
                }
            }
        }
    }
    drop(desired_tx);
    worker.abort();
}

/// Store and file work off the async workers (the store asserts it in debug builds).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Wakes the uplink after something was queued for it.
fn notify_uplink(st: &State) {
    if let Some(u) = st.uplink().as_ref() {
        u.notify();
    }
}
