//! What goes over the network: the gossip envelope on the federation topic and the
//! anti-entropy request/answer. Decoding never panics and keeps every bound.

use kos_map_protocol::fedlog::OpHash;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::limits::{
    MAX_GOSSIP_BYTES, MAX_HEADS, MAX_OPS_PER_ANSWER, MAX_STATUS_ERROR_LEN, MAX_STATUS_ERRORS,
};

/// Gossip payload tags (the first byte) on the federation topic: an encoded op follows,
/// or a [`ConfigStatus`] as JSON. Peers running older code read the same bytes.
pub const TAG_OP: u8 = 1;
pub const TAG_STATUS: u8 = 2;

/// One message on the federation topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gossip {
    /// An op's wire form (not decoded here: a bad op is the sender's strike).
    Op(Vec<u8>),
    /// A node's ACK/NACK of a snapshot; `op` is `status.op` parsed.
    Status { op: OpHash, status: ConfigStatus },
}

/// Why a gossip message was not understood.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    #[error("empty gossip message")]
    Empty,
    #[error("gossip message of {0} bytes (at most {MAX_GOSSIP_BYTES})")]
    TooLarge(usize),
    #[error("unknown gossip tag {0}")]
    UnknownTag(u8),
    #[error("undecodable config status")]
    BadStatus,
}

impl Gossip {
    /// The wire form: the tag byte, then the op or the status JSON.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Gossip::Op(bytes) => {
                let mut msg = Vec::with_capacity(bytes.len() + 1);
                msg.push(TAG_OP);
                msg.extend_from_slice(bytes);
                msg
            }
            Gossip::Status { op, status } => {
                let mut msg = vec![TAG_STATUS];
                let status = ConfigStatus {
                    op: op.to_string(),
                    ..status.clone()
                };
                // A struct of strings and integers always serializes.
                if let Ok(json) = serde_json::to_vec(&status) {
                    msg.extend_from_slice(&json);
                }
                msg
            }
        }
    }

    /// Reads a message received from a peer. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, GossipError> {
        if bytes.len() > MAX_GOSSIP_BYTES {
            return Err(GossipError::TooLarge(bytes.len()));
        }
        match bytes.split_first() {
            None => Err(GossipError::Empty),
            Some((&TAG_OP, rest)) => Ok(Gossip::Op(rest.to_vec())),
            Some((&TAG_STATUS, rest)) => decode_status(rest)
                .map(|(op, status)| Gossip::Status { op, status })
                .ok_or(GossipError::BadStatus),
            Some((&tag, _)) => Err(GossipError::UnknownTag(tag)),
        }
    }
}

/// ACK or NACK of a configuration snapshot, as gossiped.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigStatus {
    /// The `PublishConfig` op (hex hash).
    pub op: String,
    pub scope: String,
    pub snapshot_id: String,
    pub status: StatusKind,
    #[serde(default)]
    pub errors: Vec<String>,
    pub at_ms: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StatusKind {
    Ack,
    Nack,
    Pending,
}

/// Decodes a gossiped [`ConfigStatus`] (the bytes after its tag) and bounds it: at most
/// [`MAX_STATUS_ERRORS`] errors of at most [`MAX_STATUS_ERROR_LEN`] bytes each. `None` when
/// it is not JSON of that shape or names no op hash. Never panics.
pub fn decode_status(bytes: &[u8]) -> Option<(OpHash, ConfigStatus)> {
    let mut st = serde_json::from_slice::<ConfigStatus>(bytes).ok()?;
    let op = st.op.parse::<OpHash>().ok()?;
    st.errors.truncate(MAX_STATUS_ERRORS);
    for e in &mut st.errors {
        if e.len() > MAX_STATUS_ERROR_LEN {
            let mut cut = MAX_STATUS_ERROR_LEN;
            while !e.is_char_boundary(cut) {
                cut -= 1;
            }
            e.truncate(cut);
        }
    }
    Some((op, st))
}

