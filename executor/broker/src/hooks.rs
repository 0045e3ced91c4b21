//! The tenant walls applied at rmqtt's hook points.
//!
//! rmqtt's ACL hooks fail open (no answer = allowed) and its will path skips the publish ACL
//! (connector-pitfalls.md, "rmqtt 0.24"), so every hook here answers every case explicitly and
//! stops the chain. The tenant of a session is always the one its login named and the login
//! check confirmed (`<name>@<tenant>`); a session without one is refused everything.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use rmqtt::codec::v5::{PublishAckReason, SubscribeAckReason};
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::session::Session;
use rmqtt::types::{
    AuthResult, ConnectInfo, LastWill, Publish, PublishAclResult, PublishResult,
    SubscribeAclResult, TopicFilter, TopicName,
};
use sha2::Sha256;
use weir_api::TenantId;

use crate::DeviceDirectory;
use crate::walls::{
    self, Delivery, REFUSED, SERVICE_USER, client_id_allowed, is_client_topic, mount,
    tenant_of_username, within,
};

/// The hook points the walls answer. Every one of them is registered; the others carry no
/// topic or login.
pub(crate) const HOOKS: [Type; 8] = [
    Type::ClientAuthenticate,
    Type::ClientSubscribe,
    Type::ClientUnsubscribe,
    Type::ClientSubscribeCheckAcl,
    Type::MessagePublish,
    Type::MessagePublishCheckAcl,
    Type::MessageExpiryCheck,
    Type::MessageDelivered,
];

/// Priority of the walls' handlers: above anything else that might be registered.
pub(crate) const PRIORITY: u32 = u32::MAX;

/// The reason string of a PUBACK refusing a retained message.
pub(crate) const RETAIN_REFUSED: &str =
    "retained messages are not supported by this broker (CONNACK Retain Available is 0)";

/// The reason string of a PUBACK refusing a topic outside the tenant's space.
pub(crate) const TOPIC_REFUSED: &str = "topic outside the tenant's topic space";

/// The secret behind the service logins ([`crate::EmbeddedBroker::service_credentials`]):
/// a random key made at start, so the logins last as long as the process.
pub(crate) struct ServiceKey([u8; 32]);

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceKey(<redacted>)")
    }
}

impl ServiceKey {
    /// A key from the operating system's random source.
    pub(crate) fn random() -> Result<Self, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(Self(key))
    }

    fn mac(&self, tenant: &TenantId) -> Hmac<Sha256> {
        // HMAC takes keys of any length (RFC 2104), so this never fails.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts a 32-byte key"));
        mac.update(b"weir-broker service login\0");
        mac.update(tenant.as_str().as_bytes());
        mac
    }

    /// `(user name, password)` of `tenant`'s service login.
    pub(crate) fn credentials(&self, tenant: &TenantId) -> (String, String) {
        (
            service_username(tenant),
            hex::encode(self.mac(tenant).finalize().into_bytes()),
        )
    }

    /// Whether `password` is `tenant`'s service password (compared in constant time).
    fn verify(&self, tenant: &TenantId, password: &[u8]) -> bool {
        hex::decode(password).is_ok_and(|tag| self.mac(tenant).verify_slice(&tag).is_ok())
    }
}

/// `$service@<tenant>`.
pub(crate) fn service_username(tenant: &TenantId) -> String {
    format!("{SERVICE_USER}@{tenant}")
}

/// The walls, registered once per hook point (so cheap to clone).
#[derive(Clone)]
pub(crate) struct Walls {
    inner: Arc<WallsInner>,
}

struct WallsInner {
    directory: Arc<dyn DeviceDirectory>,
    service: Arc<ServiceKey>,
    /// The broker, for counting a tenant's sessions. Emptied at shutdown, which also breaks the
    /// cycle broker → hooks → broker.
    broker: Arc<RwLock<Option<ServerContext>>>,
    max_sessions_per_tenant: usize,
    verify_timeout: Duration,
}

impl Walls {
    pub(crate) fn new(
        directory: Arc<dyn DeviceDirectory>,
        service: Arc<ServiceKey>,
        broker: Arc<RwLock<Option<ServerContext>>>,
        max_sessions_per_tenant: usize,
        verify_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(WallsInner {
                directory,
                service,
                broker,
                max_sessions_per_tenant,
                verify_timeout,
            }),
        }
    }
}

