//! The tenant walls as pure functions: which tenant a login belongs to, which client ids it may
//! use, and how a tenant's topics and filters are mounted into the broker's one topic tree.
//!
//! Nothing here touches the broker; `hooks.rs` applies these rules at every hook point.

use weir_api::TenantId;

/// First level of every mounted topic: `$tenant/<tenant>/<topic as the client wrote it>`.
///
/// It starts with `$`, a prefix MQTT 5.0 section 4.7.2 reserves for the server, and clients may
/// not use it (their topics and filters starting with `$` are refused), so a mounted topic can
/// never be confused with a topic as a client wrote it. That makes removing the mount on
/// delivery safe to repeat (a redelivered message already had it removed), and a wildcard
/// filter that somehow escaped mounting (`#`, `+/…`) still matches no mounted topic
/// (section 4.7.2: wildcards at the first level do not match `$` topics).
pub const MOUNT_ROOT: &str = "$tenant";

/// What a topic or filter that no tenant may use is rewritten to before the ACL hooks refuse
/// it. No mounted filter matches it, so even a path that skips the ACL (a will message) reaches
/// no subscriber.
pub(crate) const REFUSED: &str = "$refused";

/// The user name part of the broker's own logins for a tenant's deployments:
/// `$service@<tenant>`. Device names cannot start with `$`, so it never shadows a device.
pub(crate) const SERVICE_USER: &str = "$service";

/// The tenant a user name names: the text after its last `@` (`<device>@<tenant>`), if that is
/// a valid tenant id and a non-empty name stands before it.
pub(crate) fn tenant_of_username(username: &str) -> Option<TenantId> {
    let (name, tenant) = username.rsplit_once('@')?;
    if name.is_empty() {
        return None;
    }
    TenantId::new(tenant).ok()
}

/// Whether `client_id` belongs to `tenant`: it must be `<name>@<tenant>` with a non-empty name.
///
/// MQTT client ids are one namespace per broker, and a CONNECT with a client id already in use
/// takes the existing session over (MQTT 5.0 section 3.1.4), its subscriptions and queued
/// messages included. Requiring the tenant in the id keeps each tenant's ids apart, so one
/// tenant can never take over, disconnect or inherit another tenant's session. An empty client
/// id (server-assigned, section 3.1.3.1) is refused for the same reason.
pub(crate) fn client_id_allowed(client_id: &str, tenant: &TenantId) -> bool {
    client_id
        .strip_suffix(tenant.as_str())
        .and_then(|rest| rest.strip_suffix('@'))
        .is_some_and(|name| !name.is_empty())
}

/// Whether a client may write `topic` (a topic name or a filter, after `$share/<group>/` was
/// removed): not empty and not starting with `$`, the prefix MQTT 5.0 section 4.7.2 reserves
/// for the server (`$SYS/…`, and the mount root itself).
pub(crate) fn is_client_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.starts_with('$')
}

/// `$tenant/<tenant>/`: the prefix of every topic in `tenant`'s space.
pub(crate) fn mount_prefix(tenant: &TenantId) -> String {
    format!("{MOUNT_ROOT}/{tenant}/")
}

/// The topic or filter a client of `tenant` wrote, mounted into the tenant's space
/// (`sensors/temp` → `$tenant/<tenant>/sensors/temp`, `#` → `$tenant/<tenant>/#`), or
/// [`REFUSED`] if no client may write it.
pub(crate) fn mount(tenant: &TenantId, topic: &str) -> String {
    if is_client_topic(topic) {
        format!("{}{topic}", mount_prefix(tenant))
    } else {
        REFUSED.to_owned()
    }
}

/// Whether a mounted topic or filter lies inside `tenant`'s space (and is not the bare prefix).
pub(crate) fn within(tenant: &TenantId, mounted: &str) -> bool {
    unmount(tenant, mounted).is_some()
}

/// The topic as the tenant's clients know it, if `mounted` lies in `tenant`'s space.
pub(crate) fn unmount<'a>(tenant: &TenantId, mounted: &'a str) -> Option<&'a str> {
    mounted
        .strip_prefix(MOUNT_ROOT)?
        .strip_prefix('/')?
        .strip_prefix(tenant.as_str())?
        .strip_prefix('/')
        .filter(|rest| is_client_topic(rest))
}

