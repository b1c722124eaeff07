//! The server over real sockets on loopback: UDP and TCP, authoritative answers, negative
//! answers with the SOA, EDNS, and SERVFAIL for outside names without upstream resolvers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query};

use super::*;
use crate::net::dns::records::tests::{cluster_ip, zone};

/// A server on 127.0.0.1 (random ports) for a zone with `web` at 10.43.0.20.
async fn start() -> (SocketAddr, SocketAddr) {
    let (udp, tcp) = listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let addresses = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let handler = Handler::new(zone(vec![cluster_ip("web", "10.43.0.20")], vec![]), None);
    tokio::spawn(serve(handler, udp, tcp));
    addresses
}

fn query(name: &str, kind: RecordType, edns: bool) -> Message {
    let mut message = Message::new();
    message
        .set_id(4242)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    if edns {
        let mut ours = Edns::new();
        ours.set_max_payload(1232);
        message.set_edns(ours);
    }
    message
}

/// Sends `message` over UDP (on a blocking thread) and reads the reply.
async fn udp(server: SocketAddr, message: Message) -> Message {
    tokio::task::spawn_blocking(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        socket.send_to(&message.to_vec().unwrap(), server).unwrap();
        let mut buf = [0u8; 4096];
        let (len, _) = socket.recv_from(&mut buf).unwrap();
        Message::from_vec(&buf[..len]).unwrap()
    })
    .await
    .unwrap()
}

/// The same over TCP (two-byte length prefix).
async fn tcp(server: SocketAddr, message: Message) -> Message {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(server).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let bytes = message.to_vec().unwrap();
        stream
            .write_all(&(bytes.len() as u16).to_be_bytes())
            .unwrap();
        stream.write_all(&bytes).unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).unwrap();
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut reply).unwrap();
        Message::from_vec(&reply).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn cluster_names_are_answered_authoritatively_over_udp_and_tcp() {
    let (u, t) = start().await;
    for reply in [
        udp(
            u,
            query("web.default.svc.cluster.local.", RecordType::A, false),
        )
        .await,
        tcp(
            t,
            query("web.default.svc.cluster.local.", RecordType::A, false),
        )
        .await,
    ] {
        assert_eq!(reply.id(), 4242);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert!(reply.authoritative());
        assert!(reply.recursion_available());
        let answers: Vec<String> = reply
            .answers()
            .iter()
            .map(|r| r.data().to_string())
            .collect();
        assert_eq!(answers, ["10.43.0.20"]);
        assert_eq!(reply.answers()[0].ttl(), 5);
    }
}

#[tokio::test]
async fn negative_answers_carry_the_soa_and_edns_is_echoed() {
    let (u, _) = start().await;
    let reply = udp(
        u,
        query("nope.default.svc.cluster.local.", RecordType::A, true),
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::NXDomain);
    assert!(reply.answers().is_empty());
    assert_eq!(reply.name_servers().len(), 1);
    assert_eq!(reply.name_servers()[0].record_type(), RecordType::SOA);
    assert!(reply.extensions().is_some(), "EDNS in, EDNS out");
    let reply = udp(
        u,
        query("web.default.svc.cluster.local.", RecordType::AAAA, false),
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert!(reply.answers().is_empty());
    assert_eq!(reply.name_servers()[0].record_type(), RecordType::SOA);
}

#[tokio::test]
async fn outside_names_without_upstream_resolvers_fail_at_once() {
    let (u, _) = start().await;
    let reply = udp(u, query("example.invalid.", RecordType::A, false)).await;
    assert_eq!(reply.response_code(), ResponseCode::ServFail);
    assert!(!reply.authoritative());
}

#[test]
fn upstream_resolvers_leave_out_the_cluster_dns_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resolv.conf");
    std::fs::write(&path, "nameserver 10.43.0.10\nnameserver 10.42.0.1\n").unwrap();
    let exclude = ["10.43.0.10".parse().unwrap(), "10.42.0.1".parse().unwrap()];
    assert!(upstream(&path, &exclude).is_none());
    assert!(upstream(&dir.path().join("missing"), &exclude).is_none());
}
