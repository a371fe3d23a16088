//! The control socket's routes: each maps one HTTP request to one command (`cmd`), and
//! the command's reply or error back to a status. No operation lives here.

use super::{BoxFuture, Request, Response, Service};
use crate::cmd::{self, Caller, CmdError, Command, Reply, Via};
use crate::state::State;
use std::sync::Arc;
use std::time::Duration;

pub struct Routes {
    pub state: Arc<State>,
}

impl Service for Routes {
    fn handle(&self, req: Request) -> BoxFuture<'_, Response> {
        Box::pin(async move {
            let caller = Caller {
                uid: Some(req.peer.uid),
                pid: req.peer.pid,
                via: Via::ControlSocket,
            };
            let command = match parse(&req) {
                Ok(c) => c,
                Err(r) => return r,
            };
            match command.apply(&self.state, caller).await {
                Ok(Reply::Json(v)) => Response::Json(200, v),
                Ok(Reply::Accepted(v)) => Response::Json(202, v),
                Ok(Reply::Stream(rx)) => Response::Stream(rx),
                Ok(Reply::File(path, kind)) => Response::File(path, kind),
                Ok(Reply::Bytes(body, kind)) => Response::Bytes(body, kind),
                Err(e) => error(e),
            }
        })
    }
}

fn error(e: CmdError) -> Response {
    let status = match e {
        CmdError::Invalid(_) => 400,
        CmdError::NotFound(_) => 404,
        CmdError::Refused(_) => 422,
        CmdError::Unavailable(_) => 503,
        CmdError::Internal(_) => 500,
    };
    Response::error(status, e.message())
}

fn bad(msg: String) -> Response {
    Response::error(400, msg)
}

/// The request as a command, or the response that refuses it.
pub(super) fn parse(req: &Request) -> Result<Command, Response> {
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    Ok(match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["v1", "status"]) => Command::Status(Default::default()),
        ("GET", ["v1", "cameras"]) => Command::Cameras(Default::default()),
        ("GET", ["v1", "doctor"]) => Command::Doctor(Default::default()),
        ("GET", ["v1", "outbox"]) => Command::Outbox(Default::default()),
        ("GET", ["v1", "buttons"]) => Command::Buttons(Default::default()),
        ("GET", ["v1", "buttons", "watch"]) => Command::Watch(Default::default()),
        ("POST", ["v1", "buttons", name, "press"]) => {
            let test = req.query("test").is_some_and(|v| v != "false" && v != "0");
            let hold = match req.query("hold_ms") {
                None => cmd::buttons::Press::DEFAULT_HOLD,
                Some(v) => Duration::from_millis(v.parse().map_err(|_| {
                    bad(format!(
                        "hold_ms: {v:?} is not a whole number of milliseconds"
                    ))
                })?),
            };
            Command::Press(cmd::buttons::Press {
                button: name.to_string(),
                test,
                hold,
            })
        }
        ("POST", ["v1", "buttons", name, "edges"]) => {
            #[derive(serde::Deserialize)]
            struct Body {
                script: String,
            }
            let b: Body = req.json()?;
            Command::Edges(cmd::buttons::Edges {
                button: name.to_string(),
                script: b.script,
            })
        }
        ("GET", ["v1", "events"]) => {
            let mut e = cmd::events::Events::default();
            if let Some(s) = req.query("since") {
                e.since_ns = cmd::time_arg("since", s).map_err(error)?;
            }
            if let Some(l) = req.query("limit") {
                e.limit = l
                    .parse()
                    .map_err(|_| bad(format!("limit: {l:?} is not a whole number")))?;
            }
            Command::Events(e)
        }
        ("POST", ["v1", "clips"]) => Command::Export(req.json()?),
        ("POST", ["v1", "packages"]) => Command::Package(req.json()?),
        ("GET", ["v1", "evidence", uid, what]) => {
            let part = match *what {
                "clip" => cmd::export::Part::Clip,
                "manifest" => cmd::export::Part::Manifest,
                "receipt" => cmd::export::Part::Receipt,
                _ => return Err(Response::error(404, "use /clip, /manifest or /receipt")),
            };
            Command::EvidenceFile(cmd::export::EvidenceFile {
                clip: uid.to_string(),
                part,
            })
        }
        ("GET", ["v1", "cameras", id, "snapshot"]) => Command::Snapshot(cmd::snapshot::Snapshot {
            camera: id.to_string(),
        }),
        ("GET", ["v1", "config"]) => Command::ConfigShow(Default::default()),
        ("GET", ["v1", "config", "status"]) => Command::ConfigStatus(Default::default()),
        ("POST", ["v1", "config", "reload"]) => Command::Reload(Default::default()),
        ("POST", ["v1", "debug", "detector-fault"]) => Command::DetectorFault(req.json()?),
        (_, ["v1", ..]) => {
            return Err(Response::error(
                404,
                format!("no route {} {}", req.method, req.path),
            ));
        }
        _ => {
            return Err(Response::error(
                404,
                format!("unknown path {} (the API lives under /v1/)", req.path),
            ));
        }
    })
}
