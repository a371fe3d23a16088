//! The session owner: decides what is published, correlates packet ids with outbox rows
//! and chunks, and turns broker acknowledgements into store updates.
//!
//! Invariants:
//! - A row leaves the outbox only after its PUBACK; a chunk's progress moves only on its
//!   PUBACK. Everything else is resent after a reconnect (the receiver deduplicates).
//! - On every connection loss the packet-id map, the FIFO and the in-flight sets are
//!   forgotten; the next connection starts from what the store says.
//! - Highest class first; within a class, outbox order. Chunks are class 2: after alerts
//!   and manifests, before telemetry, and paced by the token bucket.

use super::upload::{Active, Bucket, CHUNK_WINDOW, chunk_at, final_offset};
use super::{Settings, Shared};
use crate::store::Store;
use crate::store::outbox::{Class, OutMsg};
use crate::store::package::ItemKind;
use crate::store::upload::UploadState;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use storeguard_proto::manifest::FileRef;
use storeguard_proto::package::PackageManifest;
use storeguard_proto::receipt::{self, ReceiptError, Sealed};
use storeguard_proto::session::{PumpMsg, topic_str};
use storeguard_proto::topics::{self, AckStatus, ClipAck, Kind, Status};
use storeguard_proto::{Manifest, sidecar_path};
use tokio::sync::{Notify, mpsc};

/// A receiver-rejected clip is sent again from scratch this many times in all.
const MAX_UPLOAD_ATTEMPTS: i64 = 3;
/// Housekeeping period: unsignalled enqueues, receiver-ack timeouts.
const TICK: Duration = Duration::from_secs(1);
const LATENCY_SAMPLES: usize = 4096;
/// Longest an acknowledged row waits for its deletion to be written.
const FLUSH_DELAY: Duration = Duration::from_millis(20);
/// Payload bytes read ahead from the outbox at most (plus one message).
const CACHE_BYTES: u64 = 1 << 20;
/// At most one security health event upstream per this period (the rest are counted in it):
/// a stranger flooding forged receipts must not flood the outbox too.
const SECURITY_EVENT_EVERY: Duration = Duration::from_secs(10);

pub(crate) enum Cmd {
    Shutdown(std::sync::mpsc::Sender<()>),
    Abort,
}

/// What a published QoS 1 message was, so its PUBACK can be applied.
enum Slot {
    Row {
        id: i64,
        created_ns: i64,
        manifest_of: Option<String>,
    },
    Chunk {
        clip: String,
        offset: u64,
        poke: bool,
    },
    Control {
        offline: bool,
    },
}

enum RowOutcome {
    Sent,
    Rejected,
    Full,
}

pub(crate) struct Link {
    s: Arc<Settings>,
    store: Store,
    client: AsyncClient,
    shared: Arc<Mutex<Shared>>,
    connected: bool,
    closing: bool,
    /// Published, waiting for `Outgoing::Publish(pkid)`.
    fifo: VecDeque<Slot>,
    /// On the wire, waiting for PUBACK.
    by_pkid: HashMap<u16, Slot>,
    rows_in_flight: HashSet<i64>,
    chunks_in_flight: usize,
    /// Next outbox rows to send, read ahead; stale once something may have been
    /// enqueued ahead of them.
    cache: VecDeque<OutMsg>,
    cache_stale: bool,
    active: Option<Active>,
    /// No upload in state 'sending' (saves a query per fill); reset when one may appear.
    uploads_idle: bool,
    bucket: Bucket,
    bucket_wait: Option<Instant>,
    pokes: VecDeque<String>,
    /// Acknowledged rows not yet deleted (batched: one transaction per many acks).
    delivered: Vec<i64>,
    manifests: Vec<String>,
    progress_dirty: bool,
    /// When the pending deletions must be written at the latest.
    flush_due: Option<Instant>,
    offline_acked: bool,
    next_tick: Instant,
    /// The box clock as the retained `status` last said it.
    status_clock: Option<storeguard_proto::topics::StatusClock>,
    last_security_event: Option<Instant>,
    security_suppressed: u64,
}

fn manifest_clip(rel_topic: &str) -> Option<&str> {
    rel_topic
        .strip_prefix("evidence/")?
        .strip_suffix("/manifest")
        .filter(|c| !c.is_empty() && !c.contains('/'))
}

impl Link {
    pub(crate) fn new(
        s: Arc<Settings>,
        store: Store,
        client: AsyncClient,
        shared: Arc<Mutex<Shared>>,
    ) -> Link {
        let bucket = Bucket::new(s.rate_limit, s.chunk_size);
        Link {
            s,
            store,
            client,
            shared,
            connected: false,
            closing: false,
            fifo: VecDeque::new(),
            by_pkid: HashMap::new(),
            rows_in_flight: HashSet::new(),
            chunks_in_flight: 0,
            cache: VecDeque::new(),
            cache_stale: true,
            active: None,
            uploads_idle: false,
            bucket,
            bucket_wait: None,
            pokes: VecDeque::new(),
            delivered: Vec::new(),
            manifests: Vec::new(),
            progress_dirty: false,
            flush_due: None,
            offline_acked: false,
            next_tick: Instant::now() + TICK,
            status_clock: None,
            last_security_event: None,
            security_suppressed: 0,
        }
    }

