//! The control centre's side of remote configuration and commands (`sg-control`): sign and
//! publish a desired config or a command, then wait for the box's answer.

use anyhow::{Context, Result, anyhow, bail};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use std::time::{Duration, Instant};
use storeguard_proto::DeviceKey;
use storeguard_proto::broker::parse_broker_url;
use storeguard_proto::remote::{
    CmdResult, Command, ConfigState, Desired, Reported, SCHEMA_CMD, SCHEMA_DESIRED, Signed,
};
use storeguard_proto::session::{self, ConnectOpts, TlsFiles};
use storeguard_proto::topics::{self, now_ns, utc_ms};

/// One box, through one broker, as the control centre.
pub struct Control {
    client: AsyncClient,
    el: EventLoop,
    prefix: String,
    site: String,
    device: String,
    key: DeviceKey,
}

impl Control {
    /// Connects and subscribes to the box's answers (`config/reported`, `cmd/+/result`).
    pub async fn connect(
        broker: &str,
        tls: TlsFiles,
        site: &str,
        device: &str,
        key: DeviceKey,
    ) -> Result<Control> {
        let url = parse_broker_url(broker).map_err(|e| anyhow!("--broker: {e}"))?;
        let (client, el) = session::client(&ConnectOpts {
            broker: url,
            client_id: format!("sg-control-{}", std::process::id()),
            credentials: None,
            tls,
            keepalive: Duration::from_secs(30),
            persistent: false,
            // Snapshots come back as base64 JPEGs.
            max_packet: 64 << 20,
            receive_max: 64,
            inflight: 64,
            will: None,
        })?;
        let prefix = topics::prefix(site, device);
        let mut c = Control {
            client,
            el,
            prefix,
            site: site.into(),
            device: device.into(),
            key,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        c.wait(deadline, |ev, client, prefix| match ev {
            Packet::ConnAck(_) => {
                for f in [
                    format!("{prefix}{}", topics::CONFIG_REPORTED),
                    format!("{prefix}cmd/+/result"),
                ] {
                    client.try_subscribe(f, QoS::AtLeastOnce)?;
                }
                Ok(None)
            }
            Packet::SubAck(_) => Ok(Some(())),
            _ => Ok(None),
        })
        .await
        .context("connecting to the broker")?;
        // Both subscriptions.
        c.wait(deadline, |ev, _, _| {
            Ok(matches!(ev, Packet::SubAck(_)).then_some(()))
        })
        .await?;
        Ok(c)
    }

    /// Polls until `f` returns Some, handing it every incoming packet.
    async fn wait<T>(
        &mut self,
        deadline: Instant,
        mut f: impl FnMut(&Packet, &AsyncClient, &str) -> Result<Option<T>>,
    ) -> Result<T> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("timed out");
            }
            let ev = tokio::time::timeout(left, self.el.poll())
                .await
                .map_err(|_| anyhow!("timed out"))?
                .map_err(|e| anyhow!("{}", session::describe(&e)))?;
            if let Event::Incoming(p) = ev {
                if let Packet::Publish(publish) = &p {
                    let _ = self.client.try_ack(publish);
                }
                if let Some(v) = f(&p, &self.client, &self.prefix)? {
                    return Ok(v);
                }
            }
        }
    }

    fn publish(&self, suffix: &str, payload: Vec<u8>, retain: bool) -> Result<()> {
        self.client
            .try_publish(
                format!("{}{suffix}", self.prefix),
                QoS::AtLeastOnce,
                retain,
                payload,
            )
            .map_err(|e| anyhow!("publish: {e}"))
    }

    /// A signed desired config (retained).
    pub fn desired(&self, version: u64, config: &str, expires_in: Option<Duration>) -> Vec<u8> {
        Desired {
            schema: SCHEMA_DESIRED.into(),
            site_id: self.site.clone(),
            device_id: self.device.clone(),
            version,
            issued_at: utc_ms(now_ns()),
            expires_at: expires_in.map(|d| utc_ms(now_ns() + d.as_nanos() as i64)),
            config: config.into(),
            signature: None,
        }
        .signed(&self.key)
    }

    /// A signed command.
    pub fn command(
        &self,
        request_id: &str,
        args: serde_json::Value,
        expires_in: Duration,
    ) -> Vec<u8> {
        Command {
            schema: SCHEMA_CMD.into(),
            site_id: self.site.clone(),
            device_id: self.device.clone(),
            request_id: request_id.into(),
            issued_at: utc_ms(now_ns()),
            expires_at: utc_ms(now_ns() + expires_in.as_nanos() as i64),
            args,
            signature: None,
        }
        .signed(&self.key)
    }

    /// Publishes `payload` (signed or not: tests send forgeries too) on `config/desired`,
    /// retained, and waits for the report about `version` in a final state.
    pub async fn push_config(
        &mut self,
        version: u64,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Reported> {
        self.publish(topics::CONFIG_DESIRED, payload, true)?;
        let want = format!("{}{}", self.prefix, topics::CONFIG_REPORTED);
        self.wait(Instant::now() + timeout, |p, _, _| {
            let Packet::Publish(p) = p else {
                return Ok(None);
            };
            if session::topic_str(p).ok() != Some(want.as_str()) {
                return Ok(None);
            }
            let Ok(r) = serde_json::from_slice::<Reported>(&p.payload) else {
                return Ok(None);
            };
            if r.version == Some(version) && r.state != ConfigState::Pending {
                return Ok(Some(r));
            }
            if r.version == Some(version) {
                tracing::info!(version, "the box is trying the config");
            }
            Ok(None)
        })
        .await
        .with_context(|| format!("waiting for the report on version {version}"))
    }

    /// Publishes a command and waits for its result.
    pub async fn run_command(
        &mut self,
        name: &str,
        request_id: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<CmdResult> {
        self.publish(&format!("cmd/{name}"), payload, false)?;
        let want = format!("{}{}", self.prefix, topics::cmd_result_topic(name));
        self.wait(Instant::now() + timeout, |p, _, _| {
            let Packet::Publish(p) = p else {
                return Ok(None);
            };
            if session::topic_str(p).ok() != Some(want.as_str()) {
                return Ok(None);
            }
            match serde_json::from_slice::<CmdResult>(&p.payload) {
                Ok(r) if r.request_id == request_id => Ok(Some(r)),
                _ => Ok(None),
            }
        })
        .await
        .with_context(|| format!("waiting for the result of {name} {request_id}"))
    }

    /// Publishes a desired config and returns once the broker has it (PUBACK).
    pub async fn publish_only(&mut self, payload: Vec<u8>) -> Result<()> {
        self.publish(topics::CONFIG_DESIRED, payload, true)?;
        self.wait(Instant::now() + Duration::from_secs(10), |p, _, _| {
            Ok(matches!(p, Packet::PubAck(_)).then_some(()))
        })
        .await
    }

    /// Clears the retained desired config (an empty retained message).
    pub fn clear_desired(&self) -> Result<()> {
        self.publish(topics::CONFIG_DESIRED, Vec::new(), true)
    }
}
