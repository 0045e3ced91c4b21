//! What every librdkafka client of a connector shares: the egress wall on every broker address
//! librdkafka resolves, and the connection status from its errors and broker states.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::BrokerAddr;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientContext, TopicPartitionList};
use weir_api::TenantId;
use weir_api::egress::{Egress, EgressError, parse_ip};

use super::offsets::Ledger;
use crate::status::{ConnectionState, ConnectionStatus};

/// How long a refused broker address keeps the status at `Retrying`: librdkafka resolves again
/// on every connection attempt (at most every `reconnect.backoff.max.ms`, 10 s), so a refusal
/// still in force is recorded again well within this.
const REFUSAL_MEMORY: Duration = Duration::from_secs(30);

/// Most refused addresses remembered (a broker's metadata decides how many there are).
const MAX_REFUSALS: usize = 64;

/// What librdkafka resolves instead of a refused broker: a numeric host that never reaches the
/// network and a service name that does not exist, so resolving fails at once
/// (`EAI_SERVICE`) and librdkafka retries with backoff.
const REFUSED_HOST: &str = "0.0.0.0";
const REFUSED_SERVICE: &str = "weir-egress-refused";

/// The client context of every consumer, producer and admin client of a `kafka` endpoint
/// (clones share one state).
#[derive(Debug, Clone)]
pub(crate) struct KafkaContext {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    egress: Egress,
    status: Arc<ConnectionStatus>,
    client_id: String,
    /// Broker addresses (`host:port`) the egress rule refused, with why and when.
    refusals: Mutex<BTreeMap<String, (String, Instant)>>,
    /// The source's offsets, kept in step with the group's assignment (consumers only).
    ledger: Option<Arc<Mutex<Ledger>>>,
    /// A sink's deliveries are failing: broker statistics alone do not make it connected.
    failing: AtomicBool,
    /// librdkafka reported a fatal error (an idempotent producer that can produce no more).
    fatal: AtomicBool,
    /// Turns through a name's addresses, one per connection attempt (librdkafka gets one
    /// checked address at a time, so a name whose first address does not answer is still
    /// reached through the others).
    rotation: AtomicUsize,
}

