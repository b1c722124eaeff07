//! The node's route to the service CIDR: through the link [`SERVICE_LINK`], an empty bridge
//! used as a dummy (as kube-proxy's IPVS mode has `kube-ipvs0`; a bridge rather than a
//! `dummy` link because every kernel that runs the pod network has bridges, while dummy
//! links need CONFIG_DUMMY), so that the node's own connections to a
//! ClusterIP find a route before nat output DNATs them, and pod traffic to an address with
//! no Service reaches the forward hook (where it is rejected) instead of the default route:
//! service traffic is never routed off the node.

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::LinkFlags;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};

use super::ProxyError;

/// The portless bridge the service CIDR is routed to; packets sent to it go nowhere.
pub const SERVICE_LINK: &str = "kedge-svc";

fn netlink(action: &str) -> impl FnOnce(rtnetlink::Error) -> ProxyError + '_ {
    move |e| ProxyError::Route {
        action: action.to_string(),
        message: e.to_string(),
    }
}

async fn handle() -> Result<Handle, ProxyError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| ProxyError::Route {
        action: "opening a netlink socket".into(),
        message: e.to_string(),
    })?;
    tokio::spawn(connection);
    Ok(handle)
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<(u32, bool)>, ProxyError> {
    let found = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match found {
        Ok(Some(link)) => Ok(Some((
            link.header.index,
            link.header.flags.contains(LinkFlags::Up),
        ))),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => Ok(None),
        Err(e) => Err(netlink("looking up the service link")(e)),
    }
}

/// Creates the service link (up) and routes `service_cidr` to it; idempotent.
pub async fn ensure(service_cidr: Ipv4Net) -> Result<(), ProxyError> {
    let handle = handle().await?;
    let index = match link_index(&handle, SERVICE_LINK).await? {
        Some((index, true)) => index,
        Some((index, false)) => {
            handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(netlink("setting the service link up"))?;
            index
        }
        None => {
            handle
                .link()
                .add(LinkBridge::new(SERVICE_LINK).up().build())
                .execute()
                .await
                .map_err(netlink("creating the service link"))?;
            link_index(&handle, SERVICE_LINK)
                .await?
                .ok_or_else(|| ProxyError::Route {
                    action: "finding the service link just created".into(),
                    message: "not found".into(),
                })?
                .0
        }
    };
    let route = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
        .destination_prefix(service_cidr.network(), service_cidr.prefix_len())
        .output_interface(index)
        .build();
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(netlink("routing the service CIDR to the service link"))
}

/// Removes the service link (its route goes with it); false if there was none.
pub async fn remove() -> Result<bool, ProxyError> {
    let handle = handle().await?;
    let Some((index, _)) = link_index(&handle, SERVICE_LINK).await? else {
        return Ok(false);
    };
    handle
        .link()
        .del(index)
        .execute()
        .await
        .map_err(netlink("deleting the service link"))?;
    Ok(true)
}
