//! `debug detector-fault`: hang or crash the running detector, to prove its supervision.
//! Refused unless `detect.fault_injection` is set (tests only).

use super::{CmdError, Reply};
use crate::detect::service::Fault;
use crate::state::State;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
pub struct DetectorFault {
    /// `hang` or `panic`.
    pub fault: String,
}

impl DetectorFault {
    pub fn apply(self, st: &Arc<State>) -> Result<Reply, CmdError> {
        if !st.config().config.detect.fault_injection {
            return Err(CmdError::Refused(
                "detect.fault_injection is off: faults are for tests".into(),
            ));
        }
        let f = match self.fault.as_str() {
            "hang" => Fault::Hang,
            "panic" => Fault::Panic,
            other => {
                return Err(CmdError::Invalid(format!(
                    "fault: {other:?} is not one of hang, panic"
                )));
            }
        };
        let d = st.detection();
        let d = d
            .as_ref()
            .ok_or_else(|| CmdError::Unavailable("detection is not running".into()))?;
        d.inject_fault(f);
        tracing::warn!(fault = %self.fault, "detector fault injected on request");
        Ok(Reply::Json(json!({ "injected": self.fault })))
    }
}
