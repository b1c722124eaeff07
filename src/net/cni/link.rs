//! The netlink operations of the pod network, over rtnetlink: the bridge and its address,
//! veth pairs, a pod's `eth0` address and default route, and the lookups setup, teardown
//! and reclaim need.
//!
//! A [`Handle`] talks to the namespace its socket was opened in: [`connect_host`] on any
//! tokio worker (they never change namespace) reaches the node's, [`connect_in`] opens the
//! socket on a short-lived thread that joined the pod's namespace and then drives it from
//! the runtime like any other.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::CniError;
use crate::runtime::netns;

const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;

/// A netlink handle in the calling thread's namespace (the node's, on a tokio worker).
pub async fn connect_host() -> Result<Handle, CniError> {
    let (connection, handle, _) = rtnetlink::new_connection()
        .map_err(|e| CniError::io("opening a netlink socket in the node's namespace", e))?;
    tokio::spawn(connection);
    Ok(handle)
}

/// A netlink handle in the namespace at `path`: the socket is opened by a thread that
/// joined it (and ends), then served by the runtime; the agent's threads stay where they are.
pub async fn connect_in(path: &Path) -> Result<Handle, CniError> {
    let runtime = tokio::runtime::Handle::current();
    let target = path.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || {
        netns::run_in(&target, move || {
            // The socket registers with the runtime's reactor; it stays in this namespace.
            let _entered = runtime.enter();
            rtnetlink::new_connection()
        })
    })
    .await
    .map_err(|e| CniError::io("opening a netlink socket", std::io::Error::other(e)))?;
    let (connection, handle, _) = opened.map_err(|e| {
        CniError::io(
            format!(
                "opening a netlink socket in the namespace {}",
                path.display()
            ),
            e,
        )
    })?;
    tokio::spawn(connection);
    Ok(handle)
}

fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}

fn netlink(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> CniError {
    let action = action.into();
    move |source| CniError::Netlink { action, source }
}

/// The link named `name`, if there is one.
pub async fn by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, CniError> {
    let found = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match found {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(netlink(format!("looking up the link {name}"))(e)),
    }
}

/// Every link of the namespace.
pub async fn all(handle: &Handle) -> Result<Vec<LinkMessage>, CniError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing links"))
}

pub fn name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

pub fn mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

/// The index of the bridge a link is a port of.
pub fn controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

/// The IPv4 addresses (with prefix lengths) on the link `index`.
pub async fn ipv4_addresses(
    handle: &Handle,
    index: u32,
) -> Result<Vec<(Ipv4Addr, u8, AddressMessage)>, CniError> {
    let messages: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing addresses"))?;
    Ok(messages
        .into_iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })?;
            Some((ip, m.header.prefix_len, m))
        })
        .collect())
}

/// The link holding `ip` (the node's address): its MTU, and whether it is a loopback.
pub async fn holder_of(handle: &Handle, ip: IpAddr) -> Result<Option<(u32, bool)>, CniError> {
    let addresses: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_address_filter(ip)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing addresses"))?;
    let Some(index) = addresses.first().map(|a| a.header.index) else {
        return Ok(None);
    };
    let link = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .map_err(netlink(format!("looking up the link of {ip}")))?;
    Ok(link.and_then(|l| {
        let loopback = l.header.flags.contains(LinkFlags::Loopback);
        mtu(&l).map(|m| (m, loopback))
    }))
}

