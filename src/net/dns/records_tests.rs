//! The record logic against hand-made caches: what CoreDNS answers for the same objects.

use super::*;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use serde_json::json;

pub(crate) fn zone(services: Vec<serde_json::Value>, slices: Vec<serde_json::Value>) -> Zone {
    let mut s: Writer<Service> = Writer::default();
    for svc in services {
        s.apply_watcher_event(&Event::Apply(serde_json::from_value(svc).unwrap()));
    }
    let mut e: Writer<EndpointSlice> = Writer::default();
    for slice in slices {
        e.apply_watcher_event(&Event::Apply(serde_json::from_value(slice).unwrap()));
    }
    Zone::new("cluster.local", s.as_reader(), e.as_reader()).unwrap()
}

pub(crate) fn cluster_ip(name: &str, ip: &str) -> serde_json::Value {
    json!({"metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [
            {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"port": 9000, "protocol": "TCP"}]}})
}

fn headless(name: &str) -> serde_json::Value {
    json!({"metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}})
}

/// A slice of `service` with (address, hostname, ready) endpoints on port `http` 8080.
fn slice(service: &str, endpoints: &[(&str, Option<&str>, bool)]) -> serde_json::Value {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(ip, host, ready)| {
            json!({"addresses": [ip], "hostname": host, "conditions": {"ready": ready}})
        })
        .collect();
    json!({"metadata": {"name": format!("{service}-abcde"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

fn ask(zone: &Zone, name: &str, kind: RecordType) -> Answer {
    match zone.answer(&Name::from_ascii(name).unwrap(), kind) {
        Outcome::Answer(answer) => answer,
        Outcome::Forward => panic!("{name} {kind} was forwarded"),
    }
}

/// The answers' data as text (`10.43.0.20`, `0 100 80 web.default.svc.cluster.local.`).
fn data(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.data().to_string())
        .collect::<Vec<_>>()
}

fn assert_negative(answer: &Answer, code: ResponseCode) {
    assert_eq!(answer.code, code);
    assert!(answer.answers.is_empty(), "{answer:?}");
    assert_eq!(answer.authority.len(), 1);
    assert_eq!(answer.authority[0].record_type(), RecordType::SOA);
    assert_eq!(answer.authority[0].name().to_ascii(), "cluster.local.");
}

#[test]
fn a_cluster_ip_service_resolves_to_its_cluster_ip_in_any_case() {
    let z = zone(vec![cluster_ip("web", "10.43.0.20")], vec![]);
    let a = ask(&z, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(a.code, ResponseCode::NoError);
    assert_eq!(data(&a.answers), ["10.43.0.20"]);
    assert_eq!(a.answers[0].ttl(), 5);
    let a = ask(&z, "WEB.Default.SVC.cluster.LOCAL.", RecordType::A);
    assert_eq!(data(&a.answers), ["10.43.0.20"]);
    // The name exists, not with an IPv6 address: NODATA.
    assert_negative(
        &ask(&z, "web.default.svc.cluster.local.", RecordType::AAAA),
        ResponseCode::NoError,
    );
    assert_negative(
        &ask(&z, "web.default.svc.cluster.local.", RecordType::MX),
        ResponseCode::NoError,
    );
}

#[test]
fn missing_names_are_nxdomain_and_empty_non_terminals_nodata() {
    let z = zone(vec![cluster_ip("web", "10.43.0.20")], vec![]);
    for name in [
        "nope.default.svc.cluster.local.",
        "web.other.svc.cluster.local.",
        "x.web.default.svc.cluster.local.",
        "other.svc.cluster.local.",
        "a.b.c.d.e.f.cluster.local.",
        "web.default.cluster.local.",
        "_nope._tcp.web.default.svc.cluster.local.",
        "_http._udp.web.default.svc.cluster.local.",
    ] {
        assert_negative(&ask(&z, name, RecordType::A), ResponseCode::NXDomain);
    }
    for name in [
        "cluster.local.",
        "svc.cluster.local.",
        "default.svc.cluster.local.",
        "pod.cluster.local.",
    ] {
        assert_negative(&ask(&z, name, RecordType::A), ResponseCode::NoError);
    }
    let soa = ask(&z, "cluster.local.", RecordType::SOA);
    assert_eq!(soa.answers.len(), 1);
    assert!(
        data(&soa.answers)[0].starts_with("ns.dns.cluster.local. hostmaster.cluster.local. "),
        "{:?}",
        data(&soa.answers)
    );
}

#[test]
fn named_ports_have_srv_records_pointing_at_the_service() {
    let z = zone(vec![cluster_ip("web", "10.43.0.20")], vec![]);
    let srv = ask(
        &z,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        data(&srv.answers),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(data(&srv.additionals), ["10.43.0.20"]);
    let srv = ask(
        &z,
        "_dns._udp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        data(&srv.answers),
        ["0 100 53 web.default.svc.cluster.local."]
    );
    // The port name exists: an A query there is NODATA.
    assert_negative(
        &ask(
            &z,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::A,
        ),
        ResponseCode::NoError,
    );
    // SRV of the service name itself: every port.
    let all = ask(&z, "web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(all.answers.len(), 3, "{:?}", data(&all.answers));
}

#[test]
fn a_headless_service_resolves_to_its_ready_endpoints() {
    let z = zone(
        vec![headless("db")],
        vec![slice(
            "db",
            &[
                ("10.42.0.5", Some("db-0"), true),
                ("10.42.0.6", Some("db-1"), true),
                ("10.42.0.7", Some("db-2"), false),
                ("10.42.0.8", None, true),
            ],
        )],
    );
    let a = ask(&z, "db.default.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&a.answers), ["10.42.0.5", "10.42.0.6", "10.42.0.8"]);
    let one = ask(&z, "db-1.db.default.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&one.answers), ["10.42.0.6"]);
    let unnamed = ask(&z, "10-42-0-8.db.default.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&unnamed.answers), ["10.42.0.8"]);
    // Not ready: not published.
    assert_negative(
        &ask(&z, "db-2.db.default.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
    let srv = ask(
        &z,
        "_http._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        data(&srv.answers),
        [
            "0 33 8080 db-0.db.default.svc.cluster.local.",
            "0 33 8080 db-1.db.default.svc.cluster.local.",
            "0 33 8080 10-42-0-8.db.default.svc.cluster.local.",
        ]
    );
    assert_eq!(
        data(&srv.additionals),
        ["10.42.0.5", "10.42.0.6", "10.42.0.8"]
    );
    assert_eq!(
        srv.additionals[0].name().to_ascii(),
        "db-0.db.default.svc.cluster.local."
    );
}

#[test]
fn a_headless_service_without_ready_endpoints_does_not_exist() {
    let z = zone(
        vec![headless("db")],
        vec![slice("db", &[("10.42.0.7", Some("db-0"), false)])],
    );
    assert_negative(
        &ask(&z, "db.default.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
}

#[test]
fn an_external_name_service_is_a_cname_followed_inside_the_cluster() {
    let outside = json!({"metadata": {"name": "ext", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "Example.COM"}});
    let inside = json!({"metadata": {"name": "alias", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}});
    let z = zone(
        vec![outside, inside, cluster_ip("web", "10.43.0.20")],
        vec![],
    );
    let a = ask(&z, "ext.default.svc.cluster.local.", RecordType::A);
    assert_eq!(a.code, ResponseCode::NoError);
    assert_eq!(data(&a.answers), ["example.com."]);
    assert_eq!(a.answers[0].record_type(), RecordType::CNAME);
    let a = ask(&z, "alias.default.svc.cluster.local.", RecordType::A);
    assert_eq!(
        data(&a.answers),
        ["web.default.svc.cluster.local.", "10.43.0.20"]
    );
}

#[test]
fn pod_names_resolve_to_the_address_they_spell() {
    let z = zone(vec![], vec![]);
    let a = ask(&z, "10-42-0-9.default.pod.cluster.local.", RecordType::A);
    assert_eq!(data(&a.answers), ["10.42.0.9"]);
    assert_negative(
        &ask(&z, "10-42-0-9.default.pod.cluster.local.", RecordType::AAAA),
        ResponseCode::NoError,
    );
    assert_negative(
        &ask(&z, "not-an-ip.default.pod.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
}

#[test]
fn reverse_lookups_name_services_and_endpoints_and_fall_through_otherwise() {
    let z = zone(
        vec![cluster_ip("web", "10.43.0.20"), headless("db")],
        vec![slice(
            "db",
            &[("10.42.0.5", Some("db-0"), true), ("10.42.0.8", None, true)],
        )],
    );
    let ptr = ask(&z, "20.0.43.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(data(&ptr.answers), ["web.default.svc.cluster.local."]);
    let ptr = ask(&z, "5.0.42.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(data(&ptr.answers), ["db-0.db.default.svc.cluster.local."]);
    let ptr = ask(&z, "8.0.42.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        data(&ptr.answers),
        ["10-42-0-8.db.default.svc.cluster.local."]
    );
    let unknown = Name::from_ascii("1.1.168.192.in-addr.arpa.").unwrap();
    assert_eq!(z.answer(&unknown, RecordType::PTR), Outcome::Forward);
    let outside = Name::from_ascii("example.com.").unwrap();
    assert_eq!(z.answer(&outside, RecordType::A), Outcome::Forward);
    assert_eq!(
        reverse_ip(
            &Name::from_ascii(
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa."
            )
            .unwrap()
        ),
        Some("fd00::1".parse().unwrap())
    );
}

#[test]
fn the_schema_version_is_published() {
    let z = zone(vec![], vec![]);
    let txt = ask(&z, "dns-version.cluster.local.", RecordType::TXT);
    assert_eq!(data(&txt.answers), ["1.1.0"]);
}
