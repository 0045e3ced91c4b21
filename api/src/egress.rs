//! The egress rule: where weir may connect on a tenant's behalf (an OCI registry to import from,
//! a broker an endpoint names). Anywhere but the platform's own network (loopback, private,
//! link-local, carrier-grade NAT, unspecified, multicast, reserved; IPv6 forms and IPv4 embedded
//! in IPv6 alike), unless an admin allowed the host for the tenant (`allowed_private_hosts`).
//!
//! The rule is applied to the addresses a connection actually goes to: a host name is resolved,
//! every address it resolves to is checked, and [`Egress::connect`] connects only to checked
//! addresses, so neither a numeric spelling of an address (`127.1`, `2130706433`, `0x7f000001`,
//! `017700000001`, `0`) nor a name that resolves to loopback (`localhost`, hosts-file names, a
//! public name pointing at a private address) gets through. This module is the one place the
//! rule lives; the gateway and the connectors use it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

/// Why a connection was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The host is, or resolves to, an address on the platform's own network.
    #[error("{host} is on the platform's own network; an admin must allow it for this tenant")]
    Private {
        /// The host as the tenant wrote it.
        host: String,
    },
    /// The host name did not resolve.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The host as the tenant wrote it.
        host: String,
        /// What the resolver said.
        #[source]
        source: std::io::Error,
    },
    /// Resolving or connecting took longer than allowed.
    #[error("connecting to {host} timed out")]
    Timeout {
        /// The host as the tenant wrote it.
        host: String,
    },
    /// No checked address accepted the connection.
    #[error("cannot connect to {host}")]
    Connect {
        /// The host as the tenant wrote it.
        host: String,
        /// The last connection error.
        #[source]
        source: std::io::Error,
    },
}

/// The egress rule of one tenant: the platform's own network is closed except the hosts an
/// admin allowed (the tenant's `allowed_private_hosts` quota).
///
/// An allowed entry is either a host name, which opens every address that name resolves to for
/// connections to that name only, or an address (in any spelling), which opens that address.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    names: Vec<String>,
    addresses: Vec<IpAddr>,
}

impl Egress {
    /// The rule with these allowed hosts (names or addresses).
    pub fn new<I, S>(allowed_private_hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut egress = Self::default();
        for entry in allowed_private_hosts {
            let entry = bare(entry.as_ref());
            match parse_ip(entry) {
                Some(ip) => egress.addresses.push(canonical(ip)),
                None => egress.names.push(normalise_name(entry)),
            }
        }
        egress
    }

    /// Whether connecting to `ip`, reached through `host` as the tenant wrote it, is allowed.
    pub fn allows(&self, host: &str, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !is_private(ip)
            || self.addresses.contains(&ip)
            || self.names.contains(&normalise_name(bare(host)))
    }

    /// Checks `host` without resolving it: an address in any spelling, or a name that always
    /// means this machine (`localhost`, `*.localhost`). A name passes; resolve it with
    /// [`Egress::resolve`] to check where it points.
    pub fn check_host(&self, host: &str) -> Result<(), EgressError> {
        let bare = bare(host);
        let refused = match parse_ip(bare) {
            Some(ip) => !self.allows(bare, ip),
            None => {
                let name = normalise_name(bare);
                (name == "localhost" || name.ends_with(".localhost")) && !self.names.contains(&name)
            }
        };
        if refused {
            return Err(EgressError::Private {
                host: host.to_owned(),
            });
        }
        Ok(())
    }

    /// The addresses `host:port` resolves to, every one of them checked: refused if any is on
    /// the platform's own network and not allowed (a name with one public and one private
    /// address is refused, not filtered, so DNS cannot choose for the tenant).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        self.check_host(host)?;
        let bare = bare(host);
        let addresses: Vec<SocketAddr> = match parse_ip(bare) {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|source| EgressError::Resolve {
                    host: host.to_owned(),
                    source,
                })?
                .collect(),
        };
        if addresses.is_empty() {
            return Err(EgressError::Resolve {
                host: host.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            });
        }
        if addresses.iter().any(|a| !self.allows(bare, a.ip())) {
            return Err(EgressError::Private {
                host: host.to_owned(),
            });
        }
        Ok(addresses)
    }

    /// A TCP connection to `host:port` on a checked address; resolving and connecting together
    /// take at most `timeout`.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, EgressError> {
        let attempt = async {
            let mut last = None;
            for address in self.resolve(host, port).await? {
                match TcpStream::connect(address).await {
                    Ok(stream) => return Ok(stream),
                    Err(error) => last = Some(error),
                }
            }
            Err(EgressError::Connect {
                host: host.to_owned(),
                source: last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()),
            })
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(EgressError::Timeout {
                    host: host.to_owned(),
                })
            })
    }
}

/// `host` without the brackets of an IPv6 literal and without a trailing dot.
fn bare(host: &str) -> &str {
    let host = host.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.strip_suffix('.').unwrap_or(host)
}

fn normalise_name(name: &str) -> String {
    bare(name).to_ascii_lowercase()
}

/// An IPv4 address embedded in IPv6 as the IPv4 address itself, so it meets the IPv4 rule and
/// the allow-list in one spelling.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// `host` as an address, in every spelling a resolver or URL parser accepts: IPv6 (with or
/// without brackets) and the IPv4 forms of `inet_aton` (one to four parts, each decimal, `0x`
/// hexadecimal or `0`-led octal, the last part filling the remaining bytes: `127.1`,
/// `2130706433`, `0x7f000001`, `017700000001`, `0`).
pub fn parse_ip(host: &str) -> Option<IpAddr> {
    let host = bare(host);
    if let Ok(v6) = host.parse::<Ipv6Addr>() {
        return Some(IpAddr::V6(v6));
    }
    parse_ipv4(host).map(IpAddr::V4)
}

