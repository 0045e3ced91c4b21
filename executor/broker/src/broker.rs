//! Starting and stopping the broker.

use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rmqtt::codec::types::QoS;
use rmqtt::context::ServerContext;
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use rmqtt::types::Id;
use tokio::task::JoinHandle;
use weir_api::TenantId;

use crate::hooks::{HOOKS, PRIORITY, ServiceKey, Walls};
use crate::shared::RoundRobin;
use crate::{BrokerConfig, BrokerError, DeviceDirectory};

/// The embedded MQTT broker, running on the tokio runtime that started it. See the crate
/// documentation for what a client sees.
pub struct EmbeddedBroker {
    local_addr: SocketAddr,
    /// The broker's state; shared with the hooks and emptied by [`Self::shutdown`].
    context: Arc<RwLock<Option<ServerContext>>>,
    /// The task accepting connections.
    server: Mutex<Option<JoinHandle<()>>>,
    service: Arc<ServiceKey>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBroker {
    /// Binds the listener and starts accepting MQTT connections on the current tokio runtime.
    ///
    /// Logins are checked by `directory` (devices) and by the broker itself (the service logins
    /// of [`Self::service_credentials`]). Must be called inside a tokio runtime; the broker runs
    /// until [`Self::shutdown`] (or until the value is dropped, which stops accepting but leaves
    /// open connections to end on their own).
    ///
    /// # Errors
    /// [`BrokerError::Config`] with every problem of `config`; [`BrokerError::Listen`] when the
    /// address cannot be bound; [`BrokerError::Random`] when the OS has no random source.
    pub async fn start(
        config: BrokerConfig,
        directory: Arc<dyn DeviceDirectory>,
    ) -> Result<Self, BrokerError> {
        config.check()?;
        let service =
            Arc::new(ServiceKey::random().map_err(|error| BrokerError::Random(error.to_string()))?);

        let max_sessions = isize::try_from(config.max_sessions)
            .map_err(|_| BrokerError::Config(vec!["max_sessions is too large".to_owned()]))?;
        let context = ServerContext::new()
            // The busy check measures the whole machine's CPU load and refuses logins when it
            // is high, from a task that never ends; weir bounds its own work instead.
            .busy_check_enable(false)
            .mqtt_max_sessions(max_sessions)
            .build()
            .await;
        *context.extends.shared_subscription_mut().await = Box::new(RoundRobin::default());

        let slot = Arc::new(RwLock::new(Some(context.clone())));
        let walls = Walls::new(
            directory,
            service.clone(),
            slot.clone(),
            config.max_sessions_per_tenant,
            config.handshake_timeout,
        );
        let register = context.extends.hook_mgr().register();
        for hook in HOOKS {
            register
                .add_priority(hook, PRIORITY, Box::new(walls.clone()))
                .await;
        }
        register.start().await;

        let listen_error = |error: rmqtt::Error| BrokerError::Listen {
            addr: config.listen,
            reason: error.to_string(),
        };
        let listener = listener(&config)?
            .bind()
            .and_then(|listener| listener.tcp())
            .map_err(listen_error)?;
        let local_addr = listener.local_addr().map_err(listen_error)?;
        let server = MqttServer::new(context)
            .listener_by_id(listener, local_addr.port())
            .build();
        let server = tokio::spawn(async move {
            if let Err(error) = server.run().await {
                tracing::error!(%error, "embedded MQTT broker stopped");
            }
        });
        tracing::info!(%local_addr, "embedded MQTT broker listening");

        Ok(Self {
            local_addr,
            context: slot,
            server: Mutex::new(Some(server)),
            service,
        })
    }

    /// The address the listener is bound to (the picked port when the configured port was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `(user name, password)` with which weir's own clients (deployments' MQTT sources and
    /// sinks) log in as `tenant`: user name `$service@<tenant>`, password the hex HMAC-SHA256
    /// of the tenant under a random key made at [`Self::start`]. Valid until the process
    /// ends; such a session has exactly the walls of a device of that tenant. Its client id
    /// must be `<name>@<tenant>` like any other (see [`tenant_client_id`](crate::tenant_client_id)).
    pub fn service_credentials(&self, tenant: &TenantId) -> (String, String) {
        self.service.credentials(tenant)
    }

    /// Stops the broker: closes the listener, then disconnects every client and ends every
    /// session (sessions are in memory only; a client reconnecting to a new broker gets
    /// Session Present 0). Returns when the listener is closed, so the address can be bound
    /// again at once.
    pub async fn shutdown(&self) {
        let server = match self.server.lock() {
            Ok(mut server) => server.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(server) = server {
            server.abort();
            // Cancelled is the expected outcome; the listener is closed once the task is gone.
            if let Err(error) = server.await
                && !error.is_cancelled()
            {
                tracing::error!(%error, "embedded MQTT broker task failed");
            }
        }
        let context = match self.context.write() {
            Ok(mut context) => context.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(context) = context else {
            return;
        };
        let sessions: Vec<Id> = {
            let shared = context.extends.shared().await;
            shared
                .iter()
                .filter_map(|entry| entry.session())
                .map(|session| session.id.clone())
                .collect()
        };
        for id in sessions {
            let shared = context.extends.shared().await;
            match shared.entry(id.clone()).try_lock().await {
                Ok(mut entry) => {
                    // Clean start and an administrative kick: the session ends with its
                    // connection (DISCONNECT to the client) instead of being kept.
                    if let Err(error) = entry.kick(true, true, true).await {
                        tracing::debug!(client_id = %id.client_id, %error, "MQTT session kick failed");
                    }
                }
                Err(error) => {
                    tracing::debug!(client_id = %id.client_id, %error, "MQTT session busy at shutdown");
                }
            }
        }
        tracing::info!(local_addr = %self.local_addr, "embedded MQTT broker stopped");
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        let server = match self.server.get_mut() {
            Ok(server) => server.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(server) = server {
            server.abort();
        }
    }
}

/// The listener with every rmqtt-net default set explicitly (connector-pitfalls.md: its
/// defaults bind 0.0.0.0, allow anonymous logins and leave several bounds unlimited).
fn listener(config: &BrokerConfig) -> Result<Builder, BrokerError> {
    let inflight = NonZeroU16::new(config.max_inflight)
        .ok_or_else(|| BrokerError::Config(vec!["max_inflight must be greater than 0".into()]))?;
    Ok(Builder::new()
        .name("weir-mqtt")
        .laddr(config.listen)
        .backlog(512)
        .nodelay(true)
        // Rebinding the address right after a shutdown must not wait for TIME_WAIT sockets.
        .reuseaddr(Some(true))
        .reuseport(Some(false))
        .tcp_keepalive(true)
        // rmqtt-net uses it only as the queue bound of connections waiting for a handshake
        // slot; sessions are bounded by `max_sessions` in the context.
        .max_connections(config.max_sessions)
        .max_handshaking_limit(config.max_handshakes)
        .max_packet_size(config.max_packet_bytes)
        .allow_anonymous(false)
        // Keep alive 0 would let a dead connection hold its session forever.
        .allow_zero_keepalive(false)
        .min_keepalive(0)
        .max_keepalive(u16::MAX)
        // A connection is closed after 1.5 keep-alive periods without a packet (MQTT 5.0
        // section 3.1.2.10): rmqtt waits keepalive * backoff * 2.
        .keepalive_backoff(0.75)
        .max_inflight(inflight)
        .handshake_timeout(config.handshake_timeout)
        .send_timeout(config.send_timeout)
        .max_mqueue_len(config.max_queued_per_client)
        // No pacing of deliveries beyond the in-flight window.
        .mqueue_rate_limit(NonZeroU32::MAX, Duration::from_secs(1))
        .max_clientid_len(config.max_client_id_bytes)
        // QoS 0 and 1, as weir's connectors use them (azure-compat 4.1).
        .max_qos_allowed(QoS::AtLeastOnce)
        .max_topic_levels(config.max_topic_levels)
        .session_expiry_interval(config.session_expiry)
        .max_session_expiry_interval(config.session_expiry)
        // No resend on a live connection: MQTT 5.0 resends unacknowledged messages only on
        // reconnect (section 4.4), and a slow manual ack would otherwise see duplicates
        // (connector-pitfalls.md, "In-session resend").
        .message_retry_interval(Duration::ZERO)
        .message_expiry_interval(config.message_expiry.unwrap_or(Duration::ZERO))
        .max_subscriptions(config.max_subscriptions_per_client)
        .max_topic_aliases(config.max_topic_aliases)
        .limit_subscription(false)
        .proxy_protocol(false)
        .proxy_protocol_timeout(Duration::from_secs(5))
        .tls_cross_certificate(false)
        .tls_cert(None::<String>)
        .tls_key(None::<String>)
        .tls_client_ca_certs(None::<String>)
        .cert_cn_as_username(false)
        .cert_subject_dn_as_username(false)
        .collect_cert_info(false)
        // QUIC only (not built); set so no default is left implicit.
        .idle_timeout(Duration::from_secs(90)))
}
