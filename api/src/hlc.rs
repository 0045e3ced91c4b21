use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A hybrid logical clock reading: wall-clock time since the Unix epoch, a counter that orders
/// events within the same instant, and the id of the node that made it. Ordered by
/// (time, counter, node id), the order of Azure's `__ts` and of state-store versions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    /// Whole seconds since the Unix epoch.
    pub secs: u64,
    /// Nanoseconds within the second (below 1e9).
    pub nanos: u32,
    /// Orders readings of the same instant.
    pub counter: u64,
    /// The node that made the reading.
    pub node_id: String,
}

/// Why a `__ts` string is not an HLC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid hybrid logical clock {text:?}: expected <millis>:<counter>:<node-id>")]
pub struct HlcParseError {
    text: String,
}

impl Hlc {
    /// The reading at `time` with counter 0.
    pub fn at(time: Duration, node_id: impl Into<String>) -> Self {
        Self {
            secs: time.as_secs(),
            nanos: time.subsec_nanos(),
            counter: 0,
            node_id: node_id.into(),
        }
    }

    /// The wall-clock part.
    pub fn time(&self) -> Duration {
        // Saturating: readings can come from guests, whose nanos may be out of range.
        Duration::from_secs(self.secs).saturating_add(Duration::from_nanos(u64::from(self.nanos)))
    }

    /// Milliseconds since the Unix epoch, as `__ts` carries them.
    pub fn millis(&self) -> u128 {
        self.time().as_millis()
    }

    /// Parses Azure's `__ts` user property, leniently: `<ms>:<counter>:<node-id>`, with or
    /// without zero padding; the node id may itself contain `:`.
    pub fn parse_ts(text: &str) -> Result<Self, HlcParseError> {
        let error = || HlcParseError {
            text: text.to_owned(),
        };
        let mut parts = text.splitn(3, ':');
        let millis: u64 = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(error)?;
        let counter: u64 = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(error)?;
        let node_id = parts.next().ok_or_else(error)?;
        Ok(Self {
            counter,
            ..Self::at(Duration::from_millis(millis), node_id)
        })
    }

    /// The zero-padded `__ts` form Azure's SDKs write: `{ms:0>15}:{counter:0>5}:{node_id}`.
    pub fn to_ts(&self) -> String {
        format!(
            "{:0>15}:{:0>5}:{}",
            self.millis(),
            self.counter,
            self.node_id
        )
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_ts())
    }
}

/// Makes strictly increasing [`Hlc`] readings for one node, even when the wall clock stalls or
/// steps back.
#[derive(Debug)]
pub struct HlcClock {
    node_id: String,
    last: Mutex<(Duration, u64)>,
}

impl HlcClock {
    /// A clock for `node_id`.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            last: Mutex::new((Duration::ZERO, 0)),
        }
    }

    /// The node id readings carry.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A reading later than every earlier reading of this clock.
    pub fn now(&self) -> Hlc {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.advance(wall, None)
    }

    /// A reading later than both every earlier reading and `remote` (the HLC receive rule).
    pub fn update(&self, remote: &Hlc) -> Hlc {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.advance(wall, Some((remote.time(), remote.counter)))
    }

    fn advance(&self, wall: Duration, remote: Option<(Duration, u64)>) -> Hlc {
        // A poisoned lock still holds a valid reading; keep going with it.
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (previous, previous_counter) = *last;
        let remote = remote.map_or((Duration::ZERO, 0), |(time, counter)| {
            (whole_millis(time), counter)
        });
        // Readings are kept at the millisecond, the resolution `__ts` carries: two readings in
        // one millisecond differ by their counter, also once written out.
        let mut time = whole_millis(wall).max(previous).max(remote.0);
        // `None` when the counter would overflow (a remote may send `u64::MAX`): the reading
        // then moves to the next nanosecond instead, which is later still.
        let counter = if time == previous && time == remote.0 {
            previous_counter.max(remote.1).checked_add(1)
        } else if time == previous {
            previous_counter.checked_add(1)
        } else if time == remote.0 {
            remote.1.checked_add(1)
        } else {
            Some(0)
        };
        // Past what `__ts` writes in its five digits (or past `u64`), the reading carries into
        // the next millisecond instead: every stamp keeps the fixed-width form, and its order
        // as text is its order as a reading.
        let counter = counter.filter(|c| *c <= MAX_COUNTER).unwrap_or_else(|| {
            time = time.saturating_add(Duration::from_millis(1));
            0
        });
        *last = (time, counter);
        Hlc {
            counter,
            ..Hlc::at(time, self.node_id.clone())
        }
    }
}

