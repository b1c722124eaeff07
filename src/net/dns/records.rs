//! The cluster's DNS records, computed per query from the Service and EndpointSlice caches:
//! the Kubernetes DNS specification (kubernetes/dns `docs/specification.md`, schema 1.1.0)
//! as CoreDNS's `kubernetes` plugin serves it under k3s (`pods insecure`, TTL 5, reverse
//! zones fall through to the upstream resolvers).
//!
//! Pure: [`Zone::answer`] maps (name, type) to an [`Outcome`]; sockets and forwarding are
//! the server's ([`super::server`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};

/// CoreDNS's default TTL for cluster records (and the SOA's negative TTL).
pub const TTL: u32 = 5;
/// The schema version the `dns-version` TXT record announces.
const SCHEMA_VERSION: &str = "1.1.0";
/// The label EndpointSlices name their Service by.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What to do with a query.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Answered from the cluster (authoritatively).
    Answer(Answer),
    /// Not the cluster's: ask the upstream resolvers.
    Forward,
}

/// An authoritative answer: NOERROR with records, NOERROR without (NODATA: the name
/// exists, not with that type) or NXDOMAIN; the zone's SOA goes in the authority section
/// of the last two, as negative caching wants.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
    pub authority: Vec<Record>,
}

impl Answer {
    /// An answer with only a response code (SERVFAIL, FORMERR, NOTIMP).
    pub fn failure(code: ResponseCode) -> Answer {
        Answer {
            code,
            answers: Vec::new(),
            additionals: Vec::new(),
            authority: Vec::new(),
        }
    }
}

/// The cluster domain's records, read from the caches at each query.
#[derive(Clone)]
pub struct Zone {
    /// The cluster domain, fully qualified and lowercase (`cluster.local.`).
    domain: Name,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
}

/// A ready endpoint of a Service: its address and the name it has under the Service.
struct Endpoint {
    ip: IpAddr,
    hostname: String,
    ports: Vec<(String, String, u16)>,
}

impl Zone {
    /// The zone of `domain` (such as `cluster.local`) over the two caches.
    pub fn new(
        domain: &str,
        services: Store<Service>,
        slices: Store<EndpointSlice>,
    ) -> Result<Zone, hickory_proto::ProtoError> {
        let mut domain = Name::from_ascii(domain)?.to_lowercase();
        domain.set_fqdn(true);
        Ok(Zone {
            domain,
            services,
            slices,
        })
    }

    /// The cluster domain.
    pub fn domain(&self) -> &Name {
        &self.domain
    }

    /// Waits until both caches have listed the cluster once.
    pub async fn wait_until_ready(
        &self,
    ) -> Result<(), kube::runtime::reflector::store::WriterDropped> {
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await
    }

    /// The answer to `name` (any case) of type `kind`.
    pub fn answer(&self, name: &Name, kind: RecordType) -> Outcome {
        let name = name.to_lowercase();
        if self.domain.zone_of(&name) {
            let labels: Vec<String> = name
                .iter()
                .take(name.num_labels() as usize - self.domain.num_labels() as usize)
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect();
            return Outcome::Answer(self.in_zone(&name, &labels, kind));
        }
        if kind == RecordType::PTR {
            if let Some(ip) = reverse_ip(&name) {
                if let Some(target) = self.reverse(ip) {
                    let ptr = Record::from_rdata(name, TTL, RData::PTR(PTR(target)));
                    return Outcome::Answer(self.records(vec![ptr], Vec::new()));
                }
            }
        }
        // As k3s's Corefile: `fallthrough in-addr.arpa ip6.arpa`, everything else `forward`.
        Outcome::Forward
    }

