//! Scale-out (DESIGN.md "Scale-out"): nodes that share a Redis. Each node registers itself
//! there with a heartbeat (a key that expires), and claims the sessions it serves; a request
//! for a session another live node owns is redirected there (307, RFC 9725 §4.5) before any
//! work. New VOD sessions go to the live node with the most room (its capacity less the cost
//! of what it serves, in cores); a dead node's VOD sessions are made again on the others, at
//! their last position.
//!
//! Keys (`wisp:` prefix):
//! - `wisp:node:{url}`: a hash of the node's URL, capacity, load (cores) and counts
//!   (sessions, viewers, publishers, transcoders), and its
//!   sessions as `GET /api/sessions` shows them, expiring [`NODE_TTL`] after its last
//!   heartbeat. `wisp:nodes` is the set of node URLs (a node whose key expired is dead, and
//!   leaves the set when next listed).
//! - `wisp:session:{name}`: the URL of the node that owns the session, expiring [`NODE_TTL`]
//!   after its owner last refreshed it.
//! - `wisp:vod:{name}`: a VOD session made through the API, as JSON (its definition and media
//!   position), refreshed at each beat; `wisp:vods` is the set of their names. A record whose
//!   claim is gone is an orphan, which the node placement picks takes.
//!
//! Redis unreachable: the node serves what it has, logs it once, refuses what needs the
//! directory (a session it does not hold, a new session) with 503, and registers again when
//! Redis is back.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{Costs, SessionSpec};

/// A node or a claim not refreshed for this long is gone: the node leaves placement, its
/// sessions' names are free, and its VOD sessions are made again elsewhere.
pub const NODE_TTL: Duration = Duration::from_secs(5);
/// How often a node refreshes its registration and its claims.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a request waits for Redis before the directory counts as unreachable.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a VOD session's record outlives its last refresh: a session whose node died and
/// that no node could take within this time is forgotten.
const VOD_TTL: Duration = Duration::from_secs(600);

/// Redis could not be asked (down, unreachable, too slow). Passing: try again shortly.
#[derive(Debug, thiserror::Error)]
#[error("the cluster directory (Redis) is unreachable: {0}")]
pub struct Unreachable(String);

/// Who owns a session, as the directory says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This node, or nobody (so this node may take it).
    Here,
    /// Another live node, at this URL.
    There(String),
}

/// This node's side of the cluster.
#[derive(Debug)]
pub struct Cluster {
    /// This node's URL (no trailing slash).
    node: String,
    /// What this node can carry, and what its work costs (cores).
    capacity: f64,
    costs: Costs,
    client: redis::Client,
    /// The connection, once made (it reconnects by itself when it breaks).
    conn: Mutex<Option<ConnectionManager>>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Redis was reachable at the last attempt (to log changes only).
    reachable: AtomicBool,
    /// The VOD sessions whose records the last beat wrote (to remove those that ended).
    recorded: Mutex<HashSet<String>>,
}

/// What a heartbeat reports about this node.
#[derive(Debug, Clone, Default)]
pub struct Load {
    /// Every session held here (each is claimed).
    pub sessions: Vec<String>,
    /// Those of `sessions` that are live (a publisher's): one node each.
    pub live: Vec<String>,
    /// VOD sessions made through the API (not the configuration's, which every node has):
    /// made again on another node if this one dies.
    pub vod: Vec<VodState>,
    /// How many of `sessions` are VOD sessions (each costs a transcoder).
    pub vod_sessions: usize,
    pub viewers: u64,
    pub publishers: u64,
    /// Transcoders running (VOD, pulled and RTMP/SRT sessions').
    pub transcoders: u64,
    /// What `GET /api/sessions` shows of each session (a JSON array).
    pub info: String,
}

/// A VOD session as the cluster keeps it: enough to make it again at its last position.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VodState {
    pub name: String,
    pub spec: SessionSpec,
    /// Media time, seconds (`None` before its transcoder reported one).
    pub position: Option<f64>,
}

/// What a beat found for this node to do.
#[derive(Debug, Default)]
pub struct Beat {
    /// VOD sessions held here that another node holds now (it took them while this node
    /// could not reach the directory): they stop here, and their viewers reconnect there.
    pub lost: Vec<String>,
    /// A VOD session of a dead node that this node took (the least loaded that has room): it
    /// is made here at its last position.
    pub adopted: Option<VodState>,
}

/// A live node, as its last heartbeat described it.
#[derive(Debug, Clone)]
pub struct Node {
    pub url: String,
    /// Cores.
    pub capacity: f64,
    /// What its sessions and viewers cost, cores.
    pub load: f64,
    /// Its sessions, as `GET /api/sessions` shows them.
    pub sessions: Vec<serde_json::Value>,
}

