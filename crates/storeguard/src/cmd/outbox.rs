//! `outbox`: what waits to go upstream, and how the link is doing.

use super::{CmdError, Reply, blocking};
use crate::state::State;
use serde_json::json;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Outbox;

impl Outbox {
    pub async fn apply(self, st: &Arc<State>) -> Result<Reply, CmdError> {
        let s = st.clone();
        blocking(move || {
            let uplink = s.uplink().clone();
            Ok(Reply::Json(match uplink {
                Some(u) => u.status(),
                None => json!({
                    "configured": false,
                    "outbox": s.store.outbox_stats().map_err(CmdError::internal)?,
                }),
            }))
        })
        .await
    }
}