impl KafkaContext {
    /// A context reporting to `status`, checking brokers against `egress`.
    pub(crate) fn new(
        egress: Egress,
        status: Arc<ConnectionStatus>,
        client_id: &str,
        ledger: Option<Arc<Mutex<Ledger>>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                egress,
                status,
                client_id: client_id.to_owned(),
                refusals: Mutex::new(BTreeMap::new()),
                ledger,
                failing: AtomicBool::new(false),
                fatal: AtomicBool::new(false),
                rotation: AtomicUsize::new(0),
            }),
        }
    }

    /// The address librdkafka may connect to for `host:port`, checked by the egress rule:
    /// every address the name resolves to must be allowed (a name with one public and one
    /// private address is refused, as [`Egress::resolve`] does). The result is an address
    /// literal, so librdkafka's own lookup cannot resolve to anything else.
    fn check(&self, host: &str, port: &str) -> Result<IpAddr, EgressError> {
        self.inner.egress.check_host(host)?;
        let resolve_error = |source: std::io::Error| EgressError::Resolve {
            host: host.to_owned(),
            source,
        };
        let port: u16 = port.parse().map_err(|_| {
            resolve_error(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the port is not a number",
            ))
        })?;
        let addresses: Vec<SocketAddr> = match parse_ip(host) {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => (host, port)
                .to_socket_addrs()
                .map_err(resolve_error)?
                .collect(),
        };
        if addresses
            .iter()
            .any(|a| !self.inner.egress.allows(host, a.ip()))
        {
            return Err(EgressError::Private {
                host: host.to_owned(),
            });
        }
        let turn = self.inner.rotation.fetch_add(1, Ordering::Relaxed);
        addresses
            .get(turn % addresses.len().max(1))
            .map(SocketAddr::ip)
            .ok_or_else(|| {
                resolve_error(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no address",
                ))
            })
    }

    fn refusals(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (String, Instant)>> {
        self.inner
            .refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest egress refusal still in force.
    fn current_refusal(&self) -> Option<String> {
        let mut refusals = self.refusals();
        refusals.retain(|_, (_, at)| at.elapsed() < REFUSAL_MEMORY);
        refusals
            .values()
            .max_by_key(|(_, at)| *at)
            .map(|(why, _)| why.clone())
    }

    /// Whether librdkafka reported a fatal error since the last call (the client must be
    /// replaced).
    pub(crate) fn take_fatal(&self) -> bool {
        self.inner.fatal.swap(false, Ordering::AcqRel)
    }

    /// Records that a broker answered, so the connection is up unless an address was refused.
    pub(crate) fn connected(&self) {
        if self.current_refusal().is_none() {
            self.inner.status.set(ConnectionState::Connected);
        }
    }

    /// Records that the client cannot do its work although brokers answer (`true`: a sink's
    /// deliveries fail, a source's topic does not exist; the status stays `Retrying` until it
    /// is cleared) or that it does it again (`false`: connected).
    pub(crate) fn set_failing(&self, failing: bool) {
        let was = self.inner.failing.swap(failing, Ordering::AcqRel);
        if was && !failing {
            self.connected();
        }
    }

    /// Whether [`KafkaContext::set_failing`] holds the status at `Retrying`.
    pub(crate) fn is_failing(&self) -> bool {
        self.inner.failing.load(Ordering::Acquire)
    }

    /// Records a connection problem (the egress refusal wins: it is the one to fix).
    pub(crate) fn retrying(&self, why: &str) {
        match self.current_refusal() {
            Some(refusal) => self.inner.status.retrying(refusal),
            None => self.inner.status.retrying(why),
        }
    }
}

/// The broker states of librdkafka's statistics (`statistics.interval.ms`): only what the
/// status needs.
#[derive(serde::Deserialize)]
struct Statistics {
    #[serde(default)]
    brokers: BTreeMap<String, BrokerStatistics>,
}

#[derive(serde::Deserialize)]
struct BrokerStatistics {
    #[serde(default)]
    state: String,
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let client = self.inner.client_id.as_str();
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::warn!(target: "librdkafka", client, facility, "{message}");
            }
            RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => {
                tracing::info!(target: "librdkafka", client, facility, "{message}");
            }
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", client, facility, "{message}");
            }
        }
    }

    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(statistics) = serde_json::from_slice::<Statistics>(statistics) else {
            return;
        };
        if statistics.brokers.values().any(|b| b.state == "UP")
            && !self.inner.failing.load(Ordering::Acquire)
        {
            self.connected();
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(client = self.inner.client_id, %error, reason, "kafka client error");
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.inner.fatal.store(true, Ordering::Release);
        }
        self.retrying(reason);
    }

    fn rewrite_broker_addr(&self, addr: BrokerAddr) -> BrokerAddr {
        let key = format!("{}:{}", addr.host, addr.port);
        match self.check(&addr.host, &addr.port) {
            Ok(ip) => {
                self.refusals().remove(&key);
                BrokerAddr {
                    host: ip.to_string(),
                    port: addr.port,
                }
            }
            Err(error) => {
                let why = error.to_string();
                tracing::info!(client = self.inner.client_id, broker = key, %error, "egress refused a kafka broker");
                {
                    let mut refusals = self.refusals();
                    if refusals.len() >= MAX_REFUSALS
                        && !refusals.contains_key(&key)
                        && let Some(oldest) = refusals
                            .iter()
                            .min_by_key(|(_, (_, at))| *at)
                            .map(|(k, _)| k.clone())
                    {
                        refusals.remove(&oldest);
                    }
                    refusals.insert(key, (why.clone(), Instant::now()));
                }
                self.inner.status.retrying(why);
                BrokerAddr {
                    host: REFUSED_HOST.to_owned(),
                    port: REFUSED_SERVICE.to_owned(),
                }
            }
        }
    }
}

impl ConsumerContext for KafkaContext {
    fn pre_rebalance(&self, rebalance: &Rebalance<'_>) {
        let Some(ledger) = &self.inner.ledger else {
            return;
        };
        let mut ledger = ledger.lock().unwrap_or_else(PoisonError::into_inner);
        match rebalance {
            Rebalance::Assign(partitions) => {
                let assigned = partition_ids(partitions);
                for (topic, partition) in &assigned {
                    ledger.assign(topic, *partition);
                }
                drop(ledger);
                if !assigned.is_empty() {
                    // The topics exist and the group answered.
                    self.set_failing(false);
                }
                self.connected();
            }
            Rebalance::Revoke(partitions) => {
                // What was settled is already stored and is committed as the partitions go;
                // what is still in flight will be read again by their next owner.
                for (topic, partition) in partition_ids(partitions) {
                    ledger.revoke(&topic, partition);
                }
            }
            Rebalance::Error(error) => {
                drop(ledger);
                self.retrying(&format!("consumer group rebalance failed: {error}"));
            }
        }
    }
}