/// The tenant of a session: the one its user name names, which the login check confirmed.
fn session_tenant(session: &Session) -> Option<TenantId> {
    session
        .id
        .username
        .as_ref()
        .and_then(|username| tenant_of_username(username))
}

fn will_topic<'a>(will: &'a LastWill<'_>) -> &'a str {
    match will {
        LastWill::V3(will) => &will.topic,
        LastWill::V5(will) => &will.topic,
    }
}

fn with_topic(publish: &Publish, topic: &str) -> Publish {
    let mut publish = publish.clone();
    publish.topic = TopicName::from(topic);
    publish
}

impl WallsInner {
    /// The login check. Cheap checks that need no secret come first, so a malformed CONNECT
    /// never reaches the directory.
    async fn authenticate(&self, info: &ConnectInfo) -> AuthResult {
        let client_id: &str = info.client_id();
        let refuse = |why: &str| {
            tracing::info!(client_id, why, "MQTT login refused");
            AuthResult::NotAuthorized
        };
        let Some(username) = info.username() else {
            return refuse("no user name: anonymous clients are not allowed");
        };
        let username: &str = username;
        let Some(tenant) = tenant_of_username(username) else {
            tracing::info!(
                client_id,
                username,
                "MQTT login refused: user name names no tenant"
            );
            return AuthResult::BadUsernameOrPassword;
        };
        let Some(password) = info.password() else {
            tracing::info!(client_id, username, "MQTT login refused: no password");
            return AuthResult::BadUsernameOrPassword;
        };
        if !client_id_allowed(client_id, &tenant) {
            return refuse("the client id must be <name>@<tenant of the user name>");
        }
        if let Some(will) = info.last_will() {
            if !is_client_topic(will_topic(&will)) {
                return refuse("will topic is empty or starts with '$'");
            }
            if will.retain() {
                return refuse("retained will messages are not supported");
            }
        }

        // weir's own clients (`weir.…@<tenant>`, `$service…`) are not for devices to take:
        // a device of the tenant could otherwise knock a deployment's session off.
        if username != service_username(&tenant)
            && (client_id.starts_with("weir.") || client_id.starts_with('$'))
        {
            return refuse("client ids starting with `weir.` or `$` are weir's own");
        }
        let verified = if username == service_username(&tenant) {
            self.service
                .verify(&tenant, password)
                .then(|| tenant.clone())
        } else {
            match tokio::time::timeout(
                self.verify_timeout,
                self.directory.verify(username, password),
            )
            .await
            {
                Ok(Ok(verified)) => verified,
                Ok(Err(error)) => {
                    tracing::warn!(client_id, username, %error, "device directory failed");
                    return AuthResult::NotAuthorized;
                }
                Err(_) => {
                    tracing::warn!(client_id, username, "device directory timed out");
                    return AuthResult::NotAuthorized;
                }
            }
        };
        let Some(verified) = verified else {
            tracing::info!(
                client_id,
                username,
                "MQTT login refused: wrong user name or password"
            );
            return AuthResult::BadUsernameOrPassword;
        };
        if verified != tenant {
            tracing::warn!(
                client_id,
                username,
                directory_tenant = %verified,
                "device directory returned a tenant the user name does not name; refused"
            );
            return AuthResult::NotAuthorized;
        }

        let sessions = self.tenant_sessions(&tenant, client_id).await;
        if sessions >= self.max_sessions_per_tenant {
            tracing::warn!(
                client_id,
                tenant = %tenant,
                sessions,
                "MQTT login refused: the tenant has its maximum of sessions"
            );
            return AuthResult::NotAuthorized;
        }
        AuthResult::Allow(false, None)
    }

    /// Sessions of `tenant` other than `client_id`'s (which the new connection takes over),
    /// connected or kept for a reconnect. Counted afresh at each login: no counter to drift.
    /// `usize::MAX` once the broker shut down.
    async fn tenant_sessions(&self, tenant: &TenantId, client_id: &str) -> usize {
        let broker = match self.broker.read() {
            Ok(broker) => broker.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let Some(broker) = broker else {
            return usize::MAX;
        };
        let shared = broker.extends.shared().await;
        shared
            .iter()
            .filter_map(|entry| entry.session())
            .filter(|session| {
                let id: &str = &session.id.client_id;
                id != client_id && session_tenant(session).as_ref() == Some(tenant)
            })
            .count()
    }
}

#[async_trait]
#[allow(
    elided_lifetimes_in_paths,
    reason = "async_trait needs the signature exactly as rmqtt's trait writes it"
)]
impl Handler for Walls {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(info) => (
                false,
                Some(HookResult::AuthResult(self.inner.authenticate(info).await)),
            ),

