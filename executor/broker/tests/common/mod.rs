//! Shared by the broker tests: a device directory (a map, which is all the directory's contract
//! is), a broker on a free loopback port, and rumqttc v5 clients whose event loops run in their
//! own tasks (rumqttc's poll is not cancel-safe).

#![allow(
    dead_code,
    unreachable_pub,
    missing_debug_implementations,
    reason = "test helpers, each test binary uses a part"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weir_api::TenantId;
use weir_broker::{BrokerConfig, DeviceDirectory, EmbeddedBroker};

/// How long any single expected event may take.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

/// Device logins: user name → (password, tenant).
#[derive(Debug, Default)]
pub struct Directory {
    devices: HashMap<String, (Vec<u8>, TenantId)>,
}

impl Directory {
    pub fn with(devices: &[(&str, &str, &str)]) -> Arc<Self> {
        Arc::new(Self {
            devices: devices
                .iter()
                .map(|(user, password, owner)| {
                    (
                        (*user).to_owned(),
                        (password.as_bytes().to_vec(), tenant(owner)),
                    )
                })
                .collect(),
        })
    }
}

#[async_trait]
impl DeviceDirectory for Directory {
    async fn verify(&self, username: &str, password: &[u8]) -> Result<Option<TenantId>, String> {
        Ok(self
            .devices
            .get(username)
            .filter(|(expected, _)| expected.as_slice() == password)
            .map(|(_, owner)| owner.clone()))
    }
}

/// The devices most tests use: `d1@acme` and `d2@acme` of tenant `acme`, `d1@beta` and
/// `d2@beta` of tenant `beta`, and `liar@acme`, which the directory says belongs to `beta`.
pub fn devices() -> Arc<Directory> {
    Directory::with(&[
        ("d1@acme", "pw-a1", "acme"),
        ("d2@acme", "pw-a2", "acme"),
        ("d1@beta", "pw-b1", "beta"),
        ("d2@beta", "pw-b2", "beta"),
        ("liar@acme", "pw-liar", "beta"),
    ])
}

pub fn config() -> BrokerConfig {
    BrokerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..BrokerConfig::default()
    }
}

pub async fn broker() -> EmbeddedBroker {
    EmbeddedBroker::start(config(), devices()).await.unwrap()
}

/// MQTT 5 options for `client_id` logging in as `user`/`password` (None: anonymous).
pub fn options(addr: SocketAddr, client_id: &str, login: Option<(&str, &str)>) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(Some(2 * 1024 * 1024));
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    options
}

/// A connected client and everything it received, sorted by kind.
pub struct Client {
    pub client: AsyncClient,
    pub connack: ConnAck,
    events: mpsc::Receiver<Result<Event, String>>,
    /// Messages received and not yet taken.
    pub publishes: Vec<Publish>,
    pub pubacks: Vec<PubAck>,
    pub subacks: Vec<Vec<SubscribeReasonCode>>,
    /// Set once the connection ended (the error rumqttc reported).
    pub closed: Option<String>,
    task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects and waits for the CONNACK. `Err` carries the refusal code, or the error text.
pub async fn try_connect(
    options: MqttOptions,
) -> Result<Client, Result<ConnectReturnCode, String>> {
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    // Bounded like everything else; a test that stops reading stalls only its own client.
    let (sender, mut events) = mpsc::channel(4096);
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(event) => {
                    if sender.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    // No reconnect: a test that wants one connects again.
                    let _receiver_gone = sender
                        .send(Err(match error {
                            ConnectionError::ConnectionRefused(code) => format!("refused:{code:?}"),
                            other => other.to_string(),
                        }))
                        .await;
                    return;
                }
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Ok(Event::Incoming(Packet::ConnAck(connack))))) => {
                return Ok(Client {
                    client,
                    connack,
                    events,
                    publishes: Vec::new(),
                    pubacks: Vec::new(),
                    subacks: Vec::new(),
                    closed: None,
                    task,
                });
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(error))) => {
                task.abort();
                return Err(refusal(&error));
            }
            Ok(None) => return Err(Err("event loop ended".to_owned())),
            Err(_) => return Err(Err("no CONNACK in time".to_owned())),
        }
    }
}

fn refusal(error: &str) -> Result<ConnectReturnCode, String> {
    use ConnectReturnCode::*;
    let codes = [
        NotAuthorized,
        BadUserNamePassword,
        ClientIdentifierNotValid,
        RetainNotSupported,
        ServerUnavailable,
        ServiceUnavailable,
        QuotaExceeded,
        BadClientId,
    ];
    codes
        .into_iter()
        .find(|code| error == format!("refused:{code:?}"))
        .ok_or_else(|| error.to_owned())
}