/// The (topic, partition) pairs of `partitions`.
///
/// An empty list (a rebalance that gives or takes nothing, as a group of more members than
/// partitions sees) has a null element array: `TopicPartitionList::elements` of rdkafka 0.34
/// builds a slice from it, undefined behaviour that debug builds abort the whole executor on
/// (`slice::from_raw_parts_mut requires the pointer to be aligned and non-null`), so an empty
/// list is never asked for its elements.
fn partition_ids(partitions: &TopicPartitionList) -> Vec<(String, i32)> {
    if partitions.count() == 0 {
        return Vec::new();
    }
    partitions
        .elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// Most Kafka clients of one tenant that may be closing at once on their own threads.
///
/// A close can hang for as long as its broker does not answer (librdkafka #4519: a consumer
/// whose broker dies during the close never returns), so without a bound a tenant that points
/// its deployments at a broker it kills at will could leave any number of threads behind.
/// While this many of a tenant's clients are closing, its sources and sinks wait before they
/// create another (status `retrying`, see [`KafkaTarget::room_for_a_client`]); other tenants'
/// clients are not counted here and never wait for them.
///
/// [`KafkaTarget::room_for_a_client`]: super::KafkaTarget::room_for_a_client
pub(crate) const MAX_CLOSING_PER_TENANT: usize = 8;

/// Clients closing per tenant (entries removed at zero: at most one per tenant with a close
/// in progress).
static CLOSING: LazyLock<Mutex<HashMap<TenantId, usize>>> = LazyLock::new(Mutex::default);

/// How many of `tenant`'s Kafka clients are closing now.
pub(crate) fn closing(tenant: &TenantId) -> usize {
    CLOSING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(tenant)
        .copied()
        .unwrap_or(0)
}

fn close_started(tenant: &TenantId) {
    let mut closing = CLOSING.lock().unwrap_or_else(PoisonError::into_inner);
    *closing.entry(tenant.clone()).or_insert(0) += 1;
}

fn close_ended(tenant: &TenantId) {
    let mut closing = CLOSING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(count) = closing.get_mut(tenant) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            closing.remove(tenant);
        }
    }
}

/// A librdkafka client that is dropped on a thread of its own: dropping one blocks (closing a
/// consumer commits and leaves its group, a producer joins its polling thread), which must not
/// happen on an async worker thread, and can hang (rust-rdkafka #453), which must not hold up
/// the deployment that stops. The close counts against its tenant's
/// [`MAX_CLOSING_PER_TENANT`] until it returns.
pub(crate) struct OffThreadDrop<T: Send + 'static> {
    inner: Option<T>,
    tenant: TenantId,
}

impl<T: Send + 'static> OffThreadDrop<T> {
    pub(crate) fn new(inner: T, tenant: &TenantId) -> Self {
        Self {
            inner: Some(inner),
            tenant: tenant.clone(),
        }
    }
}

impl<T: Send + 'static> std::ops::Deref for OffThreadDrop<T> {
    type Target = T;

    #[allow(clippy::expect_used, reason = "the value is only taken in Drop")]
    fn deref(&self) -> &T {
        self.inner.as_ref().expect("present until dropped")
    }
}

impl<T: Send + 'static> Drop for OffThreadDrop<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let tenant = self.tenant.clone();
            close_started(&tenant);
            let spawned = std::thread::Builder::new()
                .name("weir-kafka-close".to_owned())
                .spawn(move || {
                    drop(inner);
                    close_ended(&tenant);
                });
            if let Err(error) = spawned {
                // The closure, and the client with it, was dropped here, on this thread.
                close_ended(&self.tenant);
                tracing::warn!(%error, "cannot start a thread to close a kafka client");
            }
        }
    }
}

impl<T: Send + 'static> std::fmt::Debug for OffThreadDrop<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OffThreadDrop(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty list reads as no partitions. (A list built here has an element array; the
    /// null one of a rebalance that gives nothing is met by `cli/tests/scale.rs`'s keyed
    /// windows test, whose executor aborted before the guard.)
    #[test]
    fn an_empty_rebalance_list_has_no_partitions() {
        assert!(partition_ids(&TopicPartitionList::new()).is_empty());
        let mut some = TopicPartitionList::new();
        some.add_partition("t", 2);
        assert_eq!(partition_ids(&some), [("t".to_owned(), 2)]);
    }
}
