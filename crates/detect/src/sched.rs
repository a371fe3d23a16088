//! Fair batching of inference across cameras.
//!
//! The detector is the scarce resource: 20–24 cameras share one model on two cores. Each
//! camera holds at most one pending job, the newest frame (an old frame is worth less than a
//! new one, and queues would only add latency); batches take cameras round-robin, so a busy
//! camera can not starve a quiet one; a per-camera minimum interval caps what one camera
//! may take.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SchedError {
    #[error("camera {camera} is not one of the scheduler's {cameras}")]
    UnknownCamera { camera: usize, cameras: usize },
}

/// A frame to infer.
#[derive(Debug, Clone, PartialEq)]
pub struct Job<T> {
    pub camera: usize,
    pub at_ns: i64,
    pub payload: T,
}

/// Per camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub submitted: u64,
    /// Replaced by a newer frame before inference.
    pub dropped: u64,
    pub inferred: u64,
}

#[derive(Debug, Clone)]
struct Slot<T> {
    pending: Option<(i64, T)>,
    min_interval_ns: i64,
    last_taken_ns: Option<i64>,
    counters: Counters,
}

/// Pending jobs of cameras `0..n`.
#[derive(Debug, Clone)]
pub struct Scheduler<T> {
    slots: Vec<Slot<T>>,
    batch: usize,
    /// The camera the next batch starts looking at.
    next: usize,
}

impl<T> Scheduler<T> {
    /// `batch`: jobs per batch at most (at least 1); `min_interval_ns`: every camera's
    /// default rate cap (0: none).
    pub fn new(cameras: usize, batch: usize, min_interval_ns: i64) -> Scheduler<T> {
        Scheduler {
            slots: (0..cameras)
                .map(|_| Slot {
                    pending: None,
                    min_interval_ns,
                    last_taken_ns: None,
                    counters: Counters::default(),
                })
                .collect(),
            batch: batch.max(1),
            next: 0,
        }
    }

    fn slot(&mut self, camera: usize) -> Result<&mut Slot<T>, SchedError> {
        let cameras = self.slots.len();
        self.slots
            .get_mut(camera)
            .ok_or(SchedError::UnknownCamera { camera, cameras })
    }

    pub fn set_min_interval(&mut self, camera: usize, ns: i64) -> Result<(), SchedError> {
        self.slot(camera)?.min_interval_ns = ns;
        Ok(())
    }

    /// Queues the camera's newest frame. Returns the frame it replaced (counted as dropped),
    /// so its buffer can be reused.
    pub fn submit(
        &mut self,
        camera: usize,
        at_ns: i64,
        payload: T,
    ) -> Result<Option<T>, SchedError> {
        let s = self.slot(camera)?;
        s.counters.submitted += 1;
        let old = s.pending.replace((at_ns, payload)).map(|(_, p)| p);
        if old.is_some() {
            s.counters.dropped += 1;
        }
        Ok(old)
    }

    /// Up to `batch` jobs, one per camera, round-robin from where the last batch stopped,
    /// skipping cameras whose rate cap has not elapsed at `now_ns` (their job waits, and a
    /// newer frame may still replace it).
    pub fn next_batch(&mut self, now_ns: i64) -> Vec<Job<T>> {
        let n = self.slots.len();
        let mut jobs = Vec::new();
        let start = self.next;
        for k in 0..n {
            if jobs.len() == self.batch {
                break;
            }
            let camera = (start + k) % n;
            let s = &mut self.slots[camera];
            if s.pending.is_none() || !ready(s, now_ns) {
                continue;
            }
            if let Some((at_ns, payload)) = s.pending.take() {
                s.last_taken_ns = Some(now_ns);
                s.counters.inferred += 1;
                jobs.push(Job {
                    camera,
                    at_ns,
                    payload,
                });
                self.next = (camera + 1) % n;
            }
        }
        jobs
    }

    pub fn counters(&self, camera: usize) -> Option<Counters> {
        self.slots.get(camera).map(|s| s.counters)
    }

    pub fn pending(&self) -> usize {
        self.slots.iter().filter(|s| s.pending.is_some()).count()
    }

    /// When the earliest pending job may be taken (now or in the past: at once); `None`
    /// with nothing pending. What the inference thread sleeps until.
    pub fn next_ready_ns(&self) -> Option<i64> {
        self.slots
            .iter()
            .filter(|s| s.pending.is_some())
            .map(|s| {
                s.last_taken_ns
                    .map_or(i64::MIN, |t| t.saturating_add(s.min_interval_ns))
            })
            .min()
    }
}