/// What a delivery of `topic` to a session of `tenant` may do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery<'a> {
    /// In the tenant's space: deliver it under this topic (the mount removed).
    Unmount(&'a str),
    /// Already without a mount: a redelivery of a message this session was sent before (the
    /// broker keeps the topic it sent in its in-flight window). Deliver it as it is.
    AsIs,
    /// Outside the tenant's space: never deliver it.
    Refuse,
}

/// Decides a delivery of `topic` to a session of `tenant`.
pub(crate) fn delivery<'a>(tenant: &TenantId, topic: &'a str) -> Delivery<'a> {
    if let Some(inner) = unmount(tenant, topic) {
        Delivery::Unmount(inner)
    } else if is_client_topic(topic) {
        Delivery::AsIs
    } else {
        Delivery::Refuse
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::new(id).unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn usernames_name_their_tenant_after_the_last_at() {
        assert_eq!(tenant_of_username("dev1@acme"), Some(tenant("acme")));
        assert_eq!(tenant_of_username("a@b@acme"), Some(tenant("acme")));
        assert_eq!(tenant_of_username("$service@acme"), Some(tenant("acme")));
        assert_eq!(tenant_of_username("@acme"), None);
        assert_eq!(tenant_of_username("dev1"), None);
        assert_eq!(tenant_of_username("dev1@"), None);
        assert_eq!(tenant_of_username("dev1@Acme"), None);
        assert_eq!(tenant_of_username("dev1@ac/me"), None);
        assert_eq!(tenant_of_username("dev1@#"), None);
    }

    #[test]
    fn client_ids_carry_their_tenant() {
        let acme = tenant("acme");
        assert!(client_id_allowed("pump-7@acme", &acme));
        assert!(client_id_allowed("x@y@acme", &acme));
        assert!(!client_id_allowed("@acme", &acme));
        assert!(!client_id_allowed("acme", &acme));
        assert!(!client_id_allowed("pump-7@acme2", &acme));
        assert!(!client_id_allowed("pump-7@2acme", &acme));
        assert!(!client_id_allowed("pump-7-acme", &acme));
        assert!(!client_id_allowed("", &acme));
    }

    #[test]
    fn mounting_puts_every_client_topic_under_the_tenant() {
        let acme = tenant("acme");
        assert_eq!(mount(&acme, "sensors/temp"), "$tenant/acme/sensors/temp");
        assert_eq!(mount(&acme, "#"), "$tenant/acme/#");
        assert_eq!(mount(&acme, "+/+"), "$tenant/acme/+/+");
        assert_eq!(mount(&acme, "/leading"), "$tenant/acme//leading");
        assert_eq!(mount(&acme, "$SYS/#"), REFUSED);
        assert_eq!(mount(&acme, "$tenant/other/#"), REFUSED);
        assert_eq!(mount(&acme, "$tenant/acme/#"), REFUSED);
        assert_eq!(mount(&acme, ""), REFUSED);
    }

    #[test]
    fn only_the_own_space_is_within() {
        let acme = tenant("acme");
        assert!(within(&acme, "$tenant/acme/#"));
        assert!(within(&acme, "$tenant/acme/a/b"));
        assert!(!within(&acme, "$tenant/acme/"));
        assert!(!within(&acme, "$tenant/acme"));
        assert!(!within(&acme, "$tenant/acme2/a"));
        assert!(!within(&acme, "$tenant/acm/a"));
        assert!(!within(&acme, "$tenant/acme/$SYS/x"));
        assert!(!within(&acme, "$tenant/+/a"));
        assert!(!within(&acme, "$tenant/#"));
        assert!(!within(&acme, "#"));
        assert!(!within(&acme, "acme/a"));
        assert!(!within(&acme, REFUSED));
    }

    #[test]
    fn deliveries_unmount_once_and_refuse_other_spaces() {
        let acme = tenant("acme");
        assert_eq!(
            delivery(&acme, "$tenant/acme/a/b"),
            Delivery::Unmount("a/b")
        );
        // A tenant topic that itself starts with the tenant's name keeps it on redelivery.
        assert_eq!(
            delivery(&acme, "$tenant/acme/acme/x"),
            Delivery::Unmount("acme/x")
        );
        assert_eq!(delivery(&acme, "acme/x"), Delivery::AsIs);
        assert_eq!(delivery(&acme, "$tenant/beta/a"), Delivery::Refuse);
        assert_eq!(delivery(&acme, "$SYS/brokers"), Delivery::Refuse);
        assert_eq!(delivery(&acme, REFUSED), Delivery::Refuse);
    }
}