impl Node {
    /// What the node has left, cores.
    pub fn room(&self) -> f64 {
        self.capacity - self.load
    }
}

impl Cluster {
    /// A node at `node_url` of the cluster in `redis_url`. Nothing is connected yet.
    pub fn new(
        redis_url: &str,
        node_url: &str,
        capacity: f64,
        costs: Costs,
    ) -> Result<Self, redis::RedisError> {
        Ok(Self {
            node: node_url.trim_end_matches('/').to_string(),
            capacity,
            costs,
            client: redis::Client::open(redis_url)?,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            reachable: AtomicBool::new(true),
            recorded: Mutex::new(HashSet::new()),
        })
    }

    /// This node's URL.
    pub fn node_url(&self) -> &str {
        &self.node
    }

    /// What placement counts a VOD session as, cores.
    pub fn vod_cost(&self) -> f64 {
        self.costs.vod
    }

    /// Keeps this node registered, and its sessions claimed, until `cancel`; `load` says what
    /// it serves at each beat, and `act` gets what the beat found to do. On cancel, the node
    /// and its claims are withdrawn (its VOD sessions are then free for other nodes to take).
    pub async fn heartbeat(
        &self,
        cancel: CancellationToken,
        mut load: impl FnMut() -> Load + Send,
        mut act: impl FnMut(Beat) + Send,
    ) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => break,
            }
            let l = load();
            let started = tokio::time::Instant::now();
            let result = self.beat(&l).await;
            self.note(result.as_ref().err());
            let Ok(mut beat) = result else { continue };
            // Taking sessions waits for a beat that was quick: a slow Redis must not delay
            // the next registration past its time to live.
            if started.elapsed() < HEARTBEAT / 2 {
                match tokio::time::timeout(HEARTBEAT, self.adopt()).await {
                    Ok(Ok(adopted)) => beat.adopted = adopted,
                    Ok(Err(e)) => tracing::debug!("no look for orphaned sessions this beat: {e}"),
                    Err(_) => tracing::debug!("the look for orphaned sessions took too long"),
                }
            }
            act(beat);
        }
        let _ = tokio::time::timeout(DIRECTORY_TIMEOUT, self.withdraw(&load())).await;
    }

    /// Who owns `session`: another node only if its claim and the node itself are alive.
    pub async fn owner(&self, session: &str) -> Result<Owner, Unreachable> {
        let result = self
            .ask(false, |mut c, node| {
                let key = session_key(session);
                async move {
                    let owner: Option<String> = c.get(&key).await?;
                    match owner {
                        Some(o) if o != node => {
                            let alive: bool = c.exists(node_key(&o)).await?;
                            Ok(if alive { Owner::There(o) } else { Owner::Here })
                        }
                        _ => Ok(Owner::Here),
                    }
                }
            })
            .await;
        self.note(result.as_ref().err());
        result
    }

    /// Claims `session` for this node unless another live node holds it (a publisher is
    /// about to make it here): who owns it now.
    pub async fn claim(&self, session: &str) -> Result<Owner, Unreachable> {
        let result = self
            .ask(false, |mut c, node| {
                let session = session.to_string();
                async move { claim_script(&node, &session).query_async(&mut c).await }
            })
            .await
            .map(|owner: String| self.owner_of(owner));
        self.note(result.as_ref().err());
        result
    }

    /// The live nodes, this one included, as their last heartbeats described them (URL
    /// order).
    pub async fn nodes(&self) -> Result<Vec<Node>, Unreachable> {
        let result = self
            .ask(false, |mut c, _| async move {
                let urls: Vec<String> = c.smembers("wisp:nodes").await?;
                let mut pipe = redis::pipe();
                for u in &urls {
                    pipe.hgetall(node_key(u));
                }
                let hashes: Vec<BTreeMap<String, String>> = pipe.query_async(&mut c).await?;
                let mut nodes = Vec::new();
                let mut gone = Vec::new();
                for (url, h) in urls.into_iter().zip(hashes) {
                    if h.is_empty() {
                        gone.push(url);
                        continue;
                    }
                    let num = |k: &str| h.get(k).and_then(|v| v.parse::<f64>().ok());
                    nodes.push(Node {
                        capacity: num("capacity").unwrap_or(0.0),
                        load: num("load").unwrap_or(0.0),
                        sessions: h
                            .get("info")
                            .and_then(|i| serde_json::from_str(i).ok())
                            .unwrap_or_default(),
                        url,
                    });
                }
                // Nodes whose key expired are dead: out of the set, so it does not grow.
                if !gone.is_empty() {
                    let _: () = c.srem("wisp:nodes", &gone).await?;
                }
                nodes.sort_by(|a, b| a.url.cmp(&b.url));
                Ok(nodes)
            })
            .await;
        self.note(result.as_ref().err());
        result
    }

    /// The live nodes that have room for `cost`, the one with the most room first (ties go
    /// by URL, so every node ranks them alike).
    async fn candidates(&self, cost: f64) -> Result<Vec<Node>, Unreachable> {
        Ok(rank(self.nodes().await?, cost))
    }

    /// A VOD session of this name is on its way to another node (its node died and no node
    /// has made it again yet): a viewer should try again shortly, not be told it is gone.
    pub async fn moving(&self, session: &str) -> Result<bool, Unreachable> {
        let result = self
            .ask(false, |mut c, _| {
                let key = vod_key(session);
                async move { c.exists(key).await }
            })
            .await;
        self.note(result.as_ref().err());
        result
    }

    /// Forgets the VOD session `session` of this node (it was stopped on purpose: no other
    /// node is to make it again).
    pub async fn forget(&self, session: &str) -> Result<(), Unreachable> {
        self.recorded.lock().expect("not poisoned").remove(session);
        let result = self
            .ask(false, |mut c, node| {
                let session = session.to_string();
                async move {
                    // The record and the name go at once (not after the claim expires), if
                    // they are this node's: another node's are not touched.
                    let _: i64 = forget_script(&node, &session).query_async(&mut c).await?;
                    Ok(())
                }
            })
            .await;
        self.note(result.as_ref().err());
        result
    }

    /// One registration, the claims of `load.sessions` and the records of `load.vod`, in
    /// one round trip.
    async fn beat(&self, load: &Load) -> Result<Beat, Unreachable> {
        let load = load.clone();
        let sessions = load.sessions.clone();
        let live = load.live.clone();
        let cost = load.vod_sessions as f64 * self.costs.vod
            + load.live.len() as f64 * self.costs.live
            + load.viewers as f64 * self.costs.viewer;
        let mut now: HashSet<String> = load.vod.iter().map(|v| v.name.clone()).collect();
        let ended: Vec<String> = self
            .recorded
            .lock()
            .expect("not poisoned")
            .difference(&now)
            .cloned()
            .collect();
        let capacity = self.capacity;
        let vods = load.vod.clone();
        let vod_names: Vec<String> = vods.iter().map(|v| v.name.clone()).collect();
        let owners: Vec<String> = self
            .ask(true, |mut c, node| async move {
                let key = node_key(&node);
                let mut pipe = redis::pipe();
                pipe.hset_multiple(
                    &key,
                    &[
                        ("url", node.clone()),
                        ("capacity", capacity.to_string()),
                        ("load", cost.to_string()),
                        ("sessions", load.sessions.len().to_string()),
                        ("viewers", load.viewers.to_string()),
                        ("publishers", load.publishers.to_string()),
                        ("transcoders", load.transcoders.to_string()),
                        ("info", load.info.clone()),
                    ],
                )
                .ignore()
                .expire(&key, NODE_TTL.as_secs() as i64)
                .ignore()
                .sadd("wisp:nodes", &node)
                .ignore();
                for name in &ended {
                    pipe.add_command(forget_script(&node, name)).ignore();
                }
                // A VOD session's claim and its record in one step: the record is written
                // only while the claim is this node's (a node back from a partition does not
                // overwrite the record of the node that took its session).
                for s in &load.sessions {
                    match vods.iter().find(|v| &v.name == s) {
                        Some(v) => {
                            let json = serde_json::to_string(v).unwrap_or_default();
                            pipe.add_command(record_script(&node, v, &json))
                        }
                        None => pipe.add_command(claim_script(&node, s)),
                    };
                }
                pipe.query_async(&mut c).await
            })
            .await?;
        let mut beat = Beat::default();
        // A session held here and claimed by another live node too (both took it while the
        // directory was away): requests for it go there. A VOD session stops here (the other
        // node holds its record now); a live one is said at each beat. (A session of the
        // configuration, the demo say, is on every node: each serves its own.)
        for (session, owner) in sessions.iter().zip(owners) {
            if owner == self.node {
                continue;
            }
            if vod_names.contains(session) {
                tracing::warn!(
                    session,
                    owner,
                    "another node took this VOD session while this one was away: it stops here"
                );
                beat.lost.push(session.clone());
                now.remove(session);
            } else if live.contains(session) {
                tracing::warn!(
                    session,
                    owner,
                    "another node holds this session's claim: requests for it go there"
                );
            }
        }
        *self.recorded.lock().expect("not poisoned") = now;
        Ok(beat)
    }

    /// Takes one VOD session of a dead node if this node is where placement puts it (the
    /// live node with the most room, which every node ranks alike): one a beat, so a dead
    /// node's sessions spread over the others as their loads change.
    async fn adopt(&self) -> Result<Option<VodState>, Unreachable> {
        let orphans: Vec<(VodState, Option<String>)> = self
            .ask(false, |mut c, _| async move {
                let names: Vec<String> = c.smembers("wisp:vods").await?;
                if names.is_empty() {
                    return Ok(Vec::new());
                }
                let mut pipe = redis::pipe();
                for n in &names {
                    pipe.get(vod_key(n)).get(session_key(n));
                }
                let got: Vec<Option<String>> = pipe.query_async(&mut c).await?;
                let mut found = Vec::new();
                let mut expired = Vec::new();
                for (name, pair) in names.into_iter().zip(got.chunks(2)) {
                    let record = pair[0].as_deref();
                    match record.and_then(|r| serde_json::from_str::<VodState>(r).ok()) {
                        Some(state) => found.push((state, pair[1].clone())),
                        None => expired.push(name),
                    }
                }
                if !expired.is_empty() {
                    let _: () = c.srem("wisp:vods", &expired).await?;
                }
                // Orphans: no claim, or a claim of a node that is gone.
                let mut pipe = redis::pipe();
                for (_, owner) in &found {
                    pipe.exists(node_key(owner.as_deref().unwrap_or("")));
                }
                let alive: Vec<bool> = pipe.query_async(&mut c).await?;
                Ok(found
                    .into_iter()
                    .zip(alive)
                    .filter(|(_, alive)| !alive)
                    .map(|(r, _)| r)
                    .collect())
            })
            .await?;
        let Some((orphan, from)) = orphans.into_iter().min_by(|a, b| a.0.name.cmp(&b.0.name))
        else {
            return Ok(None);
        };
        let best = self.candidates(self.costs.vod).await?;
        if best.first().map(|n| n.url.as_str()) != Some(self.node.as_str()) {
            return Ok(None);
        }
        let name = orphan.name.clone();
        let taken: i64 = self
            .ask(false, |mut c, node| async move {
                let mut cmd = eval(ADOPT, &[session_key(&name)]);
                cmd.arg(&node).arg(NODE_TTL.as_secs());
                cmd.query_async(&mut c).await
            })
            .await?;
        if taken != 1 {
            return Ok(None);
        }
        tracing::info!(
            session = %orphan.name,
            from = from.as_deref().unwrap_or("(no claim)"),
            position = ?orphan.position,
            "took the VOD session of a node that is gone; making it here at its last position"
        );
        Ok(Some(orphan))
    }

    /// Removes this node and the claims it holds (a graceful stop).
    async fn withdraw(&self, load: &Load) -> Result<(), Unreachable> {
        let load = load.clone();
        self.ask(false, |mut c, node| async move {
            let _: () = c.del(node_key(&node)).await?;
            let _: () = c.srem("wisp:nodes", &node).await?;
            for s in &load.sessions {
                let _: i64 = release_script(&node, s).query_async(&mut c).await?;
            }
            Ok(())
        })
        .await
    }

    /// Who owns a session, from the URL its claim names.
    fn owner_of(&self, url: String) -> Owner {
        if url == self.node {
            Owner::Here
        } else {
            Owner::There(url)
        }
    }

    /// Runs `f` on the connection within [`DIRECTORY_TIMEOUT`]. Without a connection, one
    /// attempt is made at a time; a request (`connect` false) does not try while Redis is
    /// known to be down (it fails at once: the heartbeat tries every beat).
    async fn ask<T, F, Fut>(&self, connect: bool, f: F) -> Result<T, Unreachable>
    where
        F: FnOnce(ConnectionManager, String) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self.conn.lock().expect("not poisoned").clone();
            let conn = match conn {
                Some(c) => c,
                None if !connect && !self.reachable.load(Ordering::Relaxed) => {
                    return Err(Unreachable("not connected".into()));
                }
                None => {
                    let _one = self.connecting.lock().await;
                    let made = self.conn.lock().expect("not poisoned").clone();
                    match made {
                        Some(c) => c,
                        None => {
                            let c = ConnectionManager::new(self.client.clone())
                                .await
                                .map_err(|e| Unreachable(e.to_string()))?;
                            *self.conn.lock().expect("not poisoned") = Some(c.clone());
                            c
                        }
                    }
                }
            };
            f(conn, self.node.clone())
                .await
                .map_err(|e| Unreachable(e.to_string()))
        };
        tokio::time::timeout(DIRECTORY_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                Err(Unreachable(format!(
                    "no answer within {} s",
                    DIRECTORY_TIMEOUT.as_secs()
                )))
            })
    }

    /// Logs when Redis becomes unreachable, and when it is back.
    fn note(&self, error: Option<&Unreachable>) {
        let ok = error.is_none();
        if self.reachable.swap(ok, Ordering::Relaxed) != ok {
            match error {
                Some(e) => tracing::error!(
                    "{e}: serving the sessions this node has; requests for other nodes' \
                     sessions and for new sessions get 503 until it is back"
                ),
                None => {
                    tracing::info!(node = %self.node, "cluster directory reachable again")
                }
            }
        }
    }
}