    pub(crate) async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<PumpMsg>,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        wake: Arc<Notify>,
    ) {
        loop {
            let mut timer = self.next_tick;
            for t in [self.bucket_wait, self.flush_due].into_iter().flatten() {
                timer = timer.min(t);
            }
            tokio::select! {
                biased;
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Shutdown(reply)) => {
                        self.shutdown(&mut events).await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(Cmd::Abort) | None => {
                        self.flush();
                        return;
                    }
                },
                msg = events.recv() => {
                    let Some(msg) = msg else { return };
                    self.on_msg(msg);
                    while let Ok(m) = events.try_recv() {
                        self.on_msg(m);
                    }
                    self.maybe_flush();
                    self.fill();
                }
                _ = wake.notified() => {
                    self.cache_stale = true;
                    self.fill();
                }
                _ = tokio::time::sleep_until(timer.into()) => {
                    let now = Instant::now();
                    if self.bucket_wait.is_some_and(|t| t <= now) {
                        self.bucket_wait = None;
                    }
                    if self.flush_due.is_some_and(|t| t <= now) {
                        self.flush();
                    }
                    if now >= self.next_tick {
                        self.next_tick = now + TICK;
                        self.housekeeping();
                        if self.connected
                            && self.status_clock.is_some_and(|c| {
                                let n = storeguard_proto::topics::StatusClock::now();
                                (c.synced, c.epoch) != (n.synced, n.epoch)
                            })
                        {
                            self.publish_status();
                        }
                    }
                    self.fill();
                }
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.rows_in_flight.len() + self.chunks_in_flight
    }

    fn on_msg(&mut self, msg: PumpMsg) {
        match msg {
            PumpMsg::Event(ev) => self.on_event(*ev),
            PumpMsg::Down { error, resume } => {
                self.on_down(error);
                let _ = resume.send(());
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => self.on_connected(),
            Event::Outgoing(Outgoing::Publish(pkid)) => match self.fifo.pop_front() {
                Some(slot) if pkid != 0 => {
                    self.by_pkid.insert(pkid, slot);
                }
                Some(_) => {}
                None => tracing::error!(
                    pkid,
                    "uplink: publish event without a pending message; correlation lost, ignoring"
                ),
            },
            Event::Incoming(Packet::PubAck(ack)) => match self.by_pkid.remove(&ack.pkid) {
                // "No matching subscribers" is still the broker taking the message.
                Some(slot)
                    if matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ) =>
                {
                    self.on_ack(slot)
                }
                Some(slot) => {
                    let why = match ack.properties.and_then(|p| p.reason_string) {
                        Some(r) => format!("broker refused it: {:?} ({r})", ack.reason),
                        None => format!("broker refused it: {:?}", ack.reason),
                    };
                    self.on_refused(slot, why);
                }
                None => tracing::debug!(pkid = ack.pkid, "uplink: PUBACK for an unknown packet id"),
            },
            Event::Incoming(Packet::Publish(p)) => {
                match topic_str(&p) {
                    Ok(topic) => self.on_incoming(topic, &p.payload),
                    Err(e) => self.inbound_refused("?", &e),
                }
                if let Err(e) = self.client.try_ack(&p) {
                    tracing::debug!("uplink: could not queue PUBACK: {e}");
                }
            }
            Event::Incoming(Packet::SubAck(s))
                if s.return_codes
                    .iter()
                    .any(|c| !matches!(c, SubscribeReasonCode::Success(_))) =>
            {
                tracing::error!(
                    topic = %self.ack_filter(),
                    codes = ?s.return_codes,
                    "uplink: the broker refused the subscription to clip acknowledgements; clips cannot be confirmed (check the broker ACL)"
                );
                self.set_error("broker refused the subscription to evidence/+/ack".into());
            }
            _ => {}
        }
    }

    fn ack_filter(&self) -> String {
        format!("{}evidence/+/ack", self.s.prefix)
    }

    fn status_topic(&self) -> String {
        format!("{}{}", self.s.prefix, topics::STATUS)
    }

    fn on_connected(&mut self) {
        self.connected = true;
        tracing::info!(broker = %self.s.broker, client_id = %self.s.client_id, "uplink connected");
        {
            let mut sh = self.shared();
            sh.connected = true;
            sh.connected_since = Some(topics::now_ns());
            sh.connects += 1;
        }
        if self.closing {
            return;
        }
        let mut filters = vec![self.ack_filter()];
        if self.s.inbound.is_some() {
            filters.push(format!("{}{}", self.s.prefix, topics::CONFIG_DESIRED));
            filters.push(format!("{}cmd/+", self.s.prefix));
        }
        for f in filters {
            if let Err(e) = self.client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                tracing::warn!(filter = %f, "uplink: could not queue a subscription: {e}");
            }
        }
        // What the box last reported about its config, again on every connection.
        match self.store.meta_get(super::REPORTED_META) {
            Ok(Some(reported)) => {
                let topic = format!("{}{}", self.s.prefix, topics::CONFIG_REPORTED);
                self.publish(
                    topic,
                    reported.into_bytes(),
                    true,
                    Slot::Control { offline: false },
                );
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("uplink: reading the last config report: {e}"),
        }
        self.publish_status();
    }

    /// The retained `status`, online, with the box clock as it is now.
    fn publish_status(&mut self) {
        let clock = storeguard_proto::topics::StatusClock::now();
        self.status_clock = Some(clock);
        let online = Status::online_with(&self.s.site, &self.s.device, clock);
        self.publish(
            self.status_topic(),
            online,
            true,
            Slot::Control { offline: false },
        );
    }

    fn on_down(&mut self, error: String) {
        self.flush();
        let was = self.connected;
        self.connected = false;
        let ids: Vec<i64> = self.rows_in_flight.iter().copied().collect();
        if let Err(e) = self.store.outbox_mark_attempts(&ids) {
            tracing::warn!("uplink: counting send attempts: {e}");
        }
        self.fifo.clear();
        self.by_pkid.clear();
        self.rows_in_flight.clear();
        self.cache.clear();
        self.cache_stale = true;
        self.chunks_in_flight = 0;
        if let Some(a) = &mut self.active
            && was
        {
            a.rewind();
            let at = a.acked;
            if let Some(u) = &mut self.shared().upload {
                if u.resumed_from.len() >= 16 {
                    u.resumed_from.remove(0);
                }
                u.resumed_from.push(at);
            }
        }
        let repeated = self.shared().last_error.as_deref() == Some(error.as_str());
        if was {
            tracing::warn!(broker = %self.s.broker, "uplink disconnected: {error}");
        } else if !repeated {
            tracing::warn!(broker = %self.s.broker, "uplink cannot connect: {error}");
        } else {
            tracing::debug!(broker = %self.s.broker, "uplink cannot connect: {error}");
        }
        let mut sh = self.shared();
        sh.connected = false;
        sh.connected_since = None;
        sh.in_flight = 0;
        drop(sh);
        self.set_error(error);
    }

    fn set_error(&self, error: String) {
        let mut sh = self.shared();
        sh.last_error = Some(error);
        sh.last_error_at = Some(topics::now_ns());
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A PUBACK with an error reason (MQTT 5): the broker will not take this message, and
    /// sending it again would be refused again. Rows are set aside (kept, visible in
    /// `outbox`), an upload fails (its clip stays locked), control messages are logged.
    fn on_refused(&mut self, slot: Slot, why: String) {
        match slot {
            Slot::Row { id, .. } => {
                self.rows_in_flight.remove(&id);
                let reason = format!("outbox message {id}: {why}");
                tracing::error!("uplink: {reason}; kept in outbox_rejected");
                if let Err(e) = self.store.outbox_reject(id, &reason, topics::now_ns()) {
                    tracing::error!("uplink: setting message {id} aside: {e}");
                }
                self.cache_stale = true;
                let mut sh = self.shared();
                sh.rejected += 1;
                sh.last_rejected = Some(reason);
            }
            Slot::Chunk { clip, .. } => {
                self.chunks_in_flight = self.chunks_in_flight.saturating_sub(1);
                if self.active.as_ref().is_some_and(|a| a.clip == clip) {
                    self.fail_active(format!("a chunk: {why}"));
                }
            }
            Slot::Control { offline } => {
                tracing::warn!("uplink: status/ack message: {why}");
                if offline {
                    self.offline_acked = true;
                }
            }
        }
    }

    fn on_ack(&mut self, slot: Slot) {
        match slot {
            Slot::Row {
                id,
                created_ns,
                manifest_of,
            } => {
                self.rows_in_flight.remove(&id);
                self.delivered.push(id);
                if let Some(c) = manifest_of {
                    self.manifests.push(c);
                }
                let lat_us = (topics::now_ns() - created_ns).max(0) as u64 / 1000;
                let mut sh = self.shared();
                if sh.latencies_us.len() >= LATENCY_SAMPLES {
                    sh.latencies_us.pop_front();
                }
                sh.latencies_us.push_back(lat_us);
            }
            Slot::Chunk { clip, offset, poke } => {
                self.chunks_in_flight = self.chunks_in_flight.saturating_sub(1);
                if poke {
                    return;
                }
                if let Some(a) = &mut self.active
                    && a.clip == clip
                    && a.in_flight.remove(&offset)
                {
                    let p = a.ack_point();
                    if p > a.acked {
                        a.acked = p;
                        self.progress_dirty = true;
                    }
                }
            }
            Slot::Control { offline } => {
                if offline {
                    self.offline_acked = true;
                }
            }
        }
    }

    /// Writes acknowledgements in batches: at once for upload progress and manifests
    /// (an upload starts), otherwise once a window's worth is pending or 20 ms passed.
    /// Rows awaiting deletion are neither in flight nor in the cache, and the cache is
    /// refilled only after a flush, so they are never sent twice.
    fn maybe_flush(&mut self) {
        if self.delivered.is_empty() && !self.progress_dirty {
            return;
        }
        if self.progress_dirty
            || !self.manifests.is_empty()
            || self.delivered.len() >= self.s.window
            || self.in_flight() == 0
        {
            self.flush();
        } else if self.flush_due.is_none() {
            self.flush_due = Some(Instant::now() + FLUSH_DELAY);
        }
    }

    /// Persists what the broker acknowledged since the last call.
    fn flush(&mut self) {
        self.flush_due = None;
        let now = topics::now_ns();
        if !self.delivered.is_empty() {
            match self
                .store
                .uplink_delivered(&self.delivered, &self.manifests, now)
            {
                Ok(begun) => {
                    for clip in &begun {
                        tracing::info!(clip = %clip, "manifest delivered; starting clip upload");
                    }
                    if !begun.is_empty() {
                        self.uploads_idle = false;
                    }
                    self.shared().delivered += self.delivered.len() as u64;
                }
                // The rows stay in the outbox and go again; the receiver deduplicates.
                Err(e) => tracing::error!("uplink: recording delivered messages: {e}"),
            }
            self.delivered.clear();
            self.manifests.clear();
        }
        if self.progress_dirty {
            self.progress_dirty = false;
            if let Some(a) = &self.active {
                let (clip, acked, total, done) = (a.clip.clone(), a.acked, a.total, a.done());
                let r = if done {
                    self.store
                        .upload_set_state(&clip, UploadState::Sent, Some(total), None, now)
                        .map(|_| ())
                } else {
                    self.store.upload_progress(&clip, acked, now)
                };
                if let Err(e) = r {
                    tracing::error!(clip = %clip, "uplink: recording upload progress: {e}");
                }
                if let Some(u) = &mut self.shared().upload {
                    u.acked = acked;
                }
                if done {
                    tracing::info!(clip = %clip, bytes = total, "clip uploaded; waiting for the receiver to verify it");
                    self.active = None;
                    self.shared().upload = None;
                }
            }
        }
        let n = self.in_flight();
        self.shared().in_flight = n;
    }

    fn fill(&mut self) {
        if !self.connected || self.closing {
            return;
        }
        let mut more = true;
        while self.in_flight() < self.s.window {
            if self.cache_stale || self.cache.is_empty() {
                if !more && !self.cache_stale {
                    break; // the outbox has nothing else
                }
                match self.refill() {
                    Some(m) => more = m,
                    None => return,
                }
                continue;
            }
            let row = self.cache.pop_front().expect("not empty");
            // Chunks (class 2) go before outbox rows of class 2 and 3.
            if row.class > Class::Evidence
                && (!self.publish_chunks() || self.in_flight() >= self.s.window)
            {
                self.cache.push_front(row);
                break;
            }
            if let RowOutcome::Full = self.publish_row(&row) {
                self.cache.push_front(row);
                break;
            }
        }
        if self.in_flight() < self.s.window {
            self.publish_chunks();
        }
        let n = self.in_flight();
        self.shared().in_flight = n;
    }

    /// Reads the next rows to send into the cache; Some(true) when more may follow.
    fn refill(&mut self) -> Option<bool> {
        self.flush();
        let limit = (self.s.window * 2).max(64);
        match self
            .store
            .outbox_peek(limit, CACHE_BYTES, &self.rows_in_flight)
        {
            Ok(rows) => {
                let bytes: u64 = rows.iter().map(|r| r.payload.len() as u64).sum();
                let more = rows.len() >= limit || bytes >= CACHE_BYTES;
                self.cache = rows.into();
                self.cache_stale = false;
                Some(more)
            }
            Err(e) => {
                tracing::error!("uplink: reading the outbox: {e}");
                None
            }
        }
    }

    /// Hands one message to rumqttc; false when its queue is full (try again later).
    fn publish(&mut self, topic: String, payload: Vec<u8>, retain: bool, slot: Slot) -> bool {
        self.fifo.push_back(slot);
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => true,
            Err(e) => {
                self.fifo.pop_back();
                tracing::debug!("uplink: publish not queued: {e}");
                false
            }
        }
    }

    fn publish_row(&mut self, row: &OutMsg) -> RowOutcome {
        let rel = row.topic.as_str();
        if rel.is_empty() || rel.starts_with('/') || rel.contains(['+', '#', '\0']) {
            return self.reject(row, format!("invalid topic {rel:?}"));
        }
        let msg_id = format!("{}:{}", self.s.device, row.id);
        let payload = match topics::with_msg_id(&row.payload, &msg_id) {
            Ok(p) => p,
            Err(e) => return self.reject(row, e),
        };
        if payload.len() as u64 > self.s.max_message {
            return self.reject(
                row,
                format!(
                    "{} bytes is more than uplink.max_message_size ({} bytes); the broker would drop it",
                    payload.len(),
                    self.s.max_message
                ),
            );
        }
        let slot = Slot::Row {
            id: row.id,
            created_ns: row.created_ns,
            manifest_of: manifest_clip(rel).map(str::to_string),
        };
        let topic = format!("{}{}", self.s.prefix, rel);
        if !self.publish(topic, payload, row.retain, slot) {
            return RowOutcome::Full;
        }
        self.rows_in_flight.insert(row.id);
        self.shared().published += 1;
        RowOutcome::Sent
    }

    /// Sets a message aside (kept in `outbox_rejected`), loudly, instead of losing it.
    fn reject(&mut self, row: &OutMsg, why: String) -> RowOutcome {
        let reason = format!(
            "outbox message {} ({:?}, {}) rejected: {why}",
            row.id, row.class, row.topic
        );
        tracing::error!("uplink: {reason}; kept in outbox_rejected");
        if let Err(e) = self.store.outbox_reject(row.id, &reason, topics::now_ns()) {
            tracing::error!("uplink: setting message {} aside: {e}", row.id);
            return RowOutcome::Full;
        }
        let mut sh = self.shared();
        sh.rejected += 1;
        sh.last_rejected = Some(reason);
        RowOutcome::Rejected
    }

    /// Publishes chunks while the window, the chunk window and the bucket allow.
    /// Returns false when rumqttc's queue is full.
    fn publish_chunks(&mut self) -> bool {
        loop {
            if self.in_flight() >= self.s.window || self.chunks_in_flight >= CHUNK_WINDOW {
                return true;
            }
            if self.bucket_wait.is_some() {
                return true;
            }
            if let Some(clip) = self.pokes.front().cloned() {
                self.pokes.pop_front();
                if !self.publish_poke(&clip) {
                    return false;
                }
                continue;
            }
            if self.active.is_none() && !self.load_active() {
                return true;
            }
            let a = self.active.as_ref().expect("loaded");
            if a.next_send >= a.total {
                return true;
            }
            let offset = a.next_send;
            let len = self.s.chunk_size.min(a.total - offset);
            if let Err(at) = self.bucket.take(len as usize + 256, Instant::now()) {
                self.bucket_wait = Some(at);
                return true;
            }
            let built = a.chunk(&self.s.device, offset, self.s.chunk_size);
            let (len, payload) = match built {
                Ok(c) => c,
                Err(e) => {
                    self.fail_active(storeguard_base::error::chain(&e));
                    continue;
                }
            };
            let clip = a.clip.clone();
            let bytes = payload.len() as u64;
            let topic = format!("{}{}", self.s.prefix, topics::chunk_topic(&clip));
            let slot = Slot::Chunk {
                clip,
                offset,
                poke: false,
            };
            if !self.publish(topic, payload, false, slot) {
                return false;
            }
            let a = self.active.as_mut().expect("loaded");
            a.in_flight.insert(offset);
            a.next_send = offset + len;
            let next = a.next_send;
            self.chunks_in_flight += 1;
            let mut sh = self.shared();
            sh.chunks_published += 1;
            sh.chunk_bytes_published += bytes;
            if let Some(u) = &mut sh.upload {
                u.next_send = next;
            }
        }
    }

    /// Re-sends the final chunk of a clip the receiver has not confirmed.
    fn publish_poke(&mut self, clip: &str) -> bool {
        let u = match self.store.upload(clip) {
            Ok(Some(u)) if u.state == UploadState::Sent => u,
            _ => return true,
        };
        let path = self.s.data_dir.join(&u.path);
        let offset = final_offset(u.total, self.s.chunk_size);
        let built = std::fs::File::open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))
            .and_then(|f| {
                chunk_at(
                    &f,
                    &path,
                    &self.s.device,
                    clip,
                    &u.sha256,
                    u.total,
                    offset,
                    self.s.chunk_size,
                )
                .map_err(|e| e.to_string())
            });
        let payload = match built {
            Ok((_, p)) => p,
            Err(e) => {
                tracing::error!(clip = %clip, "uplink: cannot re-send the final chunk: {e}");
                return true;
            }
        };
        let _ = self.bucket.take(payload.len(), Instant::now());
        tracing::info!(clip = %clip, "no confirmation from the receiver; re-sending the final chunk");
        let topic = format!("{}{}", self.s.prefix, topics::chunk_topic(clip));
        let slot = Slot::Chunk {
            clip: clip.to_string(),
            offset,
            poke: true,
        };
        if !self.publish(topic, payload, false, slot) {
            return false;
        }
        self.chunks_in_flight += 1;
        true
    }

    fn load_active(&mut self) -> bool {
        if self.uploads_idle {
            return false;
        }
        let rows = match self.store.uploads_in_state(UploadState::Sending) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("uplink: reading uploads: {e}");
                return false;
            }
        };
        for row in rows {
            if row.total == 0 {
                self.fail_upload(&row.clip, "the clip file is empty".into());
                continue;
            }
            match Active::open(&self.s.data_dir, &row) {
                Ok(a) => {
                    if a.acked > 0 {
                        tracing::info!(clip = %a.clip, offset = a.acked, total = a.total, "resuming clip upload");
                    }
                    self.shared().upload = Some(super::UploadStatus {
                        clip: a.clip.clone(),
                        total: a.total,
                        acked: a.acked,
                        next_send: a.next_send,
                        resumed_from: if a.acked > 0 { vec![a.acked] } else { vec![] },
                    });
                    self.active = Some(a);
                    return true;
                }
                Err(e) => self.fail_upload(&row.clip, storeguard_base::error::chain(&e)),
            }
        }
        self.uploads_idle = true;
        false
    }

    fn fail_active(&mut self, error: String) {
        if let Some(a) = self.active.take() {
            self.fail_upload(&a.clip, error);
            self.shared().upload = None;
        }
    }

    fn fail_upload(&mut self, clip: &str, error: String) {
        tracing::error!(clip = %clip, "clip upload failed: {error}");
        if let Err(e) = self.store.upload_set_state(
            clip,
            UploadState::Failed,
            None,
            Some(&error),
            topics::now_ns(),
        ) {
            tracing::error!(clip = %clip, "uplink: recording the failed upload: {e}");
        }
        self.set_error(format!("clip {clip}: {error}"));
    }

    /// Everything the broker sends the box. Nothing here may end the session: whatever
    /// cannot be used is counted, logged and (if retained) cleared.
    pub(crate) fn on_incoming(&mut self, topic: &str, payload: &[u8]) {
        let Some(p) = topics::parse(topic) else {
            return self.inbound_refused(topic, "not a storeguard/v1 topic");
        };
        if p.site != self.s.site || p.device != self.s.device {
            return self.inbound_refused(topic, "addressed to another box");
        }
        let clip = match p.kind {
            Kind::ClipAck(clip) => clip,
            Kind::ConfigDesired | Kind::Cmd(_) => {
                let kind = match p.kind {
                    Kind::Cmd(name) => super::InboundKind::Command(name.to_string()),
                    _ => super::InboundKind::Desired,
                };
                // An empty retained payload is a cleared topic, not a message.
                if payload.is_empty() {
                    return;
                }
                let sent = self.s.inbound.as_ref().is_some_and(|tx| {
                    tx.send(super::Inbound {
                        kind,
                        payload: payload.to_vec(),
                    })
                    .is_ok()
                });
                if !sent {
                    self.inbound_refused(topic, "remote config and commands are not running");
                }
                return;
            }
            _ => return self.inbound_refused(topic, "not a topic this box takes messages on"),
        };
        // Our own clearing of a retained ack comes back as an empty message.
        if payload.is_empty() {
            return;
        }
        // A clip or a package: both are acknowledged the same way.
        let clip = clip.to_string();
        let row = match self.store.item(&clip) {
            Ok(r) => r,
            Err(e) => {
                // Keep the retained ack: it comes again on the next connection.
                tracing::error!(clip = %clip, "uplink: looking up the evidence of a receipt: {e}");
                return;
            }
        };
        if row.as_ref().is_some_and(|r| r.state == "acked") {
            tracing::debug!(clip = %clip, "receipt for a clip already confirmed");
            return self.clear_ack(&clip);
        }
        let sealed = row.as_ref().filter(|r| r.state == "sealed").map(|r| {
            (
                r.bytes.unwrap_or(-1).max(0) as u64,
                r.sha256.clone().unwrap_or_default(),
                self.manifest_signature(r.path.as_deref()),
            )
        });
        let expected = sealed.as_ref().map(|(bytes, sha, sig)| Sealed {
            site: &self.s.site,
            device: &self.s.device,
            clip: &clip,
            bytes: *bytes,
            sha256: sha,
            manifest_signature: sig.as_deref().unwrap_or("(unreadable manifest)"),
        });
        let accepted = match receipt::check(
            payload,
            &self.s.trusted,
            &self.s.site,
            &self.s.device,
            &clip,
            expected.as_ref(),
        ) {
            Ok(a) => a,
            Err(e) => {
                self.receipt_rejected(&clip, &e);
                return self.clear_ack(&clip);
            }
        };
        let (ack, key_id) = (accepted.ack, accepted.key_id);
        let now = topics::now_ns();
        match ack.status {
            AckStatus::Verified => {
                match self.store.ack_item(&clip, now, payload, &key_id) {
                    Ok(true) => {
                        tracing::info!(clip = %clip, key = %key_id, "control centre's signed receipt accepted and kept; retention lock released");
                        self.shared().clips_verified += 1;
                    }
                    Ok(false) => tracing::debug!(clip = %clip, "clip already acknowledged"),
                    // Keep the retained ack: it comes again on the next connection.
                    Err(e) => {
                        tracing::error!(clip = %clip, "uplink: keeping the receipt: {e}");
                        return;
                    }
                }
                let _ = self
                    .store
                    .upload_set_state(&clip, UploadState::Acked, None, None, now);
                self.pokes.retain(|c| *c != clip);
                if self.active.as_ref().is_some_and(|a| a.clip == clip) {
                    self.active = None;
                    self.shared().upload = None;
                }
            }
            AckStatus::Incomplete => self.on_incomplete(&clip, &ack, now),
            AckStatus::Failed => {
                let reason = ack
                    .reason
                    .clone()
                    .unwrap_or_else(|| "no reason given".into());
                if let Ok(Some(u)) = self.store.upload(&clip)
                    && u.state != UploadState::Acked
                {
                    if self.active.as_ref().is_some_and(|a| a.clip == clip) {
                        self.active = None;
                        self.shared().upload = None;
                    }
                    if u.attempts >= MAX_UPLOAD_ATTEMPTS {
                        self.fail_upload(
                            &clip,
                            format!("receiver rejected it {} times, last: {reason}", u.attempts),
                        );
                    } else {
                        tracing::warn!(clip = %clip, attempt = u.attempts + 1, "receiver rejected the clip ({reason}); sending it again");
                        let _ = self.store.upload_restart(&clip, &reason, now);
                        self.requeue_manifest(&clip);
                        self.uploads_idle = false;
                    }
                }
            }
        }
        self.clear_ack(&clip);
    }

    /// The seal's identity: the signature value in the manifest sidecar of the clip (or
    /// of the package: its signed `manifest.json`, also kept beside the zip).
    fn manifest_signature(&self, rel: Option<&str>) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Signed {
            signature: Option<storeguard_proto::manifest::SignatureBlock>,
        }
        let side = sidecar_path(&self.s.data_dir.join(rel?));
        let m: Signed = serde_json::from_slice(&std::fs::read(&side).ok()?).ok()?;
        m.signature.map(|s| s.value)
    }

    /// Counts and logs an inbound message the box cannot use.
    fn inbound_refused(&mut self, topic: &str, why: &str) {
        tracing::warn!(topic, "uplink: inbound message ignored: {why}");
        let mut sh = self.shared();
        sh.inbound_rejected += 1;
        sh.inbound_last_rejected = Some(format!("{topic}: {why}"));
    }

    /// A receipt that does not prove delivery: the lock stays. Logged, counted, and sent
    /// upstream as a security health event (at most one per period, with the count).
    fn receipt_rejected(&mut self, clip: &str, e: &ReceiptError) {
        tracing::warn!(clip = %clip, "uplink: clip receipt REJECTED, retention lock kept: {e}");
        {
            let mut sh = self.shared();
            sh.inbound_rejected += 1;
            sh.receipts_rejected += 1;
            sh.inbound_last_rejected = Some(format!("receipt for clip {clip}: {e}"));
        }
        let now = Instant::now();
        if self
            .last_security_event
            .is_some_and(|t| now.duration_since(t) < SECURITY_EVENT_EVERY)
        {
            self.security_suppressed += 1;
            return;
        }
        self.last_security_event = Some(now);
        let more = std::mem::take(&mut self.security_suppressed);
        let detail = if more > 0 {
            format!("clip {clip}: {e} (and {more} more rejected receipts since the last report)")
        } else {
            format!("clip {clip}: {e}")
        };
        match self
            .store
            .health_event(topics::now_ns(), "receipt_rejected", None, &detail)
        {
            Ok(_) => self.cache_stale = true,
            Err(e) => tracing::error!("uplink: recording the rejected receipt: {e}"),
        }
    }

    fn on_incomplete(&mut self, clip: &str, ack: &ClipAck, now: i64) {
        let Ok(Some(u)) = self.store.upload(clip) else {
            return;
        };
        if u.state == UploadState::Acked {
            return;
        }
        if ack.need_manifest {
            self.requeue_manifest(clip);
        }
        let from = ack.resend_from.unwrap_or(0);
        if from >= u.total {
            return;
        }
        tracing::info!(clip = %clip, offset = from, "receiver misses part of the clip; resending from there");
        if let Some(a) = self.active.as_mut().filter(|a| a.clip == clip) {
            a.acked = a.acked.min(from);
            a.next_send = a.next_send.min(from);
            self.progress_dirty = true;
        } else if u.state != UploadState::Sending || u.next_offset > from {
            let _ = self
                .store
                .upload_set_state(clip, UploadState::Sending, Some(from), None, now);
            self.uploads_idle = false;
        }
    }

    /// Enqueues the manifest message of a clip or package again from its sidecar (the
    /// receiver lost it).
    fn requeue_manifest(&mut self, clip: &str) {
        let r = (|| -> anyhow::Result<()> {
            let row = self
                .store
                .item(clip)?
                .ok_or_else(|| anyhow::anyhow!("no such clip or package"))?;
            let path = row
                .path
                .ok_or_else(|| anyhow::anyhow!("clip has no file"))?;
            let side = sidecar_path(&self.s.data_dir.join(&path));
            let text = std::fs::read(&side)
                .map_err(|e| anyhow::anyhow!("read {}: {e}", side.display()))?;
            let parse = |e: serde_json::Error| anyhow::anyhow!("parse {}: {e}", side.display());
            let (topic, payload) = match row.kind {
                ItemKind::Clip => {
                    let m: Manifest = serde_json::from_slice(&text).map_err(parse)?;
                    topics::manifest_message(clip, &m)
                }
                ItemKind::Package => {
                    let m: PackageManifest = serde_json::from_slice(&text).map_err(parse)?;
                    let file = FileRef {
                        name: path.rsplit('/').next().unwrap_or(&path).to_string(),
                        size: row.bytes.unwrap_or(0).max(0) as u64,
                        sha256: row.sha256.unwrap_or_default(),
                    };
                    storeguard_proto::package::package_message(clip, &file, &m)
                }
            };
            self.store.enqueue(
                Class::Evidence,
                &topic,
                &payload,
                false,
                topics::now_ns(),
                self.s.limits,
            )?;
            Ok(())
        })();
        match r {
            Ok(()) => {
                self.cache_stale = true;
                tracing::info!(clip = %clip, "manifest queued again for the receiver");
            }
            Err(e) => {
                tracing::error!(clip = %clip, "uplink: cannot send the manifest again: {e:#}")
            }
        }
    }

    /// Removes the retained acknowledgement once handled.
    fn clear_ack(&mut self, clip: &str) {
        if !self.connected {
            return;
        }
        let topic = format!("{}{}", self.s.prefix, topics::ack_topic(clip));
        self.publish(topic, Vec::new(), true, Slot::Control { offline: false });
    }

    fn housekeeping(&mut self) {
        // Something may have begun or been enqueued without notify().
        self.uploads_idle = false;
        self.cache_stale = true;
        if !self.connected {
            return;
        }
        let now = topics::now_ns();
        let timeout = self.s.ack_timeout.as_nanos() as i64;
        if let Ok(sent) = self.store.uploads_in_state(UploadState::Sent) {
            for u in sent {
                if now - u.updated_ns >= timeout && !self.pokes.contains(&u.clip) {
                    let _ = self.store.upload_touch(&u.clip, now);
                    self.pokes.push_back(u.clip);
                }
            }
        }
    }

    /// Explicit retained `offline`, then DISCONNECT (so the broker drops the will).
    async fn shutdown(&mut self, events: &mut mpsc::UnboundedReceiver<PumpMsg>) {
        self.flush();
        if !self.connected {
            return;
        }
        self.closing = true;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
        let offline = Status::offline_clean(&self.s.site, &self.s.device);
        self.offline_acked = false;
        self.publish(
            self.status_topic(),
            offline,
            true,
            Slot::Control { offline: true },
        );
        while !self.offline_acked && self.connected {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(m)) => self.on_msg(m),
                _ => break,
            }
        }
        self.flush();
        if !self.offline_acked {
            tracing::warn!("uplink: the broker did not acknowledge 'offline' in time");
        }
        if self.connected && self.client.try_disconnect().is_ok() {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(PumpMsg::Event(ev)))
                        if matches!(*ev, Event::Outgoing(Outgoing::Disconnect)) =>
                    {
                        break;
                    }
                    Ok(Some(m @ PumpMsg::Down { .. })) => {
                        self.on_msg(m);
                        break;
                    }
                    Ok(Some(m)) => self.on_msg(m),
                    _ => break,
                }
            }
        }
        self.flush();
        self.connected = false;
        let mut sh = self.shared();
        sh.connected = false;
        sh.connected_since = None;
        tracing::info!("uplink disconnected cleanly");
    }
}

#[cfg(test)]
mod tests {
    use super::manifest_clip;

    #[test]
    fn manifest_topics() {
        assert_eq!(manifest_clip("evidence/c1/manifest"), Some("c1"));
        assert_eq!(manifest_clip("evidence//manifest"), None);
        assert_eq!(manifest_clip("alert"), None);
    }
}