    fn in_zone(&self, name: &Name, labels: &[String], kind: RecordType) -> Answer {
        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        match refs.as_slice() {
            [] => match kind {
                RecordType::SOA => self.records(vec![self.soa()], Vec::new()),
                RecordType::NS => {
                    let ns = Record::from_rdata(name.clone(), TTL, RData::NS(NS(self.ns_name())));
                    self.records(vec![ns], Vec::new())
                }
                _ => self.nodata(),
            },
            ["dns-version"] => match kind {
                RecordType::TXT => {
                    let txt = TXT::new(vec![SCHEMA_VERSION.to_string()]);
                    self.records(
                        vec![Record::from_rdata(name.clone(), TTL, RData::TXT(txt))],
                        Vec::new(),
                    )
                }
                _ => self.nodata(),
            },
            ["svc"] | ["pod"] => self.nodata(),
            [namespace, "svc"] | [namespace, "pod"] => {
                if self.has_namespace(namespace) {
                    self.nodata()
                } else {
                    self.nxdomain()
                }
            }
            [service, namespace, "svc"] => self.service(name, namespace, service, None, kind),
            [host, service, namespace, "svc"] => {
                self.service(name, namespace, service, Some(host), kind)
            }
            [port, protocol, service, namespace, "svc"]
                if port.starts_with('_') && protocol.starts_with('_') =>
            {
                let port = (&port[1..], &protocol[1..]);
                self.ports(name, namespace, service, port, kind)
            }
            [ip, _namespace, "pod"] => match pod_ip(ip) {
                Some(ip) => self.addresses(name, &[ip], kind),
                None => self.nxdomain(),
            },
            _ => self.nxdomain(),
        }
    }

    /// `<service>.<ns>.svc` or, with `host`, `<host>.<service>.<ns>.svc`.
    fn service(
        &self,
        name: &Name,
        namespace: &str,
        service: &str,
        host: Option<&str>,
        kind: RecordType,
    ) -> Answer {
        let Some(svc) = self.find_service(namespace, service) else {
            return self.nxdomain();
        };
        if host.is_none() {
            if let Some(target) = external_name(&svc) {
                return self.cname(name, &target, kind);
            }
        }
        if host.is_none() && !headless(&svc) {
            // A ClusterIP Service: its cluster addresses; SRV for each of its ports.
            if kind == RecordType::SRV {
                return self.ports(name, namespace, service, ("", ""), kind);
            }
            return self.addresses(name, &cluster_ips(&svc), kind);
        }
        let endpoints: Vec<Endpoint> = self
            .endpoints(namespace, service)
            .into_iter()
            .filter(|e| host.is_none_or(|h| e.hostname == h))
            .collect();
        if endpoints.is_empty() {
            // CoreDNS: a name with no ready endpoint behind it does not exist.
            return self.nxdomain();
        }
        if kind == RecordType::SRV && host.is_none() {
            return self.ports(name, namespace, service, ("", ""), kind);
        }
        let ips: Vec<IpAddr> = endpoints.iter().map(|e| e.ip).collect();
        self.addresses(name, &ips, kind)
    }