/// Claims `session` for `node` in one step (a script runs atomically): the claim is set (or
/// refreshed) unless another node holds it and that node is alive (KEYS: claim; ARGV: node,
/// claim TTL). With a second key, a VOD session's record, written only if the claim is this
/// node's (KEYS: claim, record; ARGV: node, claim TTL, name, record JSON, record TTL). Returns
/// the owner's URL.
const CLAIM: &str = r"
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] and redis.call('EXISTS', 'wisp:node:' .. owner) == 1 then
  return owner
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if KEYS[2] then
  redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5])
  redis.call('SADD', 'wisp:vods', ARGV[3])
end
return ARGV[1]
";

/// Takes the claim of a session whose owner is gone (or that nobody claims): 1 if taken.
const ADOPT: &str = r"
local owner = redis.call('GET', KEYS[1])
if owner and redis.call('EXISTS', 'wisp:node:' .. owner) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
";

/// Forgets a VOD session of `node`'s: its claim and its record, unless another node holds
/// the claim (KEYS: claim, record; ARGV: node, name). 1 if forgotten.
const FORGET: &str = r"
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', 'wisp:vods', ARGV[2])
return 1
";

fn record_script(node: &str, vod: &VodState, json: &str) -> redis::Cmd {
    let mut cmd = eval(CLAIM, &[session_key(&vod.name), vod_key(&vod.name)]);
    cmd.arg(node)
        .arg(NODE_TTL.as_secs())
        .arg(&vod.name)
        .arg(json)
        .arg(VOD_TTL.as_secs());
    cmd
}