pub async fn connect(options: MqttOptions) -> Client {
    let id = options.client_id();
    match try_connect(options).await {
        Ok(client) => client,
        Err(error) => panic!("{id} could not connect: {error:?}"),
    }
}

/// `connect` with a device login of the shared directory.
pub async fn device(addr: SocketAddr, client_id: &str, user: &str, password: &str) -> Client {
    connect(options(addr, client_id, Some((user, password)))).await
}

impl Client {
    /// Takes one event (waiting until `deadline`); false when none came or the connection
    /// ended.
    async fn pump(&mut self, deadline: Instant) -> bool {
        if self.closed.is_some() {
            return false;
        }
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Ok(Some(Ok(Event::Incoming(packet)))) => {
                match packet {
                    Packet::Publish(publish) => self.publishes.push(publish),
                    Packet::PubAck(puback) => self.pubacks.push(puback),
                    Packet::SubAck(suback) => self.subacks.push(suback.return_codes),
                    Packet::Disconnect(disconnect) => {
                        self.closed = Some(format!("DISCONNECT {:?}", disconnect.reason_code));
                    }
                    _ => {}
                }
                true
            }
            Ok(Some(Ok(Event::Outgoing(_)))) => true,
            Ok(Some(Err(error))) => {
                self.closed = Some(error);
                false
            }
            Ok(None) => {
                self.closed = Some("event loop ended".to_owned());
                false
            }
            Err(_) => false,
        }
    }

    /// Pumps events until `take` finds what it wants, or panics after [`PATIENCE`].
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        mut take: impl FnMut(&mut Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(found) = take(self) {
                return found;
            }
            if !self.pump(deadline).await {
                if let Some(found) = take(self) {
                    return found;
                }
                panic!(
                    "{} waited for {what} in vain (closed: {:?}); received: {:?}",
                    self.connack_id(),
                    self.closed,
                    self.publishes
                );
            }
        }
    }

    fn connack_id(&self) -> String {
        format!("client (session present {})", self.connack.session_present)
    }

    /// Waits until the connection ends; returns why.
    pub async fn wait_closed(&mut self) -> String {
        self.wait_for("the connection to end", |client| client.closed.clone())
            .await
    }

    /// SUBSCRIBE one filter; returns its SUBACK reason.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubscribeReasonCode {
        self.client.subscribe(filter, qos).await.unwrap();
        let mut codes = self
            .wait_for(&format!("SUBACK of {filter}"), |client| {
                (!client.subacks.is_empty()).then(|| client.subacks.remove(0))
            })
            .await;
        assert_eq!(codes.len(), 1, "one reason per filter");
        codes.remove(0)
    }

    /// PUBLISH at QoS 1 and wait for its PUBACK.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &str,
        properties: PublishProperties,
    ) -> PubAck {
        self.publish_with(topic, payload, false, properties).await
    }

    pub async fn publish_with(
        &mut self,
        topic: &str,
        payload: &str,
        retain: bool,
        properties: PublishProperties,
    ) -> PubAck {
        self.client
            .publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                retain,
                Bytes::copy_from_slice(payload.as_bytes()),
                properties,
            )
            .await
            .unwrap();
        self.wait_for(&format!("PUBACK of {topic}"), |client| {
            (!client.pubacks.is_empty()).then(|| client.pubacks.remove(0))
        })
        .await
    }

    /// Waits for a message whose payload is `payload`, and returns it.
    pub async fn receive(&mut self, payload: &str) -> Publish {
        self.wait_for(&format!("message {payload:?}"), |client| {
            let index = client
                .publishes
                .iter()
                .position(|publish| publish.payload.as_ref() == payload.as_bytes())?;
            Some(client.publishes.remove(index))
        })
        .await
    }

    /// Payloads received so far, as text.
    pub fn payloads(&self) -> Vec<String> {
        self.publishes
            .iter()
            .map(|publish| String::from_utf8_lossy(&publish.payload).into_owned())
            .collect()
    }

    /// Ends the TCP connection without DISCONNECT (as a crashed device would): the will is
    /// published and a persistent session is kept.
    pub fn drop_connection(self) {
        drop(self);
    }
}

pub fn topic(publish: &Publish) -> String {
    String::from_utf8_lossy(&publish.topic).into_owned()
}

pub fn props() -> PublishProperties {
    PublishProperties::default()
}