    /// SRV records of `service`'s ports matching `(port name, protocol)` (empty: any).
    fn ports(
        &self,
        name: &Name,
        namespace: &str,
        service: &str,
        (port, protocol): (&str, &str),
        kind: RecordType,
    ) -> Answer {
        let Some(svc) = self.find_service(namespace, service) else {
            return self.nxdomain();
        };
        let matches = |p_name: &str, p_protocol: &str| {
            (port.is_empty() || port == "*" || p_name.eq_ignore_ascii_case(port))
                && (protocol.is_empty()
                    || protocol == "*"
                    || p_protocol.eq_ignore_ascii_case(protocol))
        };
        let service_name = self.service_name(namespace, service);
        // (target, port, addresses of the target)
        let mut targets: Vec<(Name, u16, Vec<IpAddr>)> = Vec::new();
        if let Some(external) = external_name(&svc) {
            return self.cname(name, &external, kind);
        }
        if headless(&svc) {
            for endpoint in self.endpoints(namespace, service) {
                let Ok(target) = Name::from_ascii(&endpoint.hostname)
                    .and_then(|host| host.append_domain(&service_name))
                else {
                    continue;
                };
                for (p_name, p_protocol, number) in &endpoint.ports {
                    if matches(p_name, p_protocol) {
                        targets.push((target.clone(), *number, vec![endpoint.ip]));
                    }
                }
            }
        } else {
            for p in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
                let p_name = p.name.as_deref().unwrap_or_default();
                if matches(p_name, p.protocol.as_deref().unwrap_or("TCP")) {
                    let port = u16::try_from(p.port).unwrap_or_default();
                    targets.push((service_name.clone(), port, cluster_ips(&svc)));
                }
            }
        }
        if targets.is_empty() {
            return self.nxdomain();
        }
        if kind != RecordType::SRV {
            return self.nodata();
        }
        // CoreDNS's weights: 100 shared among the records of one priority.
        let weight = u16::try_from(100 / targets.len()).unwrap_or(1);
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        let mut seen = BTreeSet::new();
        for (target, port, ips) in targets {
            let srv = SRV::new(0, weight, port, target.clone());
            answers.push(Record::from_rdata(name.clone(), TTL, RData::SRV(srv)));
            for ip in ips {
                if seen.insert((target.clone(), ip)) {
                    additionals.push(address_record(&target, ip));
                }
            }
        }
        self.records(answers, additionals)
    }

    /// A/AAAA of `ips` for `name`; NODATA for other types.
    fn addresses(&self, name: &Name, ips: &[IpAddr], kind: RecordType) -> Answer {
        let mut unique: Vec<IpAddr> = Vec::new();
        for ip in ips {
            if !unique.contains(ip) {
                unique.push(*ip);
            }
        }
        let answers: Vec<Record> = unique
            .into_iter()
            .filter(|ip| match kind {
                RecordType::A => ip.is_ipv4(),
                RecordType::AAAA => ip.is_ipv6(),
                RecordType::ANY => true,
                _ => false,
            })
            .map(|ip| address_record(name, ip))
            .collect();
        self.records(answers, Vec::new())
    }

    /// An ExternalName Service: a CNAME to its target, followed when the target is in the
    /// cluster domain (CoreDNS resolves out-of-zone targets with the upstream resolvers;
    /// clients do the same with the CNAME).
    fn cname(&self, name: &Name, target: &Name, kind: RecordType) -> Answer {
        let mut answers = vec![Record::from_rdata(
            name.clone(),
            TTL,
            RData::CNAME(CNAME(target.clone())),
        )];
        if kind != RecordType::CNAME && self.domain.zone_of(target) && target != name {
            if let Outcome::Answer(chased) = self.answer(target, kind) {
                // One level only: a chain of ExternalNames is not followed further.
                answers.extend(
                    chased
                        .answers
                        .into_iter()
                        .filter(|r| r.record_type() != RecordType::CNAME),
                );
            }
        }
        Answer {
            code: ResponseCode::NoError,
            answers,
            additionals: Vec::new(),
            authority: Vec::new(),
        }
    }

    /// The name `ip` has in the cluster: a Service's for its cluster address, an
    /// endpoint's (`<hostname>.<service>.<ns>.svc`) for a ready endpoint address.
    fn reverse(&self, ip: IpAddr) -> Option<Name> {
        let text = ip.to_string();
        if let Some(svc) = self.services.find(|s| {
            s.spec.as_ref().is_some_and(|spec| {
                spec.cluster_ips
                    .iter()
                    .flatten()
                    .chain(spec.cluster_ip.iter())
                    .any(|c| *c == text)
            })
        }) {
            let namespace = svc.metadata.namespace.as_deref().unwrap_or_default();
            let service = svc.metadata.name.as_deref().unwrap_or_default();
            return Some(self.service_name(namespace, service));
        }
        for slice in self.slices.state() {
            let Some(service) = slice_service(&slice) else {
                continue;
            };
            let namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
            for endpoint in slice_endpoints(&slice) {
                if endpoint.ip == ip {
                    let host = Name::from_ascii(&endpoint.hostname).ok()?;
                    return host
                        .append_domain(&self.service_name(namespace, service))
                        .ok();
                }
            }
        }
        None
    }

    /// The ready endpoints of `service`, over all its EndpointSlices.
    fn endpoints(&self, namespace: &str, service: &str) -> Vec<Endpoint> {
        let mut found: Vec<Endpoint> = Vec::new();
        let slices = self.slices.state_filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace) && slice_service(s) == Some(service)
        });
        for slice in slices {
            for endpoint in slice_endpoints(&slice) {
                match found.iter_mut().find(|e| e.ip == endpoint.ip) {
                    Some(known) => known.ports.extend(endpoint.ports),
                    None => found.push(endpoint),
                }
            }
        }
        found
    }

    fn find_service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(namespace))
    }

    fn has_namespace(&self, namespace: &str) -> bool {
        self.services
            .find(|s| s.metadata.namespace.as_deref() == Some(namespace))
            .is_some()
    }

    /// `<service>.<ns>.svc.<domain>`.
    fn service_name(&self, namespace: &str, service: &str) -> Name {
        Name::from_ascii(format!("{service}.{namespace}.svc"))
            .and_then(|n| n.append_domain(&self.domain))
            .unwrap_or_else(|_| self.domain.clone())
    }

    fn ns_name(&self) -> Name {
        Name::from_ascii("ns.dns")
            .and_then(|n| n.append_domain(&self.domain))
            .unwrap_or_else(|_| self.domain.clone())
    }

    /// The zone's SOA, as CoreDNS's (`ns.dns.<domain>`, `hostmaster.<domain>`, TTL 5).
    pub fn soa(&self) -> Record {
        let hostmaster = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&self.domain))
            .unwrap_or_else(|_| self.domain.clone());
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let soa = SOA::new(self.ns_name(), hostmaster, serial, 7200, 1800, 86400, TTL);
        Record::from_rdata(self.domain.clone(), TTL, RData::SOA(soa))
    }

    /// NOERROR with `answers`, or NODATA when there are none.
    fn records(&self, answers: Vec<Record>, additionals: Vec<Record>) -> Answer {
        if answers.is_empty() {
            return self.nodata();
        }
        Answer {
            code: ResponseCode::NoError,
            answers,
            additionals,
            authority: Vec::new(),
        }
    }

    fn nodata(&self) -> Answer {
        Answer {
            code: ResponseCode::NoError,
            answers: Vec::new(),
            additionals: Vec::new(),
            authority: vec![self.soa()],
        }
    }

    fn nxdomain(&self) -> Answer {
        Answer {
            code: ResponseCode::NXDomain,
            ..self.nodata()
        }
    }
}

