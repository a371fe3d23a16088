//! `snapshot`: a JPEG of a camera now (its latest recorded keyframe, decoded).

use super::{CmdError, Reply, blocking};
use crate::evidence::still::{self, StillError};
use crate::state::State;
use std::sync::Arc;
use storeguard_base::now_ns;

#[derive(Debug)]
pub struct Snapshot {
    pub camera: String,
}

impl Snapshot {
    pub async fn apply(self, st: &Arc<State>) -> Result<Reply, CmdError> {
        let cfg = st.config().config;
        cfg.known_camera(&self.camera).map_err(CmdError::NotFound)?;
        let store = st.store.clone();
        blocking(
            move || match still::latest(&store, &self.camera, now_ns()) {
                Ok(s) => Ok(Reply::Bytes(s.jpeg, "image/jpeg")),
                Err(e @ StillError::NoFootage { .. }) => Err(CmdError::Unavailable(e.to_string())),
                Err(e) => Err(CmdError::internal(e)),
            },
        )
        .await
    }
}
