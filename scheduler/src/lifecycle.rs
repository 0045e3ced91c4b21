//! The deployment state machine: where a deployment is in its life, and the only ways it can
//! move on.
//!
//! ```text
//!            place            started
//! pending ─────────► placed ─────────► running ◄──────┐
//!    ▲                 │                 │   degrade   │ recover
//!    │ lost / resume   │ start failed    ▼             │
//!    ├─────────────────┼──────────── degraded ─────────┘
//!    │                 ▼                 │ fail
//!    │              failed ◄─────────────┘
//!    │                 │
//!    └──────────── stopped  (pause, from every state; resume goes back to pending)
//! ```
//!
//! Every move is an [`Event`] applied with [`DeploymentState::apply`]; a move the diagram does
//! not have is refused with [`IllegalTransition`] and the state is left as it was. The API
//! shows a state by [`DeploymentState::status`] (`pending`, `placed`, `running`, `degraded`,
//! `failed`, and `paused` for stopped, the word the API has always used for a deployment its
//! owner stopped).

use std::fmt;

use crate::ExecutorId;

/// Where a deployment is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentState {
    /// Wanted running, on no executor yet (new, resumed, or its executor was lost).
    Pending,
    /// Assigned to an executor that has not reported it started.
    Placed {
        /// The executor it was assigned to.
        executor: ExecutorId,
    },
    /// Runs on an executor, every connection up.
    Running {
        /// The executor it runs on.
        executor: ExecutorId,
    },
    /// Runs on an executor but not well: a connection is down, or items fail.
    Degraded {
        /// The executor it runs on.
        executor: ExecutorId,
        /// What is wrong, for the status.
        reason: String,
    },
    /// Could not start, or stopped on an error; runs nowhere until resumed.
    Failed {
        /// Why, for the status.
        reason: String,
    },
    /// Stopped by its owner (the API's `paused`); runs nowhere until resumed.
    Stopped,
}

/// Something that happened to a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The placer chose an executor for it.
    Place(ExecutorId),
    /// The executor reports it started.
    Started,
    /// The executor reports it runs but something is wrong.
    Degrade(String),
    /// The executor reports it is well again.
    Recover,
    /// It could not start, or stopped on an error.
    Fail(String),
    /// Its executor was lost (heartbeats stopped) or drained: it must be placed again.
    Lost,
    /// Its owner paused it.
    Stop,
    /// Its owner resumed it, or asked again for a failed one.
    Resume,
}

/// An event the deployment's state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {from} deployment cannot take the event {event}")]
pub struct IllegalTransition {
    /// The state it was in (its status word).
    pub from: &'static str,
    /// The event refused (its name).
    pub event: &'static str,
}

