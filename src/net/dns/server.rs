//! The DNS request handler: cluster names from [`Zone`], everything else through the
//! node's upstream resolvers (as CoreDNS's `forward . /etc/resolv.conf`), and the
//! sockets it is served on (UDP and TCP, port 53).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::ProtoErrorKind;
use hickory_resolver::config::{NameServerConfigGroup, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;

use super::records::{Answer, Outcome, Zone};

/// How long a TCP client may stay idle (CoreDNS's read timeout is a few seconds too).
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// One upstream query's timeout; with two attempts a client sees an answer (or SERVFAIL)
/// before its own resolver, at 5 s, gives up.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers queries; cheap to share between the UDP and TCP tasks.
pub struct Handler {
    zone: Zone,
    upstream: Option<TokioResolver>,
}

impl Handler {
    /// `upstream`: the resolver for names outside the cluster, none to answer SERVFAIL.
    pub fn new(zone: Zone, upstream: Option<TokioResolver>) -> Handler {
        Handler { zone, upstream }
    }

    /// An ExternalName's CNAME to a name outside the cluster: its addresses from the
    /// upstream resolvers appended, as CoreDNS does, so that clients get them in one answer.
    async fn follow_external(&self, mut answer: Answer, kind: RecordType) -> Answer {
        if !matches!(kind, RecordType::A | RecordType::AAAA) {
            return answer;
        }
        let target = match answer.answers.last().map(|r| r.data()) {
            Some(RData::CNAME(target)) if !self.zone.domain().zone_of(&target.0) => {
                target.0.clone()
            }
            _ => return answer,
        };
        let followed = self.forward(&target, kind).await;
        if followed.code == ResponseCode::NoError {
            answer.answers.extend(followed.answers);
        }
        answer
    }

    async fn forward(&self, name: &Name, kind: RecordType) -> Answer {
        let servfail = Answer::failure(ResponseCode::ServFail);
        let Some(resolver) = &self.upstream else {
            return servfail;
        };
        match resolver.lookup(name.clone(), kind).await {
            Ok(lookup) => Answer {
                code: ResponseCode::NoError,
                answers: lookup.records().to_vec(),
                ..servfail
            },
            Err(error) => match error.proto().map(|e| e.kind()) {
                Some(ProtoErrorKind::NoRecordsFound {
                    response_code, soa, ..
                }) => Answer {
                    code: *response_code,
                    authority: soa
                        .iter()
                        .map(|soa| soa.as_ref().clone().into_record_of_rdata())
                        .collect(),
                    ..servfail
                },
                _ => {
                    tracing::debug!(%name, %kind, %error, "forwarding to the upstream resolvers failed");
                    servfail
                }
            },
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(true);
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = request.edns() {
            let mut ours = Edns::new();
            ours.set_max_payload(edns.max_payload().max(512));
            builder.edns(ours);
        }
        let answer = match request.request_info() {
            Ok(info)
                if request.message_type() == MessageType::Query
                    && request.op_code() == OpCode::Query =>
            {
                let name = Name::from(info.query.name());
                let kind = info.query.query_type();
                match self.zone.answer(&name, kind) {
                    Outcome::Answer(answer) => {
                        header.set_authoritative(true);
                        self.follow_external(answer, kind).await
                    }
                    Outcome::Forward => self.forward(&name, kind).await,
                }
            }
            Ok(_) => Answer::failure(ResponseCode::NotImp),
            Err(_) => Answer::failure(ResponseCode::FormErr),
        };
        header.set_response_code(answer.code);
        let message = builder.build(
            header,
            answer.answers.iter(),
            answer.authority.iter(),
            std::iter::empty(),
            answer.additionals.iter(),
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "sending a DNS response failed");
                ResponseInfo::from(header)
            }
        }
    }
}

/// The resolver for names outside the cluster: the nameservers of `resolv_conf` (the
/// node's), less `exclude` (the cluster DNS itself: forwarding there would loop). None
/// when the file names no other nameserver.
pub fn upstream(resolv_conf: &Path, exclude: &[IpAddr]) -> Option<TokioResolver> {
    let content = match std::fs::read(resolv_conf) {
        Ok(content) => content,
        Err(error) => {
            tracing::warn!(path = %resolv_conf.display(), %error, "no upstream resolvers: names outside the cluster answer SERVFAIL");
            return None;
        }
    };
    let (parsed, mut options) = match hickory_resolver::system_conf::parse_resolv_conf(content) {
        Ok(parsed) => parsed,
        Err(error) => {
            tracing::warn!(path = %resolv_conf.display(), %error, "unreadable resolv.conf: names outside the cluster answer SERVFAIL");
            return None;
        }
    };
    let servers: Vec<_> = parsed
        .name_servers()
        .iter()
        .filter(|s| !exclude.contains(&s.socket_addr.ip()))
        .cloned()
        .collect();
    if servers.is_empty() {
        tracing::warn!(path = %resolv_conf.display(), "no upstream resolvers: names outside the cluster answer SERVFAIL");
        return None;
    }
    tracing::info!(upstream = ?servers.iter().map(|s| s.socket_addr).collect::<Vec<_>>(), "cluster DNS forwards other names");
    let config = ResolverConfig::from_parts(None, Vec::new(), NameServerConfigGroup::from(servers));
    // Queries arrive fully qualified: no search list, no hosts file, the upstream's
    // answers as they are (CNAME chains kept).
    options.ndots = 0;
    options.use_hosts_file = ResolveHosts::Never;
    options.preserve_intermediates = true;
    options.timeout = UPSTREAM_TIMEOUT;
    options.attempts = 2;
    Some(
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(options)
            .build(),
    )
}

/// The UDP socket and TCP listener of `address`, bound with `IP_FREEBIND`: the address
/// may not be on any link yet (the bridge gets the pod gateway with the first pod), and
/// queries arrive once it is.
pub fn listen(
    address: SocketAddr,
) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let udp = std::net::UdpSocket::from(bind(address, socket2::Type::DGRAM)?);
    let tcp = std::net::TcpListener::from(bind(address, socket2::Type::STREAM)?);
    Ok((udp, tcp))
}

/// Serves `handler` on the sockets of [`listen`] until the process ends.
pub async fn serve(
    handler: Handler,
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
) -> std::io::Result<()> {
    let mut server = ServerFuture::new(handler);
    server.register_socket(tokio::net::UdpSocket::from_std(udp)?);
    server.register_listener(tokio::net::TcpListener::from_std(tcp)?, TCP_TIMEOUT);
    server
        .block_until_done()
        .await
        .map_err(std::io::Error::other)
}

fn bind(address: SocketAddr, kind: socket2::Type) -> std::io::Result<socket2::Socket> {
    let protocol = if kind == socket2::Type::DGRAM {
        socket2::Protocol::UDP
    } else {
        socket2::Protocol::TCP
    };
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), kind, Some(protocol))?;
    socket.set_reuse_address(true)?;
    if address.is_ipv4() {
        socket.set_freebind_v4(true)?;
    } else {
        socket.set_freebind_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    if kind == socket2::Type::STREAM {
        socket.listen(1024)?;
    }
    Ok(socket)
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
