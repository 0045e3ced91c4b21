//! The connection state of a source or sink, shown in its deployment's status.

use std::sync::Mutex;
use std::time::SystemTime;

/// Where a connection stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ConnectionState {
    /// Not connected yet.
    Connecting,
    /// Connected and moving messages.
    Connected,
    /// Lost or refused; retrying with backoff.
    Retrying {
        /// Why, for the tenant (no internal detail).
        error: String,
        /// Attempts since the last success.
        attempts: u32,
    },
    /// Stopped for good.
    Failed {
        /// Why.
        error: String,
    },
}

/// A connection's state, shared by the connector (writer) and the deployment's status (reader).
#[derive(Debug)]
pub struct ConnectionStatus {
    inner: Mutex<(ConnectionState, SystemTime)>,
}

impl Default for ConnectionStatus {
    fn default() -> Self {
        Self {
            inner: Mutex::new((ConnectionState::Connecting, SystemTime::now())),
        }
    }
}

impl ConnectionStatus {
    /// Records a new state.
    pub fn set(&self, state: ConnectionState) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.0 != state {
            *inner = (state, SystemTime::now());
        }
    }

    /// Records a failed attempt (retrying), counting attempts since the last success.
    pub fn retrying(&self, error: impl Into<String>) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let attempts = match &inner.0 {
            ConnectionState::Retrying { attempts, .. } => attempts.saturating_add(1),
            _ => 1,
        };
        *inner = (
            ConnectionState::Retrying {
                error: error.into(),
                attempts,
            },
            SystemTime::now(),
        );
    }

    /// The state now and since when.
    pub fn get(&self) -> (ConnectionState, SystemTime) {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