/// The largest counter a clock writes: `__ts` carries five digits (`{counter:0>5}`).
const MAX_COUNTER: u64 = 99_999;

/// `time` truncated to the whole millisecond.
fn whole_millis(time: Duration) -> Duration {
    Duration::from_millis(u64::try_from(time.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_padded_and_unpadded_ts() {
        let padded = Hlc::parse_ts("001758255553528:00007:node-a").unwrap();
        assert_eq!(
            (padded.millis(), padded.counter, padded.node_id.as_str()),
            (1758255553528, 7, "node-a")
        );
        let plain = Hlc::parse_ts("1758255553000:0:df").unwrap();
        assert_eq!(plain.millis(), 1758255553000);
        assert_eq!(Hlc::parse_ts("5:1:a:b").unwrap().node_id, "a:b");
    }

    #[test]
    fn rejects_malformed_ts() {
        for bad in ["", "1", "1:2", "x:1:n", "1:x:n", "-1:0:n"] {
            assert!(Hlc::parse_ts(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ts_round_trips_in_padded_form() {
        let hlc = Hlc {
            counter: 3,
            ..Hlc::at(Duration::from_millis(1_758_255_553_528), "n")
        };
        assert_eq!(hlc.to_ts(), "001758255553528:00003:n");
        assert_eq!(Hlc::parse_ts(&hlc.to_ts()).unwrap(), hlc);
    }

    #[test]
    fn orders_by_time_then_counter_then_node() {
        let a = Hlc::at(Duration::from_secs(1), "b");
        let b = Hlc {
            counter: 1,
            ..Hlc::at(Duration::from_secs(1), "a")
        };
        let c = Hlc::at(Duration::from_secs(2), "a");
        assert!(a < b && b < c);
    }

    #[test]
    fn clock_readings_strictly_increase_also_as_ts_text() {
        let clock = HlcClock::new("n");
        let mut previous = clock.now();
        for _ in 0..1000 {
            let next = clock.now();
            assert!(next > previous);
            assert!(
                next.to_ts() > previous.to_ts(),
                "{next} repeats {previous} in text"
            );
            previous = next;
        }
    }

    #[test]
    fn counters_at_their_limit_never_overflow() {
        let clock = HlcClock::new("n");
        let base = clock.now();
        let limit = Hlc {
            counter: u64::MAX,
            ..Hlc::at(base.time() + Duration::from_secs(1), "far")
        };
        let merged = clock.update(&limit);
        assert!(merged > limit, "{merged:?} is not later than {limit:?}");
        assert_eq!(merged.counter, 0);
        // Five digits at most: 99,999 carries into the next millisecond.
        let edge = Hlc {
            counter: 99_999,
            ..Hlc::at(merged.time() + Duration::from_secs(1), "far")
        };
        let carried = clock.update(&edge);
        assert_eq!((carried.millis(), carried.counter), (edge.millis() + 1, 0));
        assert!(carried.to_ts() > edge.to_ts());
        let again = clock.update(&limit);
        assert!(again > merged);
        assert!(Hlc::parse_ts("18446744073709551615:18446744073709551615:x").is_ok());
    }

    #[test]
    fn clock_moves_past_a_remote_reading_from_the_future() {
        let clock = HlcClock::new("n");
        let future = Hlc {
            counter: 9,
            ..Hlc::at(Duration::from_millis(u64::MAX / 4), "far")
        };
        let merged = clock.update(&future);
        assert!(merged.time() == future.time() && merged.counter == 10);
        assert!(clock.now() > merged);
    }
}