            // Filters as the client wrote them (`$share/<group>/` already removed, the group
            // kept in the options) are mounted into the tenant's space; a filter no client may
            // write becomes REFUSED, which the ACL below refuses.
            Parameter::ClientSubscribe(session, subscribe) => {
                let filter = match session_tenant(session) {
                    Some(tenant) => mount(&tenant, &subscribe.topic_filter),
                    None => REFUSED.to_owned(),
                };
                (
                    false,
                    Some(HookResult::TopicFilter(Some(TopicFilter::from(filter)))),
                )
            }
            Parameter::ClientUnsubscribe(session, unsubscribe) => {
                let filter = match session_tenant(session) {
                    Some(tenant) => mount(&tenant, &unsubscribe.topic_filter),
                    None => REFUSED.to_owned(),
                };
                (
                    false,
                    Some(HookResult::TopicFilter(Some(TopicFilter::from(filter)))),
                )
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let allowed = session_tenant(session)
                    .is_some_and(|tenant| within(&tenant, &subscribe.topic_filter));
                let result = if allowed {
                    SubscribeAclResult::new_success(subscribe.opts.qos(), None)
                } else {
                    tracing::debug!(
                        client_id = %session.id.client_id,
                        filter = %subscribe.topic_filter,
                        "MQTT subscription refused"
                    );
                    SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized)
                };
                (false, Some(HookResult::SubscribeAclResult(result)))
            }

            // Every publish, will messages included (they skip the ACL), is mounted into the
            // publishing session's space. A topic no client may write, or a publish without a
            // session (none exists in this broker: no plugins), goes to REFUSED, where no
            // subscription can be.
            Parameter::MessagePublish(session, _from, publish) => {
                let topic = match session.and_then(session_tenant) {
                    Some(tenant) => mount(&tenant, &publish.topic),
                    None => REFUSED.to_owned(),
                };
                (
                    false,
                    Some(HookResult::Publish(with_topic(publish, &topic))),
                )
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let allowed =
                    session_tenant(session).is_some_and(|tenant| within(&tenant, &publish.topic));
                let result = if !allowed {
                    tracing::debug!(
                        client_id = %session.id.client_id,
                        topic = %publish.topic,
                        "MQTT publish refused"
                    );
                    PublishAclResult::rejected(false, Some(TOPIC_REFUSED.into()))
                } else if publish.retain {
                    PublishAclResult(PublishResult::reason_code(
                        PublishAckReason::ImplementationSpecificError,
                        Some(RETAIN_REFUSED.into()),
                        false,
                    ))
                } else {
                    PublishAclResult::allow()
                };
                (false, Some(HookResult::PublishAclResult(result)))
            }

            // Delivery: the last check before a message is written to a subscriber. A message
            // outside the subscriber's space is dropped here (reported as expired); none
            // should ever arrive, as every subscription is mounted.
            Parameter::MessageExpiryCheck(session, _from, publish) => {
                match session_tenant(session).map(|tenant| walls::delivery(&tenant, &publish.topic))
                {
                    Some(Delivery::Unmount(_) | Delivery::AsIs) => (true, acc),
                    Some(Delivery::Refuse) | None => {
                        tracing::error!(
                            client_id = %session.id.client_id,
                            topic = %publish.topic,
                            "MQTT delivery outside the subscriber's tenant space dropped"
                        );
                        (false, Some(HookResult::MessageExpiry))
                    }
                }
            }
            Parameter::MessageDelivered(session, _from, publish) => {
                match session_tenant(session).map(|tenant| walls::delivery(&tenant, &publish.topic))
                {
                    Some(Delivery::Unmount(topic)) => {
                        (false, Some(HookResult::Publish(with_topic(publish, topic))))
                    }
                    Some(Delivery::AsIs) => (false, None),
                    Some(Delivery::Refuse) | None => {
                        // Unreachable: the expiry check above dropped it. Should it ever come
                        // here, nothing of it leaves: no topic, payload or properties.
                        let mut scrubbed = with_topic(publish, REFUSED);
                        scrubbed.payload = Default::default();
                        scrubbed.properties = None;
                        (false, Some(HookResult::Publish(scrubbed)))
                    }
                }
            }

            _ => (true, acc),
        }
    }
}