fn parse_ipv4(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<u64> = host
        .split('.')
        .map(parse_ipv4_part)
        .collect::<Option<_>>()?;
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 || leading.iter().any(|&p| p > 255) {
        return None;
    }
    let last_bits = 8 * (4 - u32::try_from(leading.len()).ok()?);
    if *last >= 1u64 << last_bits {
        return None;
    }
    let mut value = *last;
    for (i, part) in leading.iter().enumerate() {
        value |= part << (24 - 8 * u32::try_from(i).ok()?);
    }
    Some(Ipv4Addr::from(u32::try_from(value).ok()?))
}

fn parse_ipv4_part(part: &str) -> Option<u64> {
    if part.is_empty() || part.len() > 32 {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (part.get(1..)?, 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        // `0x` alone is zero to inet_aton.
        return (radix == 16).then_some(0);
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Whether `ip` is on the platform's own network rather than the tenant's: loopback, private
/// (RFC 1918, IPv6 unique local), link-local, carrier-grade NAT (100.64.0.0/10, the platform's
/// network on many clouds), unspecified (`0.0.0.0/8` reaches this machine on Linux), benchmarking,
/// IETF protocol assignments, multicast, reserved and broadcast; IPv4 embedded in IPv6 (mapped,
/// compatible, NAT64, 6to4) by the IPv4 address inside.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6),
    }
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_broadcast()
        || v4.is_multicast()
        || a == 0
        || (a == 100 && (b & 0xc0) == 64)
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b & 0xfe) == 18)
        || a >= 240
}

fn is_private_v6(v6: Ipv6Addr) -> bool {
    let segments = v6.segments();
    let [s0, s1, ..] = segments;
    let embedded = |high: u16, low: u16| {
        let [h1, h0] = high.to_be_bytes();
        let [l1, l0] = low.to_be_bytes();
        is_private_v4(Ipv4Addr::new(h1, h0, l1, l0))
    };
    let [.., s6, s7] = segments;
    if let Some(v4) = v6.to_ipv4_mapped() {
        return is_private_v4(v4);
    }
    v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 site-local (deprecated).
        || (s0 & 0xfe00) == 0xfc00
        || (s0 & 0xffc0) == 0xfe80
        || (s0 & 0xffc0) == 0xfec0
        // ::a.b.c.d, IPv4-compatible (deprecated) and 64:ff9b::/96, NAT64.
        || (segments.iter().take(6).all(|&s| s == 0) && embedded(s6, s7))
        || (s0 == 0x64 && s1 == 0xff9b && segments.iter().skip(2).take(4).all(|&s| s == 0)
            && embedded(s6, s7))
        // 2002::/16, 6to4: the IPv4 address in the next 32 bits.
        || (s0 == 0x2002 && embedded(s1, segments.get(2).copied().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn every_spelling_of_loopback_is_an_address() {
        for host in [
            "127.0.0.1",
            "127.1",
            "2130706433",
            "0x7f000001",
            "0X7F.1",
            "017700000001",
            "0177.0.0.1",
            "127.0.0.1.",
        ] {
            assert_eq!(
                parse_ip(host),
                Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                "{host}"
            );
        }
        assert_eq!(parse_ip("0"), Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        assert_eq!(parse_ip("[::1]"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        for name in ["broker.example.com", "1.2.3.4.5", "256.1", "08", "-1", ""] {
            assert!(parse_ip(name).is_none(), "{name} is not an address");
        }
    }

    #[test]
    fn the_platforms_network_is_closed() {
        let egress = Egress::default();
        for host in [
            "localhost",
            "LOCALHOST.",
            "metadata.localhost",
            "127.0.0.1",
            "127.1",
            "2130706433",
            "0x7f000001",
            "017700000001",
            "0",
            "10.1.2.3",
            "192.168.0.9",
            "172.16.5.5",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "[::1]",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "[::ffff:7f00:1]",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
        ] {
            assert!(egress.check_host(host).is_err(), "{host}");
        }
        for host in [
            "broker.example.com",
            "8.8.8.8",
            "2001:db8::1",
            "100.128.0.1",
            "::ffff:8.8.8.8",
        ] {
            assert!(egress.check_host(host).is_ok(), "{host}");
        }
    }

    #[test]
    fn an_allowed_address_opens_that_address_in_any_spelling_and_no_other() {
        let egress = Egress::new(["127.0.0.1"]);
        assert!(egress.check_host("127.0.0.1").is_ok());
        assert!(egress.check_host("127.1").is_ok());
        assert!(egress.check_host("::ffff:127.0.0.1").is_ok());
        assert!(egress.check_host("127.0.0.2").is_err());
        assert!(egress.check_host("[::1]").is_err());
        assert!(egress.check_host("localhost").is_err());
    }

    #[test]
    fn an_allowed_name_opens_that_name_only() {
        let egress = Egress::new(["Registry.Internal"]);
        assert!(egress.allows("registry.internal.", "10.0.0.5".parse().unwrap()));
        assert!(!egress.allows("other.internal", "10.0.0.5".parse().unwrap()));
        assert!(!egress.allows("127.0.0.1", "127.0.0.1".parse().unwrap()));
    }

    #[tokio::test]
    async fn names_are_checked_by_every_address_they_resolve_to() {
        let egress = Egress::default();
        assert!(matches!(
            egress.resolve("localhost", 80).await,
            Err(EgressError::Private { .. })
        ));
        let allowed = Egress::new(["localhost"]);
        let addresses = allowed.resolve("localhost", 80).await.unwrap();
        assert!(addresses.iter().all(|a| a.ip().is_loopback()));
        assert!(matches!(
            egress.resolve("127.1", 80).await,
            Err(EgressError::Private { .. })
        ));
    }
}
