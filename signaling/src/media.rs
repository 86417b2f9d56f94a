//! Binding the media port: which sockets to open and which addresses to advertise.

use std::net::{IpAddr, SocketAddr};

use sfu::driver::MediaSocket;
use tokio::net::UdpSocket;

use crate::config::ServerConfig;

/// Binds the UDP media port.
///
/// ICE needs to know which local address a packet arrived on, and a wildcard socket does not
/// say. So on a wildcard bind the same port is bound once per interface address (one port,
/// several sockets), each advertising its own address. A specific bind address is used as is.
/// Public IPs, when configured, replace the advertised address (1:1 NAT).
pub async fn bind_media(config: &ServerConfig) -> std::io::Result<Vec<MediaSocket>> {
    let ips: Vec<IpAddr> = if config.udp.ip().is_unspecified() {
        interface_ips(config.include_loopback, config.udp.is_ipv4())
    } else {
        vec![config.udp.ip()]
    };
    if ips.is_empty() {
        return Err(std::io::Error::other(
            "no usable network interface for media",
        ));
    }
    let mut sockets = Vec::new();
    let mut port = config.udp.port();
    for ip in ips {
        let socket = UdpSocket::bind(SocketAddr::new(ip, port)).await?;
        let bound = socket.local_addr()?;
        // With port 0 the first socket picks the port and the others share it.
        port = bound.port();
        sockets.push(MediaSocket {
            socket,
            advertised: bound,
        });
    }
    if !config.public_ips.is_empty() {
        // Keep the bound sockets; advertise the public addresses in their place (one per
        // socket, the last public IP repeated if there are fewer).
        for (i, socket) in sockets.iter_mut().enumerate() {
            let ip = config.public_ips[i.min(config.public_ips.len() - 1)];
            socket.advertised = SocketAddr::new(ip, port);
        }
    }
    Ok(sockets)
}

fn interface_ips(include_loopback: bool, v4: bool) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|iface| iface.ip())
        .filter(|ip| ip.is_ipv4() == v4)
        .filter(|ip| include_loopback || !ip.is_loopback())
        // Link-local IPv6 needs a scope id that SDP candidates cannot carry.
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}
