//! DNS-SD discovery on the LAN (`mdns-sd`).
//!
//! Advertises [`crate::SERVICE_TYPE`] with an instance named after the peer id and a TXT
//! record holding only `id=<peer id>` and `v=<MAP version>`; browses for the same type and
//! hands every resolved peer (with dialable addresses: IPv4, and IPv6 that is not
//! link-local) to the swarm, which dials it and lets MAP decide.

use std::net::IpAddr;

use kos_map_protocol::{MAP_VERSION, NodeId};
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::SERVICE_TYPE;

/// A peer found on the LAN.
#[derive(Debug)]
pub(crate) struct Discovered {
    pub id: NodeId,
    pub addrs: Vec<String>,
}

pub(crate) struct Discovery {
    daemon: ServiceDaemon,
    fullname: String,
    rx: Option<mpsc::Receiver<Discovered>>,
}

fn dialable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_multicast(),
        // fe80::/10 needs a scope id to dial; skip it.
        IpAddr::V6(v6) => {
            !v6.is_unspecified() && !v6.is_multicast() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

impl Discovery {
    /// Registers this node and starts browsing. `interfaces`: names to use (empty: all).
    pub fn start(id: &NodeId, port: u16, interfaces: &[String]) -> Result<Self, String> {
        let daemon = ServiceDaemon::new().map_err(|e| e.to_string())?;
        // Notice interfaces that come up after start within a second, not the default five.
        daemon.set_ip_check_interval(1).map_err(|e| e.to_string())?;
        if !interfaces.is_empty() {
            daemon
                .disable_interface(IfKind::All)
                .map_err(|e| e.to_string())?;
            for i in interfaces {
                daemon
                    .enable_interface(IfKind::Name(i.clone()))
                    .map_err(|e| e.to_string())?;
            }
        }
        let id_s = id.to_string();
        // Host names must be DNS labels; the peer id is 52 alphanumerics, which fits.
        let host = format!("kos-{}.local.", id_s.to_ascii_lowercase());
        let version = MAP_VERSION.to_string();
        let props = [("id", id_s.as_str()), ("v", version.as_str())];
        let info = ServiceInfo::new(SERVICE_TYPE, &id_s, &host, "", port, &props[..])
            .map_err(|e| e.to_string())?
            .enable_addr_auto();
        let fullname = info.get_fullname().to_string();
        daemon.register(info).map_err(|e| e.to_string())?;
        let browse = daemon.browse(SERVICE_TYPE).map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel(64);
        let own = *id;
        tokio::spawn(async move {
            while let Ok(ev) = browse.recv_async().await {
                let ServiceEvent::ServiceResolved(svc) = ev else {
                    continue;
                };
                let Some(peer) = svc
                    .get_property_val_str("id")
                    .and_then(|s| s.parse::<NodeId>().ok())
                else {
                    debug!(name = %svc.get_fullname(), "DNS-SD service without a valid id");
                    continue;
                };
                if peer == own {
                    continue;
                }
                let port = svc.get_port();
                let addrs: Vec<String> = svc
                    .get_addresses()
                    .iter()
                    .map(|a| a.to_ip_addr())
                    .filter(dialable)
                    .map(|ip| match ip {
                        IpAddr::V4(v4) => format!("/ip4/{v4}/tcp/{port}"),
                        IpAddr::V6(v6) => format!("/ip6/{v6}/tcp/{port}"),
                    })
                    .collect();
                if addrs.is_empty() {
                    continue;
                }
                // Bounded: when the swarm is busy, a rediscovery later will carry the peer.
                if tx.try_send(Discovered { id: peer, addrs }).is_err() && tx.is_closed() {
                    break;
                }
            }
        });
        Ok(Self {
            daemon,
            fullname,
            rx: Some(rx),
        })
    }

    pub fn take_receiver(&mut self) -> Option<mpsc::Receiver<Discovered>> {
        self.rx.take()
    }

    /// Withdraws the advertisement and stops the daemon.
    pub fn stop(self) {
        if let Err(e) = self.daemon.unregister(&self.fullname) {
            warn!(error = %e, "DNS-SD unregister failed");
        }
        let _ = self.daemon.shutdown();
    }
}
