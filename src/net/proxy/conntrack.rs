//! Stale UDP conntrack entries, cleared after a sync (kube-proxy's
//! `conntrack.CleanStaleEntries`). UDP has no connection to close: an entry DNATed to an
//! endpoint that went away keeps sending a client's datagrams to it, and one made while a
//! service port had no endpoint (rejected, or not NATed at all) keeps the client off the
//! endpoints it has now, for as long as the client keeps sending.
//!
//! Spoken over ctnetlink (`NFNL_SUBSYS_CTNETLINK` on a `NETLINK_NETFILTER` socket) directly:
//! a dump of the IPv4 entries, filtered here, then one delete per matching entry by its
//! original tuple (what the `conntrack` tool and kube-proxy's netlink library do). No
//! maintained crate speaks ctnetlink; the few messages are small enough to write by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::model::{Protocol, ServicePort};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_UDP: u8 = 17;

/// A conntrack failure.
#[derive(Debug, thiserror::Error)]
#[error("conntrack: {what}: {source}")]
pub struct ConntrackError {
    what: &'static str,
    source: std::io::Error,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ConntrackError {
    move |source| ConntrackError { what, source }
}

/// What to clear after a sync.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stale {
    /// Endpoints that left a UDP service port: entries whose replies come from them.
    pub endpoints: BTreeSet<(Ipv4Addr, u16)>,
    /// Addresses and ports of UDP service ports that have endpoints again (or for the
    /// first time): entries made while they had none.
    pub services: BTreeSet<(Ipv4Addr, u16)>,
    /// Node ports of those service ports, likewise.
    pub node_ports: BTreeSet<u16>,
}

impl Stale {
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.services.is_empty() && self.node_ports.is_empty()
    }

    fn matches(&self, flow: &Flow) -> bool {
        // A reply from the endpoint to a flow addressed elsewhere: DNATed to it.
        let to_endpoint = flow.orig_dst != flow.reply_src
            && self.endpoints.contains(&(flow.reply_src, flow.reply_sport));
        to_endpoint
            || self.services.contains(&(flow.orig_dst, flow.orig_dport))
            || self.node_ports.contains(&flow.orig_dport)
    }
}

/// The UDP entries that the change from `before` to `after` made stale.
pub fn stale(before: &[ServicePort], after: &[ServicePort]) -> Stale {
    let udp = |ports: &[ServicePort]| -> BTreeMap<String, ServicePort> {
        ports
            .iter()
            .filter(|p| p.protocol == Protocol::Udp)
            .map(|p| (p.key(), p.clone()))
            .collect()
    };
    let (before, after) = (udp(before), udp(after));
    let reachable = |port: Option<&ServicePort>| -> BTreeSet<(Ipv4Addr, u16)> {
        port.map(|p| {
            p.categorize()
                .reachable
                .iter()
                .map(|e| (e.ip, e.port))
                .collect()
        })
        .unwrap_or_default()
    };
    let mut stale = Stale::default();
    for (key, old) in &before {
        let now = reachable(after.get(key));
        stale
            .endpoints
            .extend(reachable(Some(old)).difference(&now).copied());
    }
    for (key, port) in &after {
        let had_endpoints = before.get(key).is_some_and(|p| p.categorize().any);
        if had_endpoints || !port.categorize().any {
            continue;
        }
        let addresses = [port.cluster_ip].into_iter();
        let addresses = addresses.chain(port.external_ips.iter().copied());
        let addresses = addresses.chain(port.load_balancer_ips.iter().copied());
        stale
            .services
            .extend(addresses.map(|address| (address, port.port)));
        stale.node_ports.extend(port.node_port);
    }
    stale
}

/// One IPv4 UDP conntrack entry: its original tuple and where the replies come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    orig_src: Ipv4Addr,
    orig_dst: Ipv4Addr,
    orig_sport: u16,
    orig_dport: u16,
    reply_src: Ipv4Addr,
    reply_sport: u16,
}

