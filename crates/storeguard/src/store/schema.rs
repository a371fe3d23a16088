//! Versioned migrations. `PRAGMA user_version` holds the applied version; each step runs
//! in one transaction, so a power cut mid-migration leaves the previous version intact.
//! Append new steps; never edit a released one.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: foundation
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;",
    // 2: the recording ring. Times are UTC nanoseconds since the Unix epoch.
    "CREATE TABLE segment (
        id INTEGER PRIMARY KEY,
        camera TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,      -- relative to the data directory
        start_ns INTEGER NOT NULL,      -- first frame
        end_ns INTEGER NOT NULL,        -- last synced frame + one frame interval
        bytes INTEGER NOT NULL,         -- synced bytes; the file may hold a little more
        frames INTEGER NOT NULL,
        codec TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        params BLOB,                    -- SPS/PPS(/VPS), Annex B
        time_source TEXT NOT NULL,      -- 'arrival' | 'ntp'
        state INTEGER NOT NULL          -- 0 open, 1 closed, 2 recovered after a crash
     ) STRICT;
     CREATE INDEX segment_by_camera ON segment(camera, start_ns);
     CREATE TABLE keyframe (
        segment INTEGER NOT NULL REFERENCES segment(id) ON DELETE CASCADE,
        utc_ns INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        PRIMARY KEY (segment, offset)
     ) STRICT, WITHOUT ROWID;
     CREATE TABLE gap (
        id INTEGER PRIMARY KEY,
        camera TEXT NOT NULL,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER,                 -- NULL while the gap is still open
        reason TEXT NOT NULL
     ) STRICT;
     CREATE INDEX gap_by_camera ON gap(camera, start_ns);
     CREATE TABLE retention_lock (
        id INTEGER PRIMARY KEY,
        camera TEXT NOT NULL,
        from_ns INTEGER NOT NULL,
        to_ns INTEGER NOT NULL,
        reason TEXT NOT NULL,
        created_ns INTEGER NOT NULL
     ) STRICT;
     CREATE INDEX retention_lock_by_camera ON retention_lock(camera, from_ns);
     CREATE TABLE health_event (
        id INTEGER PRIMARY KEY,
        at_ns INTEGER NOT NULL,
        kind TEXT NOT NULL,
        camera TEXT,
        detail TEXT NOT NULL
     ) STRICT;",
    // 3: events, evidence clips, audit trail and the upstream outbox.
    "CREATE TABLE event (
        id INTEGER PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,       -- stable id carried upstream
        kind TEXT NOT NULL,             -- isb_press | stuck_fault | wiring_fault | ...
        source TEXT NOT NULL,           -- button name
        at_ns INTEGER NOT NULL,         -- UTC, from the kernel edge timestamp
        test INTEGER NOT NULL,
        detail TEXT NOT NULL            -- JSON
     ) STRICT;
     CREATE INDEX event_by_time ON event(at_ns);
     CREATE TABLE clip (
        id INTEGER PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        event INTEGER REFERENCES event(id),
        camera TEXT NOT NULL,
        from_ns INTEGER NOT NULL,
        to_ns INTEGER NOT NULL,
        state TEXT NOT NULL,            -- pending | sealed | failed | acked
        path TEXT,                      -- relative to the data directory
        sha256 TEXT,
        bytes INTEGER,
        lock_id INTEGER,                -- retention_lock keeping its source segments
        error TEXT,
        created_ns INTEGER NOT NULL,
        sealed_ns INTEGER,
        acked_ns INTEGER
     ) STRICT;
     CREATE INDEX clip_by_state ON clip(state);
     CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at_ns INTEGER NOT NULL,
        uid INTEGER,                    -- peer uid from the control socket
        pid INTEGER,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
     ) STRICT;
     CREATE TABLE outbox (
        -- AUTOINCREMENT: an id is never reused, so the receiver can dedupe on it forever.
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        class INTEGER NOT NULL,         -- 0 alert, 1 evidence/best shot, 2 clip chunk, 3 health/telemetry
        topic TEXT NOT NULL,            -- below storeguard/v1/{site}/{device}/
        payload BLOB NOT NULL,
        retain INTEGER NOT NULL,
        created_ns INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
     ) STRICT;
     CREATE INDEX outbox_order ON outbox(class, id);
     CREATE TABLE outbox_counter (
        class INTEGER PRIMARY KEY,
        accepted INTEGER NOT NULL DEFAULT 0,
        delivered INTEGER NOT NULL DEFAULT 0,
        dropped INTEGER NOT NULL DEFAULT 0
     ) STRICT;",
    // 4: uplink: evidence upload progress and outbox messages the broker cannot take.
    "CREATE TABLE upload (
        clip TEXT PRIMARY KEY,          -- clip.uid
        path TEXT NOT NULL,             -- relative to the data directory
        total INTEGER NOT NULL,         -- bytes
        sha256 TEXT NOT NULL,
        next_offset INTEGER NOT NULL,   -- first byte the broker has not acknowledged
        state TEXT NOT NULL,            -- sending | sent | acked | failed
        attempts INTEGER NOT NULL DEFAULT 1,
        error TEXT,
        created_ns INTEGER NOT NULL,
        updated_ns INTEGER NOT NULL
     ) STRICT;
     CREATE INDEX upload_by_state ON upload(state);
     CREATE TABLE outbox_rejected (
        id INTEGER PRIMARY KEY,         -- the outbox id it had
        class INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        created_ns INTEGER NOT NULL,
        rejected_ns INTEGER NOT NULL,
        reason TEXT NOT NULL
     ) STRICT;",
    // 5: the control centre's signed receipt for a clip (the exact payload), once accepted.
    "ALTER TABLE clip ADD COLUMN receipt TEXT;
     ALTER TABLE clip ADD COLUMN receipt_key TEXT;",
    // 6: remote commands, run once per request id; holds (retention locks by request).
    "CREATE TABLE remote_request (
        request_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        received_ns INTEGER NOT NULL,
        state TEXT NOT NULL,            -- running | done
        result BLOB                     -- the cmd-result payload sent for it
     ) STRICT;
     ALTER TABLE retention_lock ADD COLUMN hold_id TEXT;
     ALTER TABLE retention_lock ADD COLUMN expires_ns INTEGER;
     CREATE INDEX retention_lock_by_hold ON retention_lock(hold_id);",
    // 7: evidence packages uploaded like clips (the `package` remote command); the
    // upload table's `clip` column names a clip or a package.
    "CREATE TABLE package (
        id INTEGER PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,       -- the package id (manifest.json package_id)
        event TEXT,                     -- event uid it packages
        request_id TEXT,                -- the remote request that made it
        path TEXT NOT NULL,             -- the .zip, relative to the data directory
        sha256 TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        state TEXT NOT NULL,            -- sealed | acked
        created_ns INTEGER NOT NULL,
        acked_ns INTEGER,
        receipt TEXT,                   -- the control centre's signed receipt, verbatim
        receipt_key TEXT
     ) STRICT;
     CREATE INDEX package_by_event ON package(event);",
    // 8: trustworthy time (docs/time.md). An epoch is one time base of the box clock
    // between two steps; rows say which epoch and clock quality they were stamped in; a
    // step corrects its epoch's rows and keeps their recorded values.
    "CREATE TABLE clock_epoch (
        id INTEGER PRIMARY KEY,
        boot_id TEXT NOT NULL,          -- /proc/sys/kernel/random/boot_id
        base_ns INTEGER NOT NULL,       -- CLOCK_REALTIME - CLOCK_MONOTONIC at its start
        started_ns INTEGER NOT NULL,
        synced_until_ns INTEGER         -- last time the clock was synchronised in it
     ) STRICT;
     CREATE TABLE clock_step (
        id INTEGER PRIMARY KEY,
        at_ns INTEGER NOT NULL,         -- when it was seen, on the new clock
        before_ns INTEGER NOT NULL,     -- the clock just before (old time base)
        after_ns INTEGER NOT NULL,      -- the clock just after
        size_ns INTEGER NOT NULL,
        cause TEXT NOT NULL,
        epoch_before INTEGER NOT NULL REFERENCES clock_epoch(id),
        epoch_after INTEGER NOT NULL REFERENCES clock_epoch(id),
        synced_until_ns INTEGER,        -- the old epoch's last synchronised moment
        synced_after INTEGER NOT NULL,
        error_after_ns INTEGER,         -- error bound just after (NULL: unsynchronised)
        corrected TEXT NOT NULL         -- JSON: rows corrected per table
     ) STRICT;
     ALTER TABLE segment ADD COLUMN clock_epoch INTEGER;
     ALTER TABLE segment ADD COLUMN time_synced INTEGER;
     ALTER TABLE segment ADD COLUMN time_error_ns INTEGER;
     ALTER TABLE segment ADD COLUMN clock_step INTEGER;
     ALTER TABLE segment ADD COLUMN recorded_start_ns INTEGER;
     ALTER TABLE segment ADD COLUMN recorded_end_ns INTEGER;
     CREATE INDEX segment_by_epoch ON segment(clock_epoch, start_ns);
     ALTER TABLE keyframe ADD COLUMN recorded_utc_ns INTEGER;
     ALTER TABLE gap ADD COLUMN clock_epoch INTEGER;
     ALTER TABLE gap ADD COLUMN clock_step INTEGER;
     ALTER TABLE gap ADD COLUMN recorded_start_ns INTEGER;
     ALTER TABLE gap ADD COLUMN recorded_end_ns INTEGER;
     ALTER TABLE event ADD COLUMN clock_epoch INTEGER;
     ALTER TABLE event ADD COLUMN time_synced INTEGER;
     ALTER TABLE event ADD COLUMN time_error_ns INTEGER;
     ALTER TABLE event ADD COLUMN clock_step INTEGER;
     ALTER TABLE event ADD COLUMN recorded_at_ns INTEGER;",
    // 9: start-up that costs the same on a full ring as on an empty one
    // (docs/persistence.md): each camera's totals kept by triggers, in the transactions
    // that change its rows, and the segments left open found from their own index. A
    // segment grows every sync round, so that trigger is one statement. (Not INSERT OR
    // IGNORE: the upsert that fires the trigger would override its OR IGNORE.)
    "CREATE TABLE camera_usage (
        camera TEXT PRIMARY KEY,
        bytes INTEGER NOT NULL,
        segments INTEGER NOT NULL
     ) STRICT, WITHOUT ROWID;
     INSERT INTO camera_usage SELECT camera, sum(bytes), count(*) FROM segment GROUP BY camera;
     CREATE TRIGGER segment_usage_insert AFTER INSERT ON segment BEGIN
        INSERT INTO camera_usage SELECT new.camera, 0, 0
         WHERE NOT EXISTS (SELECT 1 FROM camera_usage WHERE camera = new.camera);
        UPDATE camera_usage SET bytes = bytes + new.bytes, segments = segments + 1
         WHERE camera = new.camera;
     END;
     CREATE TRIGGER segment_usage_delete AFTER DELETE ON segment BEGIN
        UPDATE camera_usage SET bytes = bytes - old.bytes, segments = segments - 1
         WHERE camera = old.camera;
     END;
     CREATE TRIGGER segment_usage_grow AFTER UPDATE OF bytes ON segment
     WHEN new.camera = old.camera BEGIN
        UPDATE camera_usage SET bytes = bytes + new.bytes - old.bytes WHERE camera = new.camera;
     END;
     CREATE TRIGGER segment_usage_move AFTER UPDATE OF camera, bytes ON segment
     WHEN new.camera != old.camera BEGIN
        UPDATE camera_usage SET bytes = bytes - old.bytes, segments = segments - 1
         WHERE camera = old.camera;
        INSERT INTO camera_usage SELECT new.camera, 0, 0
         WHERE NOT EXISTS (SELECT 1 FROM camera_usage WHERE camera = new.camera);
        UPDATE camera_usage SET bytes = bytes + new.bytes, segments = segments + 1
         WHERE camera = new.camera;
     END;
     CREATE INDEX segment_open ON segment(camera) WHERE state = 0;",
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub enum MigrateError {
    TooNew(i64),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Sql(e)
    }
}

pub fn migrate(c: &mut Connection) -> Result<(), MigrateError> {
    let current: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(MigrateError::TooNew(current));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = c.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version={}", i + 1))?;
        tx.commit()?;
        tracing::info!(version = i + 1, "database migrated");
    }
    Ok(())
}
