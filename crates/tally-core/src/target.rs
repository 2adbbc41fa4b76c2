//! Which network addresses a webhook may be sent to: the rule the API applies when a URL is
//! registered and the worker applies to every address a receiver's name resolves to.
//!
//! Invariant: with `webhooks.allow_private_targets` off, tally never opens a connection to an
//! address [`classify`] puts in a [`NonPublic`] class — loopback, private networks, link-local
//! (cloud metadata services live there), unspecified, multicast, and the other special-purpose
//! blocks of the IANA registries that no public receiver uses — so a caller cannot aim the
//! workers at services inside their own network (SSRF).

use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not a public one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonPublic {
    /// 127.0.0.0/8, ::1: this very host.
    Loopback,
    /// RFC 1918 (10/8, 172.16/12, 192.168/16), 100.64/10 (carrier-grade NAT), fc00::/7.
    Private,
    /// 169.254/16, fe80::/10 (and the deprecated site-local fec0::/10).
    LinkLocal,
    /// 0.0.0.0/8, ::: "this host" on most systems.
    Unspecified,
    /// 224/4, ff00::/8, 255.255.255.255.
    Multicast,
    /// Documentation, benchmarking, protocol-assignment, translation and reserved blocks.
    Reserved,
}

impl NonPublic {
    pub fn as_str(self) -> &'static str {
        match self {
            NonPublic::Loopback => "loopback",
            NonPublic::Private => "private",
            NonPublic::LinkLocal => "link-local",
            NonPublic::Unspecified => "unspecified",
            NonPublic::Multicast => "multicast",
            NonPublic::Reserved => "reserved",
        }
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

const fn v6(segments: [u16; 8], len: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

/// The IANA IPv4 special-purpose registry, minus nothing a receiver could need.
const V4: &[(Ipv4Net, NonPublic)] = &[
    (v4(0, 0, 0, 0, 8), NonPublic::Unspecified),
    (v4(10, 0, 0, 0, 8), NonPublic::Private),
    (v4(100, 64, 0, 0, 10), NonPublic::Private),
    (v4(127, 0, 0, 0, 8), NonPublic::Loopback),
    (v4(169, 254, 0, 0, 16), NonPublic::LinkLocal),
    (v4(172, 16, 0, 0, 12), NonPublic::Private),
    (v4(192, 0, 0, 0, 24), NonPublic::Reserved),
    (v4(192, 0, 2, 0, 24), NonPublic::Reserved),
    (v4(192, 88, 99, 0, 24), NonPublic::Reserved),
    (v4(192, 168, 0, 0, 16), NonPublic::Private),
    (v4(198, 18, 0, 0, 15), NonPublic::Reserved),
    (v4(198, 51, 100, 0, 24), NonPublic::Reserved),
    (v4(203, 0, 113, 0, 24), NonPublic::Reserved),
    (v4(224, 0, 0, 0, 4), NonPublic::Multicast),
    (v4(255, 255, 255, 255, 32), NonPublic::Multicast),
    (v4(240, 0, 0, 0, 4), NonPublic::Reserved),
];

/// The IANA IPv6 special-purpose registry. IPv4-mapped addresses (::ffff:0:0/96) are judged
/// by the IPv4 address they carry, before this table.
const V6: &[(Ipv6Net, NonPublic)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), NonPublic::Unspecified),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), NonPublic::Loopback),
    // IPv4-compatible (deprecated) and the rest of ::/96.
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 96), NonPublic::Reserved),
    // NAT64 (64:ff9b::/96, 64:ff9b:1::/48): a translator would reach any IPv4 address.
    (
        v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),
        NonPublic::Reserved,
    ),
    (
        v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        NonPublic::Reserved,
    ),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), NonPublic::Reserved),
    // Protocol assignments (Teredo included) and documentation.
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), NonPublic::Reserved),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        NonPublic::Reserved,
    ),
    // 6to4 embeds an IPv4 address, private ones included.
    (v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), NonPublic::Reserved),
    (v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), NonPublic::Reserved),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), NonPublic::Private),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), NonPublic::LinkLocal),
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), NonPublic::LinkLocal),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), NonPublic::Multicast),
];

/// `None` for a public address; else why it is not one.
pub fn classify(ip: IpAddr) -> Option<NonPublic> {
    match ip {
        IpAddr::V4(ip) => V4
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, class)| *class),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(mapped) => classify(IpAddr::V4(mapped)),
            None => V6
                .iter()
                .find(|(net, _)| net.contains(&ip))
                .map(|(_, class)| *class),
        },
    }
}

/// Whether a host name is this machine by definition, whatever DNS says (RFC 6761:
/// `localhost` and every name under `.localhost`), so a registration can be refused before
/// anything resolves it.
pub fn is_local_name(host: &str) -> bool {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> Option<NonPublic> {
        classify(text.parse().expect("an address"))
    }

    #[test]
    fn special_purpose_addresses_are_not_public() {
        for (address, expected) in [
            ("127.0.0.1", NonPublic::Loopback),
            ("127.255.0.9", NonPublic::Loopback),
            ("::1", NonPublic::Loopback),
            ("::ffff:127.0.0.1", NonPublic::Loopback),
            ("10.0.0.1", NonPublic::Private),
            ("172.16.0.1", NonPublic::Private),
            ("172.31.255.255", NonPublic::Private),
            ("192.168.1.1", NonPublic::Private),
            ("100.64.0.1", NonPublic::Private),
            ("fc00::1", NonPublic::Private),
            ("fd12:3456::1", NonPublic::Private),
            ("::ffff:10.1.2.3", NonPublic::Private),
            ("169.254.169.254", NonPublic::LinkLocal),
            ("fe80::1", NonPublic::LinkLocal),
            ("0.0.0.0", NonPublic::Unspecified),
            ("::", NonPublic::Unspecified),
            ("224.0.0.1", NonPublic::Multicast),
            ("255.255.255.255", NonPublic::Multicast),
            ("ff02::1", NonPublic::Multicast),
            ("192.0.2.1", NonPublic::Reserved),
            ("198.18.0.1", NonPublic::Reserved),
            ("240.0.0.1", NonPublic::Reserved),
            ("2001:db8::1", NonPublic::Reserved),
            ("64:ff9b::a00:1", NonPublic::Reserved),
            ("2002:a00:1::1", NonPublic::Reserved),
            ("::10.0.0.1", NonPublic::Reserved),
        ] {
            assert_eq!(class(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80e::200e",
            "::ffff:93.184.215.14",
        ] {
            assert_eq!(class(address), None, "{address}");
        }
    }

    #[test]
    fn localhost_names_are_local_whatever_their_case_or_trailing_dot() {
        for name in ["localhost", "LocalHost.", "api.localhost", "a.b.localhost."] {
            assert!(is_local_name(name), "{name}");
        }
        for name in ["example.com", "localhost.example.com", "notlocalhost"] {
            assert!(!is_local_name(name), "{name}");
        }
    }
}
