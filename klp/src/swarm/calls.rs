//! API calls and federation sync between admitted peers, both ways: requests from peers are
//! handed to the node with a deadline; ours wait for the peer's answer.

use std::future::Future;

use libp2p::PeerId;
use libp2p::request_response::{OutboundFailure, OutboundRequestId, ResponseChannel};
use tokio::sync::oneshot;

use super::{
    CALL_TIMEOUT, CallReply, EventLoop, InboundCall, InboundSync, KlpError, MAX_CALL_METHOD,
    MAX_CALL_PATH, SyncReply, WireRequest, WireResponse, node_id,
};

/// One of our requests in flight.
pub(super) enum Outgoing {
    Call(CallReply),
    Sync(SyncReply),
}

impl Outgoing {
    /// Hands the peer's answer to the caller.
    fn answer(self, response: WireResponse) {
        let unexpected = || KlpError::Call("unexpected answer".into());
        match self {
            Outgoing::Call(reply) => {
                let _ = reply.send(match response {
                    WireResponse::Call { status, body } => Ok((status, body)),
                    WireResponse::Refused(why) => Err(KlpError::Call(why)),
                    _ => Err(unexpected()),
                });
            }
            Outgoing::Sync(reply) => {
                let _ = reply.send(match response {
                    WireResponse::Sync(body) => Ok(body),
                    WireResponse::Refused(why) => Err(KlpError::Call(why)),
                    _ => Err(unexpected()),
                });
            }
        }
    }

    fn fail(self, error: KlpError) {
        match self {
            Outgoing::Call(reply) => {
                let _ = reply.send(Err(error));
            }
            Outgoing::Sync(reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

impl EventLoop {
    /// Sends a call or sync request of ours to a connected, admitted peer.
    pub(super) fn send_call(&mut self, peer: PeerId, request: WireRequest, reply: Outgoing) {
        if !(self.is_admitted(&peer) && self.is_connected(&peer)) {
            reply.fail(KlpError::Call(
                "the peer is not connected and admitted".into(),
            ));
            return;
        }
        let id = self.swarm.behaviour_mut().map.send_request(&peer, request);
        self.calls_out.insert(id, reply);
    }

    /// The answer to one of our requests: handed to the caller if it was a call or a sync
    /// request; anything else (a MAP answer) is given back.
    pub(super) fn answer_outgoing(
        &mut self,
        id: OutboundRequestId,
        response: WireResponse,
    ) -> Option<WireResponse> {
        match self.calls_out.remove(&id) {
            Some(out) => {
                out.answer(response);
                None
            }
            None => Some(response),
        }
    }

    pub(super) fn fail_outgoing(&mut self, id: OutboundRequestId, error: &OutboundFailure) {
        if let Some(out) = self.calls_out.remove(&id) {
            out.fail(KlpError::Call(error.to_string()));
        }
    }

    /// The node's answer to a peer's request (see [`Self::await_answer`]).
    pub(super) fn on_call_reply(&mut self, id: u64, response: WireResponse) {
        if let Some(ch) = self.pending_calls.remove(&id) {
            let _ = self.swarm.behaviour_mut().map.send_response(ch, response);
        }
    }

    fn refuse_call(&mut self, channel: ResponseChannel<WireResponse>, why: &str) {
        let _ = self
            .swarm
            .behaviour_mut()
            .map
            .send_response(channel, WireResponse::Refused(why.into()));
    }

    /// Keeps `channel` until `answer` is ready, then sends it (through the loop).
    fn await_answer(
        &mut self,
        channel: ResponseChannel<WireResponse>,
        answer: impl Future<Output = WireResponse> + Send + 'static,
    ) {
        let id = self.next_call;
        self.next_call += 1;
        self.pending_calls.insert(id, channel);
        let back = self.call_replies_tx.clone();
        tokio::spawn(async move {
            let response = answer.await;
            let _ = back.send((id, response)).await;
        });
    }

    /// A remote call: only from admitted peers; handed to the node with a deadline.
    pub(super) fn on_call_request(
        &mut self,
        peer: PeerId,
        method: String,
        path: String,
        body: Vec<u8>,
        channel: ResponseChannel<WireResponse>,
    ) {
        let Some(node) = node_id(&peer).filter(|_| self.is_admitted(&peer)) else {
            self.refuse_call(channel, "not admitted");
            return;
        };
        if method.len() > MAX_CALL_METHOD || path.len() > MAX_CALL_PATH || !path.starts_with('/') {
            self.refuse_call(channel, "malformed call");
            return;
        }
        let (tx, rx) = oneshot::channel();
        let call = InboundCall {
            peer: node,
            method,
            path,
            body,
            reply: tx,
        };
        if self.calls_tx.try_send(call).is_err() {
            self.refuse_call(channel, "busy");
            return;
        }
        self.await_answer(channel, async move {
            let (status, body) = match tokio::time::timeout(CALL_TIMEOUT, rx).await {
                Ok(Ok(answer)) => answer,
                _ => (
                    504,
                    b"{\"title\":\"the node did not answer in time\"}".to_vec(),
                ),
            };
            WireResponse::Call { status, body }
        });
    }

    /// A federation sync request: only from admitted peers; handed to the node with a
    /// deadline.
    pub(super) fn on_sync_request(
        &mut self,
        peer: PeerId,
        body: Vec<u8>,
        channel: ResponseChannel<WireResponse>,
    ) {
        let admitted = self.is_admitted(&peer);
        let node = node_id(&peer).filter(|_| admitted);
        let (tx, rx) = oneshot::channel();
        let taken = node.is_some_and(|peer| {
            self.sync_tx
                .try_send(InboundSync {
                    peer,
                    body,
                    reply: tx,
                })
                .is_ok()
        });
        if !taken {
            self.refuse_call(channel, if admitted { "busy" } else { "not admitted" });
            return;
        }
        self.await_answer(channel, async move {
            match tokio::time::timeout(CALL_TIMEOUT, rx).await {
                Ok(Ok(answer)) => WireResponse::Sync(answer),
                _ => WireResponse::Refused("the node did not answer in time".into()),
            }
        });
    }
}
