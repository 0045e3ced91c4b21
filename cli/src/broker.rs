//! Wiring of the embedded MQTT broker (`weir-broker`) into `weir serve`: device logins checked
//! against the control store, and the `default` endpoint of every tenant's deployments.

use std::sync::Arc;

use weir_api::TenantId;
use weir_broker::{DeviceDirectory, EmbeddedBroker};
use weir_connectors::EndpointSpec;
use weir_executor::runtime::DefaultBroker;

/// The embedded broker as deployments bound to the `default` endpoint reach it: on its
/// loopback listener, with the tenant's service login.
#[derive(Debug)]
pub(crate) struct BrokerEndpoint(pub(crate) Arc<EmbeddedBroker>);

impl DefaultBroker for BrokerEndpoint {
    fn endpoint(&self, tenant: &TenantId) -> EndpointSpec {
        let (username, password) = self.0.service_credentials(tenant);
        EndpointSpec {
            name: "default".to_owned(),
            kind: "mqtt".to_owned(),
            address: Some(self.0.local_addr().to_string()),
            settings: [("username".to_owned(), username)].into_iter().collect(),
            secret: Some(password),
        }
    }
}

/// Device logins, checked against the credentials tenants' owners created (`/v1/devices`).
#[derive(Debug)]
pub(crate) struct StoreDevices(pub(crate) Arc<dyn weir_store::ControlStore>);

#[async_trait::async_trait]
impl DeviceDirectory for StoreDevices {
    async fn verify(&self, username: &str, password: &[u8]) -> Result<Option<TenantId>, String> {
        self.0
            .verify_device(username, password)
            .await
            .map_err(|e| e.to_string())
    }
}
