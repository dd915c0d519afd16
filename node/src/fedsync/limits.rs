//! Every bound of the sync actor, in one place.

use std::time::Duration;

/// Ops with unknown parents kept while their parents are fetched: in all, in bytes, and
/// from one source.
pub const MAX_PENDING: usize = 1024;
pub const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;
pub const MAX_PENDING_PER_SOURCE: usize = 256;
/// How long an op waits for its parents.
pub const PENDING_TTL: Duration = Duration::from_secs(30);
/// Most ops taken from one sync answer.
pub const MAX_OPS_PER_ANSWER: usize = 4096;
/// Most heads accepted in a sync request.
pub const MAX_HEADS: usize = 1024;
/// Pages fetched in one anti-entropy run.
pub const MAX_SYNC_ROUNDS: u32 = 64;
/// Sync requests answered per peer: a burst, then one per second.
pub const SYNC_BURST: u32 = 8;
pub const SYNC_RATE_PER_SEC: u32 = 1;
/// Peers with a rate-limit state kept before idle ones are dropped.
pub const MAX_RATE_KEYS: usize = 4096;
/// Refusals that get a peer penalized, and the window they are counted in.
pub const STRIKES: u32 = 3;
pub const STRIKE_WINDOW: Duration = Duration::from_secs(600);
/// Refused ops remembered for `kos federation log`.
pub const REFUSED_KEPT: usize = 256;
/// A refused snapshot is tried again at most every this many sync intervals.
pub const NACK_RETRY_INTERVALS: u32 = 3;
/// Limits on a received ACK/NACK.
pub const MAX_STATUS_ERRORS: usize = 50;
pub const MAX_STATUS_ERROR_LEN: usize = 500;
/// Largest gossip message: the swarm's `max_transmit_size`, so nothing larger arrives; a
/// larger one is refused before it is looked at.
pub const MAX_GOSSIP_BYTES: usize = 256 * 1024;
pub const COMMAND_QUEUE: usize = 64;
/// Ops waiting to be stored (the actor waits when it is full).
pub const PERSIST_QUEUE: usize = 1024;
pub const PEERS_LIST_POLL: Duration = Duration::from_millis(500);