/// Deletes the UDP entries `stale` names; how many went.
pub fn clear(stale: &Stale) -> Result<usize, ConntrackError> {
    if stale.is_empty() {
        return Ok(0);
    }
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("opening a netlink socket"))?;
    socket
        .bind_auto()
        .map_err(io("binding the netlink socket"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(io("connecting the netlink socket"))?;
    let flows = dump(&socket)?;
    let mut deleted = 0;
    for flow in flows.iter().filter(|f| stale.matches(f)) {
        if delete(&socket, flow)? {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// A ctnetlink request: netlink header, `nfgenmsg` (AF_INET, version 0), attributes.
fn message(kind: u16, flags: u16, attributes: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attributes.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    out.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    out.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    out.extend_from_slice(attributes);
    out
}

/// One netlink attribute, padded to 4 bytes.
fn attribute(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The attributes in `buf`: (type, payload).
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((kind, payload))
    })
}

/// (source, destination, protocol, source port, destination port) of a tuple attribute.
fn tuple(payload: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u8, u16, u16)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    let v4 = |b: &[u8]| <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from);
    let port = |b: &[u8]| <[u8; 2]>::try_from(b).ok().map(u16::from_be_bytes);
    for (kind, inner) in attributes(payload) {
        match kind {
            CTA_TUPLE_IP => {
                for (kind, value) in attributes(inner) {
                    match kind {
                        CTA_IP_V4_SRC => src = v4(value),
                        CTA_IP_V4_DST => dst = v4(value),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (kind, value) in attributes(inner) {
                    match kind {
                        CTA_PROTO_NUM => proto = value.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = port(value),
                        CTA_PROTO_DST_PORT => dport = port(value),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((src?, dst?, proto?, sport.unwrap_or(0), dport.unwrap_or(0)))
}

/// The UDP flows of one dumped entry (the payload after the netlink header).
fn flow(payload: &[u8]) -> Option<Flow> {
    let attrs = payload.get(4..)?; // after nfgenmsg
    let mut orig = None;
    let mut reply = None;
    for (kind, value) in attributes(attrs) {
        match kind {
            CTA_TUPLE_ORIG => orig = tuple(value),
            CTA_TUPLE_REPLY => reply = tuple(value),
            _ => {}
        }
    }
    let (orig_src, orig_dst, proto, orig_sport, orig_dport) = orig?;
    let (reply_src, _, _, reply_sport, _) = reply?;
    (proto == IPPROTO_UDP).then_some(Flow {
        orig_src,
        orig_dst,
        orig_sport,
        orig_dport,
        reply_src,
        reply_sport,
    })
}

/// Every netlink message of one datagram: (type, payload), or the error a
/// `NLMSG_ERROR` carries (0: an acknowledgement).
fn messages(datagram: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < 16 || len > rest.len() {
            break;
        }
        out.push((kind, &rest[16..len]));
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    out
}

fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

fn dump(socket: &Socket) -> Result<Vec<Flow>, ConntrackError> {
    let request = message(IPCTNL_MSG_CT_GET, NLM_F_DUMP, &[]);
    socket
        .send(&request, 0)
        .map_err(io("asking for the conntrack table"))?;
    let mut flows = Vec::new();
    loop {
        let (datagram, _) = socket
            .recv_from_full()
            .map_err(io("reading the conntrack table"))?;
        for (kind, payload) in messages(&datagram) {
            match kind {
                NLMSG_DONE => return Ok(flows),
                NLMSG_ERROR => {
                    let code = error_code(payload);
                    if code != 0 {
                        return Err(ConntrackError {
                            what: "reading the conntrack table",
                            source: std::io::Error::from_raw_os_error(-code),
                        });
                    }
                }
                _ => flows.extend(flow(payload)),
            }
        }
    }
}

/// The delete request for `flow` (by its original tuple).
fn delete_request(flow: &Flow) -> Vec<u8> {
    let mut ip = Vec::new();
    attribute(&mut ip, CTA_IP_V4_SRC, &flow.orig_src.octets());
    attribute(&mut ip, CTA_IP_V4_DST, &flow.orig_dst.octets());
    let mut proto = Vec::new();
    attribute(&mut proto, CTA_PROTO_NUM, &[IPPROTO_UDP]);
    attribute(
        &mut proto,
        CTA_PROTO_SRC_PORT,
        &flow.orig_sport.to_be_bytes(),
    );
    attribute(
        &mut proto,
        CTA_PROTO_DST_PORT,
        &flow.orig_dport.to_be_bytes(),
    );
    let mut tuple = Vec::new();
    attribute(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    attribute(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    let mut attrs = Vec::new();
    attribute(&mut attrs, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
    message(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, &attrs)
}

/// Deletes one entry; false if it was gone already.
fn delete(socket: &Socket, flow: &Flow) -> Result<bool, ConntrackError> {
    socket
        .send(&delete_request(flow), 0)
        .map_err(io("deleting a conntrack entry"))?;
    let (datagram, _) = socket
        .recv_from_full()
        .map_err(io("reading the conntrack answer"))?;
    for (kind, payload) in messages(&datagram) {
        if kind == NLMSG_ERROR {
            return match -error_code(payload) {
                0 => Ok(true),
                libc::ENOENT => Ok(false),
                code => Err(ConntrackError {
                    what: "deleting a conntrack entry",
                    source: std::io::Error::from_raw_os_error(code),
                }),
            };
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::super::model::Endpoint;
    use super::*;

    fn udp(name: &str, endpoints: &[&str]) -> ServicePort {
        ServicePort {
            namespace: "default".into(),
            name: name.into(),
            port_name: "dns".into(),
            protocol: Protocol::Udp,
            cluster_ip: "10.43.0.53".parse().unwrap(),
            port: 53,
            node_port: Some(30053),
            external_local: false,
            internal_local: false,
            affinity_seconds: None,
            external_ips: vec!["192.0.2.77".parse().unwrap()],
            load_balancer_ips: Vec::new(),
            source_ranges: Vec::new(),
            endpoints: endpoints
                .iter()
                .map(|ip| Endpoint::ready(ip.parse().unwrap(), 5353, true))
                .collect(),
        }
    }

    #[test]
    fn removed_udp_endpoints_and_ports_that_get_endpoints_are_stale() {
        let before = [udp("dns", &["10.42.0.5", "10.42.0.6"]), udp("empty", &[])];
        let after = [udp("dns", &["10.42.0.6"]), udp("empty", &["10.42.0.9"])];
        let found = stale(&before, &after);
        assert_eq!(
            found.endpoints,
            BTreeSet::from([("10.42.0.5".parse().unwrap(), 5353)])
        );
        assert_eq!(
            found.services,
            BTreeSet::from([
                ("10.43.0.53".parse().unwrap(), 53),
                ("192.0.2.77".parse().unwrap(), 53)
            ])
        );
        assert_eq!(found.node_ports, BTreeSet::from([30053]));
        // Nothing changed, or TCP: nothing to clear.
        assert!(stale(&after, &after).is_empty());
        let mut tcp = before.clone();
        tcp.iter_mut().for_each(|p| p.protocol = Protocol::Tcp);
        assert!(stale(&tcp, &[]).is_empty());
    }

    #[test]
    fn a_flow_to_a_removed_endpoint_matches_and_others_do_not() {
        let found = stale(&[udp("dns", &["10.42.0.5"])], &[udp("dns", &[])]);
        let flow = Flow {
            orig_src: "10.42.0.7".parse().unwrap(),
            orig_dst: "10.43.0.53".parse().unwrap(),
            orig_sport: 40000,
            orig_dport: 53,
            reply_src: "10.42.0.5".parse().unwrap(),
            reply_sport: 5353,
        };
        assert!(found.matches(&flow));
        // The endpoint reached directly (not through the Service): left alone.
        let direct = Flow {
            orig_dst: flow.reply_src,
            ..flow
        };
        assert!(!found.matches(&direct));
        // The delete request names the original tuple, parsed back the same.
        let request = delete_request(&flow);
        let [(kind, payload)] = messages(&request)[..] else {
            panic!("one message")
        };
        assert_eq!(kind, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE);
        let (orig, _) = attributes(&payload[4..]).next().unwrap();
        assert_eq!(orig, CTA_TUPLE_ORIG);
        let (_, value) = attributes(&payload[4..]).next().unwrap();
        assert_eq!(
            tuple(value),
            Some((flow.orig_src, flow.orig_dst, IPPROTO_UDP, 40000, 53))
        );
    }

    #[test]
    fn entries_are_dumped_and_deleted_over_netlink() {
        // In a network namespace of its own (root only): conntrack on, one UDP datagram
        // to 127.0.0.1:30053 makes an entry, which a node-port clearing deletes.
        let run = || -> Option<(usize, usize)> {
            // SAFETY: unshares this thread's network namespace only.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            let sh = |script: &str| {
                std::process::Command::new("sh")
                    .args(["-c", script])
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !sh("ip link set lo up && nft 'add table ip t; add chain ip t c { type filter hook output priority 0; }; add rule ip t c ct state new accept'") {
                return None;
            }
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.send_to(b"x", "127.0.0.1:30053").unwrap();
            let stale = Stale {
                node_ports: BTreeSet::from([30053]),
                ..Stale::default()
            };
            let first = clear(&stale).unwrap();
            let again = clear(&stale).unwrap();
            Some((first, again))
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let result = std::thread::spawn(run).join().unwrap();
        assert_eq!(result, Some((1, 0)));
    }
}