/// Creates the bridge `name` if missing (MTU `mtu`), makes `gateway/prefix` its only IPv4
/// address (CNI bridge's `forceAddress`, as k3s configures it) and sets it up; returns its
/// index.
pub async fn ensure_bridge(
    handle: &Handle,
    name: &str,
    gateway: Ipv4Addr,
    prefix: u8,
    mtu: u32,
) -> Result<u32, CniError> {
    let bridge = match by_name(handle, name).await? {
        Some(link) => link,
        None => {
            let created = handle
                .link()
                .add(LinkBridge::new(name).mtu(mtu).build())
                .execute()
                .await;
            match created {
                Err(e) if errno(&e) != Some(EEXIST) => {
                    return Err(netlink(format!("creating the bridge {name}"))(e))
                }
                _ => {}
            }
            by_name(handle, name)
                .await?
                .ok_or_else(|| CniError::Netlink {
                    action: format!("finding the bridge {name} just created"),
                    source: rtnetlink::Error::RequestFailed,
                })?
        }
    };
    let index = bridge.header.index;
    let mut present = false;
    for (ip, length, message) in ipv4_addresses(handle, index).await? {
        if ip == gateway && length == prefix {
            present = true;
        } else {
            handle
                .address()
                .del(message)
                .execute()
                .await
                .map_err(netlink(format!(
                    "removing the stale address {ip} from {name}"
                )))?;
        }
    }
    if !present {
        match handle
            .address()
            .add(index, IpAddr::V4(gateway), prefix)
            .execute()
            .await
        {
            Err(e) if errno(&e) != Some(EEXIST) => {
                return Err(netlink(format!("adding {gateway}/{prefix} to {name}"))(e))
            }
            _ => {}
        }
    }
    if !bridge.header.flags.contains(LinkFlags::Up) || self::mtu(&bridge) != Some(mtu) {
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(netlink(format!("setting {name} up")))?;
    }
    Ok(index)
}

/// Creates the veth pair `host_name` (in the calling handle's namespace) and `pod_name`,
/// created directly inside the namespace at `pod_netns`: no temporary name ever exists in
/// the node's namespace.
pub async fn create_veth(
    handle: &Handle,
    host_name: &str,
    pod_netns: &Path,
    pod_name: &str,
    mtu: u32,
) -> Result<(), CniError> {
    let namespace = File::open(pod_netns).map_err(|e| {
        CniError::io(
            format!("opening the pod namespace {}", pod_netns.display()),
            e,
        )
    })?;
    let peer = LinkUnspec::new_with_name(pod_name)
        .mtu(mtu)
        .setns_by_fd(namespace.as_raw_fd())
        .build();
    let pair = LinkVeth::new(host_name, pod_name)
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    let created = handle.link().add(pair).execute().await;
    // The namespace file stays open until the kernel has used its descriptor.
    drop(namespace);
    created.map_err(netlink(format!(
        "creating the veth pair {host_name}/{pod_name}"
    )))
}

/// Attaches the link `index` to the bridge `bridge`, sets it up, and turns hairpin mode on
/// for the port (a pod reaching itself through its Service's address comes back this way).
pub async fn attach(handle: &Handle, index: u32, bridge: u32, name: &str) -> Result<(), CniError> {
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(netlink(format!("attaching {name} to the bridge")))?;
    handle
        .link()
        .set_port(LinkBridgePort::new(index).hairpin(true).build())
        .execute()
        .await
        .map_err(netlink(format!("turning hairpin mode on for {name}")))
}

/// Inside the pod: `lo` and `eth0` up, `ip/prefix` on `eth0`, default route via `gateway`.
pub async fn configure_pod(
    handle: &Handle,
    interface: &str,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<(), CniError> {
    for name in ["lo", interface] {
        let link = by_name(handle, name)
            .await?
            .ok_or_else(|| CniError::Netlink {
                action: format!("finding {name} in the pod's namespace"),
                source: rtnetlink::Error::RequestFailed,
            })?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(link.header.index).up().build())
            .execute()
            .await
            .map_err(netlink(format!("setting {name} up in the pod")))?;
        if name != interface {
            continue;
        }
        let index = link.header.index;
        if !ipv4_addresses(handle, index)
            .await?
            .iter()
            .any(|(a, p, _)| *a == ip && *p == prefix)
        {
            match handle
                .address()
                .add(index, IpAddr::V4(ip), prefix)
                .execute()
                .await
            {
                Err(e) if errno(&e) != Some(EEXIST) => {
                    return Err(netlink(format!("adding {ip}/{prefix} to the pod's {name}"))(e))
                }
                _ => {}
            }
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .build();
        match handle.route().add(route).execute().await {
            Err(e) if errno(&e) != Some(EEXIST) => {
                return Err(netlink(format!(
                    "adding the pod's default route via {gateway}"
                ))(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Deletes the link `name` (a veth takes its peer along); false if there was none.
pub async fn delete(handle: &Handle, name: &str) -> Result<bool, CniError> {
    let Some(link) = by_name(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
        Err(e) => Err(netlink(format!("deleting the link {name}"))(e)),
    }
}
