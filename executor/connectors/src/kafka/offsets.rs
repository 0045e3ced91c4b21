//! Which offsets a Kafka source may commit: per partition, the contiguous prefix of offered
//! records that were all processed.
//!
//! Committing offset `n` of a partition tells the group that every record below `n` is done
//! (librdkafka #1829), so records settled out of order are held back until everything before
//! them is settled too. A record that is abandoned (the deployment stopped before processing
//! it) is never committed: the partition is read again from it. The ledger holds one entry per
//! record in flight, so it is bounded by the deployment's intake.

use std::collections::{BTreeMap, HashMap};

use crate::message::PartitionAssignment;

/// A partition's records in flight, by offset: whether each was processed.
#[derive(Debug, Default)]
struct Partition {
    in_flight: BTreeMap<i64, bool>,
    /// This assignment of the partition, revoked with it.
    assignment: PartitionAssignment,
}

/// The offsets in flight of the partitions assigned to this consumer.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    partitions: HashMap<(String, i32), Partition>,
}

impl Ledger {
    /// The group assigned `partition` to this consumer: it starts with nothing in flight (the
    /// consumer reads from the committed offset).
    pub(crate) fn assign(&mut self, topic: &str, partition: i32) {
        if let Some(previous) = self
            .partitions
            .insert((topic.to_owned(), partition), Partition::default())
        {
            // Assigned again without a revoke in between: a new assignment all the same.
            previous.assignment.revoke();
        }
    }

    /// The group took `partition` away: its records in flight are forgotten (their
    /// settlements are ignored; the next owner reads them again).
    pub(crate) fn revoke(&mut self, topic: &str, partition: i32) {
        if let Some(p) = self.partitions.remove(&(topic.to_owned(), partition)) {
            p.assignment.revoke();
        }
    }

    /// The current assignment of `partition` to this consumer, if it is assigned.
    pub(crate) fn assignment(&self, topic: &str, partition: i32) -> Option<PartitionAssignment> {
        self.partitions
            .get(&(topic.to_owned(), partition))
            .map(|p| p.assignment.clone())
    }

    /// Whether `partition` is assigned to this consumer.
    pub(crate) fn is_assigned(&self, topic: &str, partition: i32) -> bool {
        self.partitions.contains_key(&(topic.to_owned(), partition))
    }

    /// A record was offered to the deployment.
    pub(crate) fn offered(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&(topic.to_owned(), partition)) {
            p.in_flight.insert(offset, false);
        }
    }

    /// A record was processed. Returns the offset to store (one past the last record of the
    /// partition's processed prefix, the next record to read, as Kafka commits it) if the
    /// prefix grew.
    pub(crate) fn processed(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        let done = p.in_flight.get_mut(&offset)?;
        *done = true;
        let mut next = None;
        while let Some(entry) = p.in_flight.first_entry() {
            if !*entry.get() {
                break;
            }
            next = Some(entry.key().saturating_add(1));
            entry.remove();
        }
        next
    }

    /// A record was abandoned: it and every later record of its partition in flight are
    /// forgotten, so nothing from it on is committed. Returns whether the partition is
    /// assigned (the consumer then reads it again from `offset`).
    pub(crate) fn abandoned(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        let Some(p) = self.partitions.get_mut(&(topic.to_owned(), partition)) else {
            return false;
        };
        if !p.in_flight.contains_key(&offset) {
            return false;
        }
        let _later = p.in_flight.split_off(&offset);
        true
    }

    /// Records in flight, over all partitions.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_contiguous_processed_prefix_is_committed() {
        let mut ledger = Ledger::default();
        ledger.assign("t", 0);
        for offset in 10..15 {
            ledger.offered("t", 0, offset);
        }
        assert_eq!(
            ledger.processed("t", 0, 12),
            None,
            "10 and 11 are still in flight"
        );
        assert_eq!(ledger.processed("t", 0, 11), None);
        // Committing 13 says 10, 11 and 12 are done.
        assert_eq!(ledger.processed("t", 0, 10), Some(13));
        assert_eq!(ledger.processed("t", 0, 14), None, "13 is in flight");
        assert_eq!(ledger.processed("t", 0, 13), Some(15));
        assert_eq!(ledger.len(), 0);
    }

    #[test]
    fn an_abandoned_record_is_never_committed() {
        let mut ledger = Ledger::default();
        ledger.assign("t", 0);
        for offset in 0..4 {
            ledger.offered("t", 0, offset);
        }
        assert_eq!(ledger.processed("t", 0, 0), Some(1));
        assert!(ledger.abandoned("t", 0, 1));
        // Later settlements of forgotten records do not move the commit past the abandoned one.
        assert_eq!(ledger.processed("t", 0, 2), None);
        assert_eq!(ledger.processed("t", 0, 1), None);
        assert_eq!(ledger.len(), 0);
        // Read again from 1.
        ledger.offered("t", 0, 1);
        assert_eq!(ledger.processed("t", 0, 1), Some(2));
    }

    #[test]
    fn settlements_of_revoked_partitions_are_ignored() {
        let mut ledger = Ledger::default();
        ledger.assign("t", 0);
        ledger.assign("t", 1);
        ledger.offered("t", 0, 5);
        ledger.offered("t", 1, 7);
        ledger.revoke("t", 0);
        assert!(!ledger.is_assigned("t", 0));
        assert_eq!(ledger.processed("t", 0, 5), None);
        assert!(!ledger.abandoned("t", 0, 5));
        assert_eq!(ledger.processed("t", 1, 7), Some(8));
        // Offers for partitions not assigned are not tracked.
        ledger.offered("u", 0, 1);
        assert_eq!(ledger.len(), 0);
    }
}