/// An anti-entropy request (CBOR, carried by `Klp::sync`): what the requester holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncRequest {
    /// `Log::genesis_id` of the requester: peers of another federation answer nothing.
    pub genesis: ByteBuf,
    #[serde(deserialize_with = "at_most::<MAX_HEADS, _>")]
    pub heads: Vec<ByteBuf>,
    /// Paging: only ops after this `(lamport, hash)` in the total order.
    pub after: Option<(u64, ByteBuf)>,
}

/// The answer to a [`SyncRequest`]: encoded ops, parents first, and whether more follow.
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncResponse {
    pub genesis: ByteBuf,
    #[serde(deserialize_with = "at_most::<MAX_OPS_PER_ANSWER, _>")]
    pub ops: Vec<ByteBuf>,
    pub more: bool,
}

impl SyncRequest {
    /// Decodes a request received from a peer. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        ciborium::from_reader(bytes).map_err(|e| format!("undecodable sync request: {e}"))
    }

    /// The CBOR wire form.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        cbor(self)
    }
}

impl SyncResponse {
    /// Decodes a peer's answer. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        ciborium::from_reader(bytes).map_err(|e| format!("undecodable sync answer: {e}"))
    }

    /// The CBOR wire form.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        cbor(self)
    }
}

fn cbor<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    ciborium::into_writer(v, &mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// A sequence of at most `N` byte strings, refused while decoding as soon as it has more:
/// one CBOR byte per empty byte string would otherwise cost a 24-byte `ByteBuf` each (a
/// 1 MiB sync answer of them, ~50 MiB at the peak of the `Vec`'s growth).
fn at_most<'de, const N: usize, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<ByteBuf>, D::Error> {
    struct AtMost<const N: usize>;
    impl<'de, const N: usize> serde::de::Visitor<'de> for AtMost<N> {
        type Value = Vec<ByteBuf>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "at most {N} byte strings")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N));
            while let Some(b) = seq.next_element::<ByteBuf>()? {
                if out.len() == N {
                    return Err(serde::de::Error::invalid_length(N + 1, &self));
                }
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(AtMost::<N>)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    fn text(out: &mut Vec<u8>, s: &str) {
        out.push(0x60 | s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }

    fn status(op: OpHash) -> ConfigStatus {
        ConfigStatus {
            op: op.to_string(),
            scope: "models".into(),
            snapshot_id: "ab".repeat(32),
            status: StatusKind::Nack,
            errors: vec!["bad".into()],
            at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn gossip_op_keeps_the_tagged_wire_format_and_round_trips() {
        let op = vec![0xa5, 0, 1, 2, 3];
        let msg = Gossip::Op(op.clone()).encode();
        assert_eq!(msg, [&[1u8][..], &op].concat());
        assert_eq!(Gossip::decode(&msg), Ok(Gossip::Op(op)));
        // An empty op is passed on (its decoding fails later, charged to the sender).
        assert_eq!(Gossip::decode(&[TAG_OP]), Ok(Gossip::Op(Vec::new())));
    }

    #[test]
    fn gossip_status_keeps_the_tagged_json_wire_format_and_round_trips() {
        let op = OpHash([9; 32]);
        let st = status(op);
        let msg = Gossip::Status {
            op,
            status: st.clone(),
        }
        .encode();
        // What the earlier code sent: the tag, then the struct as JSON.
        let old = [&[2u8][..], &serde_json::to_vec(&st).unwrap()].concat();
        assert_eq!(msg, old);
        assert_eq!(msg[0], 2);
        assert_eq!(Gossip::decode(&msg), Ok(Gossip::Status { op, status: st }));
    }

    #[test]
    fn gossip_status_encodes_the_op_it_names() {
        let st = status(OpHash([1; 32]));
        let msg = Gossip::Status {
            op: OpHash([2; 32]),
            status: st,
        }
        .encode();
        match Gossip::decode(&msg).unwrap() {
            Gossip::Status { op, status } => {
                assert_eq!(op, OpHash([2; 32]));
                assert_eq!(status.op, OpHash([2; 32]).to_string());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_and_oversized_gossip_is_refused() {
        assert_eq!(Gossip::decode(&[]), Err(GossipError::Empty));
        assert_eq!(Gossip::decode(&[0, 1, 2]), Err(GossipError::UnknownTag(0)));
        assert_eq!(Gossip::decode(&[3]), Err(GossipError::UnknownTag(3)));
        assert_eq!(Gossip::decode(&[2]), Err(GossipError::BadStatus));
        assert_eq!(
            Gossip::decode(b"\x02{\"op\":\"not a hash\"}"),
            Err(GossipError::BadStatus)
        );
        let mut no_hash = status(OpHash([3; 32]));
        no_hash.op = "zz".into();
        let msg = [&[2u8][..], &serde_json::to_vec(&no_hash).unwrap()].concat();
        assert_eq!(Gossip::decode(&msg), Err(GossipError::BadStatus));
        let big = vec![TAG_OP; MAX_GOSSIP_BYTES + 1];
        assert_eq!(
            Gossip::decode(&big),
            Err(GossipError::TooLarge(MAX_GOSSIP_BYTES + 1))
        );
        assert!(Gossip::decode(&big[..MAX_GOSSIP_BYTES]).is_ok());
    }

    #[test]
    fn a_received_status_is_bounded() {
        let op = OpHash([4; 32]);
        let mut st = status(op);
        st.errors = vec!["é".repeat(MAX_STATUS_ERROR_LEN); MAX_STATUS_ERRORS + 10];
        let msg = [&[2u8][..], &serde_json::to_vec(&st).unwrap()].concat();
        let Ok(Gossip::Status { status, .. }) = Gossip::decode(&msg) else {
            panic!("not a status")
        };
        assert_eq!(status.errors.len(), MAX_STATUS_ERRORS);
        assert!(
            status
                .errors
                .iter()
                .all(|e| e.len() <= MAX_STATUS_ERROR_LEN && e.len() >= MAX_STATUS_ERROR_LEN - 1)
        );
    }

    /// Issue 10: a sync answer or request with more entries than a node ever sends is
    /// refused while it is decoded, definite or indefinite length, so a peer's 1 MiB answer
    /// of one-byte empty strings cannot become a million `ByteBuf`s.
    #[test]
    fn sync_messages_with_too_many_entries_are_refused_while_decoding() {
        let answer = |n| SyncResponse {
            genesis: ByteBuf::from(vec![7; 32]),
            ops: vec![ByteBuf::new(); n],
            more: false,
        };
        let ok = SyncResponse::decode(&cbor(&answer(MAX_OPS_PER_ANSWER))).unwrap();
        assert_eq!(ok.ops.len(), MAX_OPS_PER_ANSWER);
        assert!(SyncResponse::decode(&cbor(&answer(MAX_OPS_PER_ANSWER + 1))).is_err());
        // The same with an indefinite-length array (no length to check up front), and far
        // more entries than the limit: refused at entry MAX_OPS_PER_ANSWER + 1.
        let mut raw = vec![0xa3];
        text(&mut raw, "genesis");
        raw.push(0x40);
        text(&mut raw, "ops");
        raw.push(0x9f);
        raw.extend(std::iter::repeat_n(0x40, 1024 * 1024));
        raw.push(0xff);
        text(&mut raw, "more");
        raw.push(0xf4);
        assert!(SyncResponse::decode(&raw).is_err());

        let request = |n| SyncRequest {
            genesis: ByteBuf::from(vec![7; 32]),
            heads: vec![ByteBuf::from(vec![1; 32]); n],
            after: None,
        };
        let ok = SyncRequest::decode(&cbor(&request(MAX_HEADS))).unwrap();
        assert_eq!(ok.heads.len(), MAX_HEADS);
        assert!(SyncRequest::decode(&cbor(&request(MAX_HEADS + 1))).is_err());
    }

    #[test]
    fn sync_messages_round_trip() {
        let r = SyncRequest {
            genesis: ByteBuf::from(vec![7; 32]),
            heads: vec![ByteBuf::from(vec![1; 32])],
            after: Some((5, ByteBuf::from(vec![2; 32]))),
        };
        let back = SyncRequest::decode(&r.encode().unwrap()).unwrap();
        assert_eq!(back.heads, r.heads);
        assert_eq!(back.after, r.after);
        assert!(SyncRequest::decode(b"\xff\x00garbage").is_err());
        assert!(SyncResponse::decode(b"").is_err());
    }
}
