//! Scale-out (DESIGN.md "Scale-out"): nodes that share a Redis. Each node registers itself
//! there with a heartbeat (a key that expires), and claims the sessions it serves; a request
//! for a session another live node owns is redirected there (307, RFC 9725 §4.5) before any
//! work.
//!
//! Keys (`wisp:` prefix):
//! - `wisp:node:{url}`: a hash of the node's URL and load (sessions, viewers, publishers),
//!   expiring [`NODE_TTL`] after its last heartbeat. `wisp:nodes` is the set of node URLs ever
//!   seen (a node whose key expired is dead).
//! - `wisp:session:{name}`: the URL of the node that owns the session, expiring [`NODE_TTL`]
//!   after its owner last refreshed it.
//!
//! Redis unreachable: the node serves what it has, logs it once, refuses what needs the
//! directory (a session it does not hold) with 503, and registers again when Redis is back.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

/// A node or a claim not refreshed for this long is gone.
pub const NODE_TTL: Duration = Duration::from_secs(10);
/// How often a node refreshes its registration and its claims.
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// How long a request waits for Redis before the directory counts as unreachable.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(2);

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
    client: redis::Client,
    /// The connection, once made (it reconnects by itself when it breaks).
    conn: Mutex<Option<ConnectionManager>>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Redis was reachable at the last attempt (to log changes only).
    reachable: AtomicBool,
}

/// What a heartbeat reports about this node.
#[derive(Debug, Clone, Default)]
pub struct Load {
    pub sessions: Vec<String>,
    /// Those of `sessions` that are live (a publisher's): one node each.
    pub live: Vec<String>,
    pub viewers: u64,
    pub publishers: u64,
}

impl Cluster {
    /// A node at `node_url` of the cluster in `redis_url`. Nothing is connected yet.
    pub fn new(redis_url: &str, node_url: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            node: node_url.trim_end_matches('/').to_string(),
            client: redis::Client::open(redis_url)?,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            reachable: AtomicBool::new(true),
        })
    }

    /// This node's URL.
    pub fn node_url(&self) -> &str {
        &self.node
    }

    /// Keeps this node registered, and its sessions claimed, until `cancel`; `load` says what
    /// it serves at each beat. On cancel, the node and its claims are withdrawn.
    pub async fn heartbeat(
        &self,
        cancel: CancellationToken,
        mut load: impl FnMut() -> Load + Send,
    ) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => break,
            }
            let l = load();
            let result = self.beat(&l).await;
            self.note(result.as_ref().err());
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

    /// One registration and the claims of `load.sessions`, in one round trip.
    async fn beat(&self, load: &Load) -> Result<(), Unreachable> {
        let load = load.clone();
        let sessions = load.sessions.clone();
        let live = load.live.clone();
        let owners: Vec<String> = self
            .ask(true, |mut c, node| async move {
                let key = node_key(&node);
                let mut pipe = redis::pipe();
                pipe.hset_multiple(
                    &key,
                    &[
                        ("url", node.clone()),
                        ("sessions", load.sessions.len().to_string()),
                        ("viewers", load.viewers.to_string()),
                        ("publishers", load.publishers.to_string()),
                    ],
                )
                .ignore()
                .expire(&key, NODE_TTL.as_secs() as i64)
                .ignore()
                .sadd("wisp:nodes", &node)
                .ignore();
                for s in &load.sessions {
                    pipe.add_command(claim_script(&node, s));
                }
                pipe.query_async(&mut c).await
            })
            .await?;
        // A live session held here and claimed by another live node too (both took it while
        // the directory was away): requests for it go there; said at each beat. (A session
        // of the configuration, the demo say, is on every node: each serves its own.)
        for (session, owner) in sessions.iter().zip(owners) {
            if owner != self.node && live.contains(session) {
                tracing::warn!(
                    session,
                    owner,
                    "another node holds this session's claim: requests for it go there"
                );
            }
        }
        Ok(())
    }

    /// Removes this node and the claims it holds (a graceful stop).
    async fn withdraw(&self, load: &Load) -> Result<(), Unreachable> {
        let load = load.clone();
        self.ask(false, |mut c, node| async move {
            let _: () = c.del(node_key(&node)).await?;
            for s in &load.sessions {
                let key = session_key(s);
                let owner: Option<String> = c.get(&key).await?;
                if owner.as_deref() == Some(node.as_str()) {
                    let _: () = c.del(&key).await?;
                }
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
                    "{e}: serving the sessions this node has; requests for others get 503 \
                     until it is back"
                ),
                None => {
                    tracing::info!(node = %self.node, "cluster directory reachable again")
                }
            }
        }
    }
}

/// Claims `session` for `node` in one step (a script runs atomically): the claim is set (or
/// refreshed) unless another node holds it and that node is alive. Returns the owner's URL.
const CLAIM: &str = r"
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] and redis.call('EXISTS', 'wisp:node:' .. owner) == 1 then
  return owner
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
";

fn claim_script(node: &str, session: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(CLAIM)
        .arg(1)
        .arg(session_key(session))
        .arg(node)
        .arg(NODE_TTL.as_secs());
    cmd
}

fn node_key(url: &str) -> String {
    format!("wisp:node:{url}")
}

fn session_key(name: &str) -> String {
    format!("wisp:session:{name}")
}