fn ready<T>(s: &Slot<T>, now_ns: i64) -> bool {
    // A clock stepped back counts as elapsed, or the camera would stall until it caught up.
    s.last_taken_ns
        .is_none_or(|t| now_ns < t || now_ns.saturating_sub(t) >= s.min_interval_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    fn cameras(jobs: &[Job<u32>]) -> Vec<usize> {
        jobs.iter().map(|j| j.camera).collect()
    }

    #[test]
    fn latest_frame_wins_and_replacing_counts_a_drop() {
        let mut s = Scheduler::new(2, 4, 0);
        assert_eq!(s.submit(0, 1, 10).unwrap(), None);
        assert_eq!(s.submit(0, 2, 11).unwrap(), Some(10));
        assert_eq!(s.submit(0, 3, 12).unwrap(), Some(11));
        let b = s.next_batch(0);
        assert_eq!(
            b,
            [Job {
                camera: 0,
                at_ns: 3,
                payload: 12
            }]
        );
        assert_eq!(
            s.counters(0),
            Some(Counters {
                submitted: 3,
                dropped: 2,
                inferred: 1
            })
        );
        assert!(s.next_batch(0).is_empty());
        assert_eq!(
            s.submit(5, 0, 0),
            Err(SchedError::UnknownCamera {
                camera: 5,
                cameras: 2
            })
        );
        assert_eq!(s.counters(5), None);
    }

    #[test]
    fn a_busy_camera_can_not_starve_the_others() {
        // Batches of 2 over 5 cameras; camera 0 submits ten frames per batch, the others one
        // each now and then.
        let mut s = Scheduler::new(5, 2, 0);
        let mut served = [0u32; 5];
        for round in 0..50u32 {
            for f in 0..10 {
                s.submit(0, 0, round * 10 + f).unwrap();
            }
            if round % 5 == 0 {
                for c in 1..5 {
                    s.submit(c, 0, round).unwrap();
                }
            }
            for j in s.next_batch(i64::from(round)) {
                served[j.camera] += 1;
            }
        }
        // Every quiet frame was inferred (none waited for a newer one to replace it).
        assert_eq!(&served[1..], [10, 10, 10, 10]);
        for c in 1..5 {
            assert_eq!(s.counters(c).unwrap().dropped, 0);
        }
        // And the busy camera was still served in most rounds.
        assert!(served[0] >= 30, "{served:?}");
        assert_eq!(u64::from(served[0]), s.counters(0).unwrap().inferred);
    }

    #[test]
    fn round_robin_takes_turns() {
        let mut s = Scheduler::new(3, 2, 0);
        for c in 0..3 {
            s.submit(c, 0, 0).unwrap();
        }
        assert_eq!(cameras(&s.next_batch(0)), [0, 1]);
        for c in 0..3 {
            s.submit(c, 0, 0).unwrap();
        }
        assert_eq!(cameras(&s.next_batch(0)), [2, 0]);
        assert_eq!(cameras(&s.next_batch(0)), [1]);
    }

    #[test]
    fn rate_cap_holds_a_camera_back() {
        let mut s = Scheduler::new(2, 4, 0);
        s.set_min_interval(0, 200 * MS).unwrap();
        assert!(s.set_min_interval(9, 1).is_err());
        let mut taken = Vec::new();
        // Camera 0 offers a frame every 40 ms for a second: 5 inferences, the rest replaced.
        for t in 0..25 {
            let now = t * 40 * MS;
            s.submit(0, now, 0).unwrap();
            taken.extend(s.next_batch(now).into_iter().map(|j| j.at_ns / MS));
        }
        assert_eq!(taken, [0, 200, 400, 600, 800]);
        assert_eq!(s.pending(), 1);
        assert_eq!(s.next_ready_ns(), Some(1000 * MS));
        let c = s.counters(0).unwrap();
        assert_eq!((c.submitted, c.inferred, c.dropped), (25, 5, 19));
        // Uncapped camera 1 is served at once.
        s.submit(1, 0, 0).unwrap();
        assert_eq!(s.next_ready_ns(), Some(i64::MIN));
        assert_eq!(cameras(&s.next_batch(961 * MS)), [1]);
    }
}
