//! Shared subscriptions (`$share/<group>/<filter>`, MQTT 5.0 section 4.8.2).
//!
//! rmqtt's default strategy reports shared subscriptions as unsupported, and then a
//! `$share/…` filter is granted but taken literally, so its subscribers receive nothing
//! (dependency-notes.md, "MQTT v5 spike"). This one hands each message to one member of the
//! group, in turn, preferring members that are connected.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use rmqtt::context::ServerContext;
use rmqtt::subscribe::SharedSubscription;
use rmqtt::types::{
    ClientId, Id, IsOnline, NodeId, SharedGroup, SubscriptionIdentifier, SubscriptionOptions,
    TopicName,
};

/// Round robin over a group's members: one counter for the whole broker (no state per group or
/// tenant), so the turn moves on with every message of every group.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    turn: AtomicUsize,
}

#[async_trait]
impl SharedSubscription for RoundRobin {
    fn is_supported(&self) -> bool {
        true
    }

    async fn choice(
        &self,
        _scx: &ServerContext,
        _group: &SharedGroup,
        _publisher: &Id,
        _topic: &TopicName,
        members: &[(
            NodeId,
            ClientId,
            SubscriptionOptions,
            Option<Vec<SubscriptionIdentifier>>,
            Option<IsOnline>,
        )],
    ) -> Option<(usize, IsOnline)> {
        if members.is_empty() {
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let online: Vec<usize> = members
            .iter()
            .enumerate()
            .filter(|(_, member)| member.4.unwrap_or(false))
            .map(|(index, _)| index)
            .collect();
        if online.is_empty() {
            // Nobody connected: queue it for one member's persistent session.
            return Some((turn % members.len(), false));
        }
        online.get(turn % online.len()).map(|index| (*index, true))
    }
}
