//! The public methods of [`Klp`], the handle: each is a command to the event loop.

use std::str::FromStr;

use kos_map_protocol::NodeId;
use libp2p::Multiaddr;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    Command, InboundCall, InboundSync, Klp, KlpError, MAX_CALL_METHOD, MAX_CALL_PATH, peer_id,
};
use crate::peers::PeerEntry;
use crate::{KlpEvent, PeerInfo};

impl Klp {
    pub fn local_id(&self) -> NodeId {
        self.local_id
    }

    /// A stream of events from now on (a slow receiver loses the oldest events).
    pub fn subscribe(&self) -> broadcast::Receiver<KlpEvent> {
        self.events.subscribe()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, KlpError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| KlpError::Stopped)?;
        rx.await.map_err(|_| KlpError::Stopped)
    }

    /// The addresses the swarm listens on (with actual ports).
    pub async fn listen_addrs(&self) -> Result<Vec<String>, KlpError> {
        self.ask(Command::ListenAddrs).await
    }

    /// Every peer known: approved, connected or discovered.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, KlpError> {
        self.ask(Command::Peers).await
    }

    /// Dials an address (ending in `/p2p/<id>` or not); admission still goes through MAP.
    pub async fn dial(&self, addr: &str) -> Result<(), KlpError> {
        let ma = Multiaddr::from_str(addr).map_err(|e| KlpError::Addr {
            addr: addr.into(),
            reason: e.to_string(),
        })?;
        self.ask(|tx| Command::Dial(ma, tx)).await?
    }

    /// Replaces the approved peers. Peers no longer allowed are told `Goodbye{revoked}` and
    /// disconnected; newly listed peers with addresses are dialed.
    pub async fn set_approved(
        &self,
        entries: Vec<PeerEntry>,
        handshake_required: bool,
    ) -> Result<(), KlpError> {
        self.ask(|reply| Command::SetApproved {
            entries,
            handshake_required,
            reply,
        })
        .await
    }

    /// Publishes a message to the federation's gossip topic.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), KlpError> {
        let topic = topic.to_string();
        self.ask(|reply| Command::Publish { topic, data, reply })
            .await?
    }

    /// Calls the API of an admitted peer as this node. The peer decides what this node may do
    /// (its `remote_roles`); the answer is its HTTP status and body.
    pub async fn call(
        &self,
        peer: &NodeId,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), KlpError> {
        let peer = peer_id(peer).ok_or_else(|| KlpError::Call("not a peer id".into()))?;
        let (method, path) = (method.to_string(), path.to_string());
        if method.len() > MAX_CALL_METHOD || path.len() > MAX_CALL_PATH || !path.starts_with('/') {
            return Err(KlpError::Call("malformed call".into()));
        }
        self.ask(|reply| Command::Call {
            peer,
            method,
            path,
            body,
            reply,
        })
        .await?
    }

    /// Sends a federation sync request to an admitted peer and waits for its answer.
    pub async fn sync(&self, peer: &NodeId, body: Vec<u8>) -> Result<Vec<u8>, KlpError> {
        let peer = peer_id(peer).ok_or_else(|| KlpError::Call("not a peer id".into()))?;
        self.ask(|reply| Command::Sync { peer, body, reply })
            .await?
    }

    /// The stream of sync requests from peers. Only the first caller gets it.
    pub fn take_inbound_sync(&self) -> Option<mpsc::Receiver<InboundSync>> {
        self.inbound_sync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Peers never admitted, whatever `handshake_required` says (an operator's local blocks,
    /// the federation's revocations). Connected ones are told `Goodbye{blocked}`.
    pub async fn set_denied(&self, peers: Vec<NodeId>) -> Result<(), KlpError> {
        let peers = peers.iter().filter_map(peer_id).collect();
        self.ask(|reply| Command::SetDenied { peers, reply }).await
    }

    /// Punishes a peer that sent invalid data (e.g. forged federation ops): `Goodbye{blocked}`,
    /// disconnect, and a ban of a minute even if it is approved.
    pub async fn penalize(&self, peer: &NodeId, detail: &str) -> Result<(), KlpError> {
        let peer = peer_id(peer).ok_or_else(|| KlpError::Call("not a peer id".into()))?;
        let detail = detail.to_string();
        self.ask(|reply| Command::Penalize {
            peer,
            detail,
            reply,
        })
        .await
    }

    /// The stream of API calls from peers. Only the first caller gets it.
    pub fn take_inbound_calls(&self) -> Option<mpsc::Receiver<InboundCall>> {
        self.inbound_calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Sends `Goodbye{shutdown}` to every admitted peer, waits until each has acknowledged
    /// it (at most `SHUTDOWN_GOODBYE_WAIT`, 1 s, in all), closes every connection and stops
    /// the task.
    pub async fn shutdown(&self) -> Result<(), KlpError> {
        self.ask(Command::Shutdown).await
    }
}
