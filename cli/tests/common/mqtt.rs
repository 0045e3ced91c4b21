//! A plain MQTT v5 client for tests (rumqttc), shared by the test binaries that drive Mosquitto.
#![allow(dead_code, reason = "not every test binary uses every helper")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// A plain MQTT v5 client with its event loop in a task: what it receives (topic, payload),
/// and how many of its QoS 1 publishes the broker acknowledged.
pub struct Mqtt {
    pub client: AsyncClient,
    pub received: Arc<Mutex<Vec<(String, String)>>>,
    pub acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mqtt {
    pub async fn connect(address: &str, id: &str, filter: Option<&str>) -> Self {
        let (host, port) = address.rsplit_once(':').unwrap();
        let mut options = MqttOptions::new(id, host, port.parse().unwrap());
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        let received = Arc::new(Mutex::new(Vec::new()));
        let acked = Arc::new(AtomicU64::new(0));
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        if let Some(filter) = filter {
            client
                .subscribe(filter.to_owned(), QoS::AtLeastOnce)
                .await
                .unwrap();
        } else if let Some(tx) = subscribed_tx.take() {
            tx.send(()).ok();
        }
        let (into, acks) = (received.clone(), acked.clone());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        into.lock().unwrap().push((
                            String::from_utf8(p.topic.to_vec()).unwrap(),
                            String::from_utf8(p.payload.to_vec()).unwrap(),
                        ));
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acks.fetch_add(1, Ordering::AcqRel);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            tx.send(()).ok();
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("subscribed within 10 s")
            .unwrap();
        Self {
            client,
            received,
            acked,
            task,
        }
    }

    pub fn payloads_on(&self, topic: &str) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p.clone())
            .collect()
    }
}
