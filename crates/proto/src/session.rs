//! The MQTT connection (MQTT 5): options, TLS, and the pump task that owns `EventLoop::poll`.
//!
//! MQTT 5, because it lets a client refuse what it cannot take: CONNECT states a Maximum
//! Packet Size and a Receive Maximum, and the broker must then drop (not send) larger
//! messages and send no more unacknowledged ones. With 3.1.1 one oversized retained
//! message on a subscribed topic made the client disconnect on every connect.
//!
//! rumqttc's `publish()` returns no packet id, so the sender correlates the order of its
//! publishes with `Outgoing::Publish(pkid)` events. That needs ONE task deciding what is
//! published and seeing every event in order; the pump only forwards events to it. On an
//! error the pump waits until the sender has acknowledged the loss of the connection
//! (and stopped publishing), then clears rumqttc's queues before reconnecting, so no
//! request from the old connection can leak into the new one and shift the correlation.

use crate::broker::{BrokerUrl, SYSTEM_CA_BUNDLE};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::LastWill;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{NetworkOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// TLS files, already resolved.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Everything needed to open a session.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    pub broker: BrokerUrl,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub tls: TlsFiles,
    pub keepalive: Duration,
    /// Keep the broker's session (and its queued QoS 1 messages) across disconnects.
    pub persistent: bool,
    /// Maximum Packet Size told to the broker: it drops anything larger for us.
    pub max_packet: u32,
    /// Receive Maximum: unacknowledged QoS 1 messages the broker may have out to us.
    pub receive_max: u16,
    /// rumqttc's own in-flight limit and request channel capacity.
    pub inflight: u16,
    pub will: Option<(String, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("TLS {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS setup")]
    Rustls(#[from] rustls::Error),
}

fn pem_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let err = |reason: String| TlsSetupError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// A rustls client config (ring provider) from PEM files; mutual TLS when cert+key given.
pub fn rustls_config(tls: &TlsFiles) -> Result<rustls::ClientConfig, TlsSetupError> {
    let ca_path = tls
        .ca
        .clone()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(pem_certs("CA file", &ca_path)?);
    if added == 0 {
        return Err(TlsSetupError::File {
            what: "CA file",
            path: ca_path,
            reason: "no usable CA certificate".into(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = pem_certs("client certificate", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsSetupError::File {
                what: "client key",
                path: key.clone(),
                reason: e.to_string(),
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    })
}

/// Builds the client and event loop (nothing is connected yet).
pub fn client(o: &ConnectOpts) -> Result<(AsyncClient, EventLoop), TlsSetupError> {
    let mut m = MqttOptions::new(o.client_id.clone(), o.broker.host.clone(), o.broker.port);
    m.set_keep_alive(o.keepalive);
    m.set_clean_start(!o.persistent);
    if o.persistent {
        // MQTT 5 ends a session at disconnect unless an expiry says otherwise.
        m.set_session_expiry_interval(Some(u32::MAX));
    }
    m.set_max_packet_size(Some(o.max_packet));
    m.set_receive_maximum(Some(o.receive_max.max(1)));
    m.set_outgoing_inflight_upper_limit(o.inflight);
    m.set_connection_timeout(10);
    // Incoming publishes are acknowledged only once handled (and persisted).
    m.set_manual_acks(true);
    if let Some((user, pass)) = &o.credentials {
        m.set_credentials(user.clone(), pass.clone());
    }
    if let Some((topic, payload)) = &o.will {
        m.set_last_will(LastWill::new(
            topic.clone(),
            payload.clone(),
            QoS::AtLeastOnce,
            true,
            None,
        ));
    }
    if o.broker.tls {
        let cfg = rustls_config(&o.tls)?;
        m.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(cfg),
        )));
    }
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(10);
    m.set_network_options(net);
    let (client, el) = AsyncClient::new(m, o.inflight as usize);
    Ok((client, el))
}

/// The topic of an incoming publish as text (MQTT 5 topics are UTF-8 on the wire; a
/// broken one is reported, not guessed at).
pub fn topic_str(p: &rumqttc::v5::mqttbytes::v5::Publish) -> Result<&str, String> {
    std::str::from_utf8(&p.topic).map_err(|e| format!("topic is not UTF-8: {e}"))
}

/// What the pump hands to the session owner.
pub enum PumpMsg {
    /// Boxed: a v5 event is large, and most messages are small acks.
    Event(Box<Event>),
    /// The connection is gone (or never came up). Reply on `resume` once nothing more
    /// will be published for the old connection; the pump reconnects after a backoff.
    Down {
        error: String,
        resume: oneshot::Sender<()>,
    },
}

/// Exponential backoff with jitter: 0.5 s doubling up to `max`, each delay drawn from
/// [d/2, d], so a fleet coming back after an outage does not reconnect in lockstep.
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        let mut b = Backoff {
            next: Duration::ZERO,
            max,
        };
        b.reset();
        b
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(500).min(self.max);
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let r = getrandom::u64().unwrap_or(0) % 1000;
        d / 2 + d * (r as u32) / 2000
    }
}

/// Owns `poll()`: forwards events in order and paces reconnects. Ends when the session
/// owner goes away.
pub async fn pump(mut el: EventLoop, tx: mpsc::UnboundedSender<PumpMsg>, max_backoff: Duration) {
    let mut backoff = Backoff::new(max_backoff);
    loop {
        match el.poll().await {
            Ok(ev) => {
                if matches!(
                    ev,
                    Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_))
                ) {
                    backoff.reset();
                }
                if tx.send(PumpMsg::Event(Box::new(ev))).is_err() {
                    return;
                }
            }
            Err(e) => {
                let done = matches!(e, ConnectionError::RequestsDone);
                let (resume, resumed) = oneshot::channel();
                if tx
                    .send(PumpMsg::Down {
                        error: describe(&e),
                        resume,
                    })
                    .is_err()
                    || resumed.await.is_err()
                    || done
                {
                    return;
                }
                tokio::time::sleep(backoff.next_delay()).await;
                // Drop whatever was queued for the dead connection; with a clean session
                // the next CONNACK clears rumqttc's pending list too.
                el.clean();
            }
        }
    }
}

/// One line for logs and `status()`, with the cause chain (e.g. the rustls reason).
pub fn describe(e: &ConnectionError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    match e {
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("{s} (is the broker running?)")
        }
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(4));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(250) && d[0] <= Duration::from_millis(500));
        assert!(d[3] >= Duration::from_secs(2) && d[3] <= Duration::from_secs(4));
        assert!(d[5] <= Duration::from_secs(4));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }

    #[test]
    fn missing_tls_files_are_named() {
        let e = rustls_config(&TlsFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