fn forget_script(node: &str, session: &str) -> redis::Cmd {
    let mut cmd = eval(FORGET, &[session_key(session), vod_key(session)]);
    cmd.arg(node).arg(session);
    cmd
}

/// Removes a session's claim if `node` holds it: 1 if it did.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

fn release_script(node: &str, session: &str) -> redis::Cmd {
    let mut cmd = eval(RELEASE, &[session_key(session)]);
    cmd.arg(node);
    cmd
}

/// `EVAL script` with its keys; the caller adds the arguments.
fn eval(script: &str, keys: &[String]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys);
    cmd
}

/// The nodes with room for `cost`, the most room first, ties by URL.
pub fn rank(mut nodes: Vec<Node>, cost: f64) -> Vec<Node> {
    nodes.retain(|n| n.room() >= cost);
    nodes.sort_by(|a, b| {
        b.room()
            .total_cmp(&a.room())
            .then_with(|| a.url.cmp(&b.url))
    });
    nodes
}

fn claim_script(node: &str, session: &str) -> redis::Cmd {
    let mut cmd = eval(CLAIM, &[session_key(session)]);
    cmd.arg(node).arg(NODE_TTL.as_secs());
    cmd
}

fn node_key(url: &str) -> String {
    format!("wisp:node:{url}")
}

fn session_key(name: &str) -> String {
    format!("wisp:session:{name}")
}

fn vod_key(name: &str) -> String {
    format!("wisp:vod:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(url: &str, capacity: f64, load: f64) -> Node {
        Node {
            url: url.into(),
            capacity,
            load,
            sessions: Vec::new(),
        }
    }

    #[test]
    fn placement_takes_the_node_with_the_most_room_and_none_without_room() {
        let nodes = vec![
            node("http://c", 2.0, 1.9),
            node("http://b", 2.0, 0.5),
            node("http://a", 4.0, 2.5),
        ];
        let ranked: Vec<String> = rank(nodes.clone(), 0.25)
            .into_iter()
            .map(|n| n.url)
            .collect();
        assert_eq!(
            ranked,
            ["http://a", "http://b"],
            "equal room: by URL; c is full"
        );
        assert!(rank(nodes, 2.0).is_empty());
    }
}
