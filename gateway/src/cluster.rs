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
    /// The connection, once made (re-made by the heartbeat when it breaks).
    conn: Mutex<Option<ConnectionManager>>,
    /// Redis was reachable at the last attempt (to log changes only).
    reachable: AtomicBool,
}

/// What a heartbeat reports about this node.
#[derive(Debug, Clone, Default)]
pub struct Load {
    pub sessions: Vec<String>,
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
            .ask(|mut c, node| {
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
            .ask(|c, node| {
                let session = session.to_string();
                async move { claim(c, &node, &session).await }
            })
            .await;
        self.note(result.as_ref().err());
        result
    }

    /// One registration and the claims of `load.sessions`.
    async fn beat(&self, load: &Load) -> Result<(), Unreachable> {
        let load = load.clone();
        self.ask(|mut c, node| async move {
            let key = node_key(&node);
            let _: () = redis::pipe()
                .atomic()
                .hset_multiple(
                    &key,
                    &[
                        ("url", node.clone()),
                        ("sessions", load.sessions.len().to_string()),
                        ("viewers", load.viewers.to_string()),
                        ("publishers", load.publishers.to_string()),
                    ],
                )
                .expire(&key, NODE_TTL.as_secs() as i64)
                .sadd("wisp:nodes", &node)
                .query_async(&mut c)
                .await?;
            for s in &load.sessions {
                claim(c.clone(), &node, s).await?;
            }
            Ok(())
        })
        .await
    }

    /// Removes this node and the claims it holds (a graceful stop).
    async fn withdraw(&self, load: &Load) -> Result<(), Unreachable> {
        let load = load.clone();
        self.ask(|mut c, node| async move {
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

    /// Runs `f` on the connection (made first if need be), within [`DIRECTORY_TIMEOUT`].
    async fn ask<T, F, Fut>(&self, f: F) -> Result<T, Unreachable>
    where
        F: FnOnce(ConnectionManager, String) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self.conn.lock().expect("not poisoned").clone();
            let conn = match conn {
                Some(c) => c,
                None => {
                    let c = ConnectionManager::new(self.client.clone())
                        .await
                        .map_err(|e| Unreachable(e.to_string()))?;
                    *self.conn.lock().expect("not poisoned") = Some(c.clone());
                    c
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
                    tracing::info!(node = %self.node, "cluster directory reachable again: registered")
                }
            }
        }
    }
}

/// `SET NX` the claim, or refresh it if it is ours; another node's claim is taken over if
/// that node is dead.
async fn claim(mut c: ConnectionManager, node: &str, session: &str) -> redis::RedisResult<Owner> {
    let key = session_key(session);
    let ttl = NODE_TTL.as_secs();
    let set: bool = redis::cmd("SET")
        .arg(&key)
        .arg(node)
        .arg("NX")
        .arg("EX")
        .arg(ttl)
        .query_async::<Option<String>>(&mut c)
        .await?
        .is_some();
    if set {
        return Ok(Owner::Here);
    }
    let owner: Option<String> = c.get(&key).await?;
    match owner {
        Some(o) if o == node => {
            let _: () = c.expire(&key, ttl as i64).await?;
            Ok(Owner::Here)
        }
        Some(o) => {
            let alive: bool = c.exists(node_key(&o)).await?;
            if alive {
                Ok(Owner::There(o))
            } else {
                let _: () = c.set_ex(&key, node, ttl).await?;
                Ok(Owner::Here)
            }
        }
        // Expired in between: try once more.
        None => {
            let _: () = c.set_ex(&key, node, ttl).await?;
            Ok(Owner::Here)
        }
    }
}

fn node_key(url: &str) -> String {
    format!("wisp:node:{url}")
}

fn session_key(name: &str) -> String {
    format!("wisp:session:{name}")
}