impl Event {
    /// The event's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Place(_) => "place",
            Self::Started => "started",
            Self::Degrade(_) => "degrade",
            Self::Recover => "recover",
            Self::Fail(_) => "fail",
            Self::Lost => "lost",
            Self::Stop => "stop",
            Self::Resume => "resume",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl DeploymentState {
    /// The state after `event`, or why the event is not allowed now (the state is unchanged).
    ///
    /// Stopping is allowed from every state and is idempotent; so is resuming a deployment that
    /// is already on its way (`pending`, `placed`, `running`, `degraded`), since "make it run"
    /// asked twice is one request. Every other edge is in the module's diagram.
    pub fn apply(&self, event: Event) -> Result<Self, IllegalTransition> {
        use DeploymentState as S;
        let next = match (self, event) {
            (_, Event::Stop) => S::Stopped,
            (S::Stopped | S::Failed { .. }, Event::Resume) => S::Pending,
            (
                S::Pending | S::Placed { .. } | S::Running { .. } | S::Degraded { .. },
                Event::Resume,
            ) => self.clone(),
            (S::Pending, Event::Place(executor)) => S::Placed { executor },
            (S::Placed { executor }, Event::Started) => S::Running {
                executor: executor.clone(),
            },
            (S::Running { executor } | S::Degraded { executor, .. }, Event::Degrade(reason)) => {
                S::Degraded {
                    executor: executor.clone(),
                    reason,
                }
            }
            (S::Degraded { executor, .. }, Event::Recover) => S::Running {
                executor: executor.clone(),
            },
            (S::Placed { .. } | S::Running { .. } | S::Degraded { .. }, Event::Fail(reason)) => {
                S::Failed { reason }
            }
            // Not yet placed and cannot be (its graph no longer resolves, say).
            (S::Pending, Event::Fail(reason)) => S::Failed { reason },
            (S::Placed { .. } | S::Running { .. } | S::Degraded { .. }, Event::Lost) => S::Pending,
            (_, event) => {
                return Err(IllegalTransition {
                    from: self.status(),
                    event: event.name(),
                });
            }
        };
        Ok(next)
    }

    /// The state's word in the API and the control store.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Placed { .. } => "placed",
            Self::Running { .. } => "running",
            Self::Degraded { .. } => "degraded",
            Self::Failed { .. } => "failed",
            Self::Stopped => "paused",
        }
    }

    /// The executor it is assigned to or runs on, if any.
    pub fn executor(&self) -> Option<&ExecutorId> {
        match self {
            Self::Placed { executor }
            | Self::Running { executor }
            | Self::Degraded { executor, .. } => Some(executor),
            Self::Pending | Self::Failed { .. } | Self::Stopped => None,
        }
    }

    /// Whether its owner wants it running: every state but `stopped` and `failed`.
    pub fn wants_to_run(&self) -> bool {
        !matches!(self, Self::Stopped | Self::Failed { .. })
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        reason = "test code: a failed expectation is a failed test"
    )]

    use super::*;

    fn exec(id: &str) -> ExecutorId {
        ExecutorId::new(id).unwrap()
    }

    fn every_state() -> Vec<DeploymentState> {
        vec![
            DeploymentState::Pending,
            DeploymentState::Placed {
                executor: exec("a"),
            },
            DeploymentState::Running {
                executor: exec("a"),
            },
            DeploymentState::Degraded {
                executor: exec("a"),
                reason: "sink down".to_owned(),
            },
            DeploymentState::Failed {
                reason: "bad graph".to_owned(),
            },
            DeploymentState::Stopped,
        ]
    }

    fn every_event() -> Vec<Event> {
        vec![
            Event::Place(exec("b")),
            Event::Started,
            Event::Degrade("x".to_owned()),
            Event::Recover,
            Event::Fail("y".to_owned()),
            Event::Lost,
            Event::Stop,
            Event::Resume,
        ]
    }

    #[test]
    fn walks_the_happy_path_from_pending_to_stopped() {
        let state = DeploymentState::Pending;
        let state = state.apply(Event::Place(exec("e1"))).unwrap();
        assert_eq!(state.status(), "placed");
        assert_eq!(state.executor(), Some(&exec("e1")));
        let state = state.apply(Event::Started).unwrap();
        assert_eq!(
            state,
            DeploymentState::Running {
                executor: exec("e1")
            }
        );
        let state = state.apply(Event::Degrade("sink down".to_owned())).unwrap();
        assert_eq!(state.status(), "degraded");
        let state = state.apply(Event::Recover).unwrap();
        assert_eq!(state.status(), "running");
        let state = state.apply(Event::Stop).unwrap();
        assert_eq!(state, DeploymentState::Stopped);
        assert_eq!(state.status(), "paused");
        assert!(!state.wants_to_run());
    }

    #[test]
    fn lost_executor_sends_its_deployments_back_to_pending() {
        for state in [
            DeploymentState::Placed {
                executor: exec("a"),
            },
            DeploymentState::Running {
                executor: exec("a"),
            },
            DeploymentState::Degraded {
                executor: exec("a"),
                reason: String::new(),
            },
        ] {
            assert_eq!(state.apply(Event::Lost).unwrap(), DeploymentState::Pending);
        }
    }

    #[test]
    fn refuses_to_run_what_was_never_placed() {
        let error = DeploymentState::Pending.apply(Event::Started).unwrap_err();
        assert_eq!(
            error,
            IllegalTransition {
                from: "pending",
                event: "started"
            }
        );
        assert_eq!(
            error.to_string(),
            "a pending deployment cannot take the event started"
        );
    }

    #[test]
    fn refuses_to_place_twice_or_to_place_a_stopped_deployment() {
        let placed = DeploymentState::Placed {
            executor: exec("a"),
        };
        assert!(placed.apply(Event::Place(exec("b"))).is_err());
        let running = DeploymentState::Running {
            executor: exec("a"),
        };
        assert!(running.apply(Event::Place(exec("b"))).is_err());
        assert!(
            DeploymentState::Stopped
                .apply(Event::Place(exec("b")))
                .is_err()
        );
        assert!(DeploymentState::Stopped.apply(Event::Started).is_err());
        assert!(
            DeploymentState::Failed {
                reason: String::new()
            }
            .apply(Event::Started)
            .is_err()
        );
    }

    #[test]
    fn stop_is_allowed_from_every_state_and_resume_restarts_from_pending() {
        for state in every_state() {
            let stopped = state.apply(Event::Stop).unwrap();
            assert_eq!(stopped, DeploymentState::Stopped);
            assert_eq!(
                stopped.apply(Event::Resume).unwrap(),
                DeploymentState::Pending
            );
        }
    }

    #[test]
    fn every_refusal_leaves_a_typed_error_and_every_accepted_move_is_in_the_diagram() {
        // The whole table: (state, event) -> next status or refused. Spelled out so a changed
        // edge is a changed line here.
        let expected: &[(&str, &str, Option<&str>)] = &[
            ("pending", "place", Some("placed")),
            ("pending", "started", None),
            ("pending", "degrade", None),
            ("pending", "recover", None),
            ("pending", "fail", Some("failed")),
            ("pending", "lost", None),
            ("pending", "stop", Some("paused")),
            ("pending", "resume", Some("pending")),
            ("placed", "place", None),
            ("placed", "started", Some("running")),
            ("placed", "degrade", None),
            ("placed", "recover", None),
            ("placed", "fail", Some("failed")),
            ("placed", "lost", Some("pending")),
            ("placed", "stop", Some("paused")),
            ("placed", "resume", Some("placed")),
            ("running", "place", None),
            ("running", "started", None),
            ("running", "degrade", Some("degraded")),
            ("running", "recover", None),
            ("running", "fail", Some("failed")),
            ("running", "lost", Some("pending")),
            ("running", "stop", Some("paused")),
            ("running", "resume", Some("running")),
            ("degraded", "place", None),
            ("degraded", "started", None),
            ("degraded", "degrade", Some("degraded")),
            ("degraded", "recover", Some("running")),
            ("degraded", "fail", Some("failed")),
            ("degraded", "lost", Some("pending")),
            ("degraded", "stop", Some("paused")),
            ("degraded", "resume", Some("degraded")),
            ("failed", "place", None),
            ("failed", "started", None),
            ("failed", "degrade", None),
            ("failed", "recover", None),
            ("failed", "fail", None),
            ("failed", "lost", None),
            ("failed", "stop", Some("paused")),
            ("failed", "resume", Some("pending")),
            ("paused", "place", None),
            ("paused", "started", None),
            ("paused", "degrade", None),
            ("paused", "recover", None),
            ("paused", "fail", None),
            ("paused", "lost", None),
            ("paused", "stop", Some("paused")),
            ("paused", "resume", Some("pending")),
        ];
        let mut seen = 0;
        for state in every_state() {
            for event in every_event() {
                let name = event.name();
                let row = expected
                    .iter()
                    .find(|(s, e, _)| *s == state.status() && *e == name)
                    .unwrap();
                match (state.apply(event), row.2) {
                    (Ok(next), Some(status)) => assert_eq!(next.status(), status, "{row:?}"),
                    (Err(error), None) => {
                        assert_eq!(error.from, state.status());
                        assert_eq!(error.event, name);
                    }
                    (outcome, _) => panic!("{row:?}: got {outcome:?}"),
                }
                seen += 1;
            }
        }
        assert_eq!(seen, expected.len());
    }
}