fn address_record(name: &Name, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(ip) => RData::A(A(ip)),
        IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
    };
    Record::from_rdata(name.clone(), TTL, rdata)
}

/// Headless: `clusterIP: None` (an ExternalName Service has no cluster address either,
/// but is answered with its CNAME first).
fn headless(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_none_or(|ip| ip.is_empty() || ip == "None")
}

fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let listed = spec.cluster_ips.iter().flatten();
    listed
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

fn external_name(svc: &Service) -> Option<Name> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() != Some("ExternalName") {
        return None;
    }
    let mut target = Name::from_ascii(spec.external_name.as_deref()?)
        .ok()?
        .to_lowercase();
    target.set_fqdn(true);
    Some(target)
}

fn slice_service(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)
        .map(String::as_str)
}

/// A slice's ready endpoints (`conditions.ready` unset counts as ready, as upstream), each
/// named by its `hostname` or, without one, its address with dashes (CoreDNS).
fn slice_endpoints(slice: &EndpointSlice) -> Vec<Endpoint> {
    let ports: Vec<(String, String, u16)> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.name.clone().unwrap_or_default(),
                p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                u16::try_from(p.port?).ok()?,
            ))
        })
        .collect();
    let mut out = Vec::new();
    for endpoint in &slice.endpoints {
        if !crate::net::endpoint_ready(endpoint) {
            continue;
        }
        for address in &endpoint.addresses {
            let Ok(ip) = address.parse::<IpAddr>() else {
                continue;
            };
            let hostname = endpoint.hostname.clone().unwrap_or_else(|| dashed(ip));
            out.push(Endpoint {
                ip,
                hostname,
                ports: ports.clone(),
            });
        }
    }
    out
}

/// `10.42.0.5` → `10-42-0-5`, `fd00::1` → `fd00--1`.
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The address of a `<a-b-c-d>.<ns>.pod` label (IPv6 with `-` for `:`).
fn pod_ip(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = Ipv4Addr::from_str(&label.replace('-', ".")) {
        if label.split('-').count() == 4 {
            return Some(IpAddr::V4(v4));
        }
    }
    Ipv6Addr::from_str(&label.replace('-', ":"))
        .ok()
        .map(IpAddr::V6)
}

/// The address a `…in-addr.arpa.` / `…ip6.arpa.` name stands for.
fn reverse_ip(name: &Name) -> Option<IpAddr> {
    let text = name.to_ascii().to_lowercase();
    let text = text.trim_end_matches('.');
    if let Some(rest) = text.strip_suffix(".in-addr.arpa") {
        let mut octets: Vec<&str> = rest.split('.').collect();
        if octets.len() != 4 {
            return None;
        }
        octets.reverse();
        return octets.join(".").parse().ok();
    }
    let rest = text.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<&str> = rest.split('.').collect();
    if nibbles.len() != 32 || nibbles.iter().any(|n| n.len() != 1) {
        return None;
    }
    let hex: String = nibbles.iter().rev().copied().collect();
    let value = u128::from_str_radix(&hex, 16).ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(value)))
}

#[cfg(test)]
#[path = "records_tests.rs"]
pub(crate) mod tests;
