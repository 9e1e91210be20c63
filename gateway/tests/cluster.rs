//! Nodes sharing a Redis (Debian's `redis-server`, started here on 127.0.0.1): a POST to a node
//! that does not hold the session is redirected to the one that does, a viewer that follows
//! the redirect plays from the owner, a node that dies leaves the directory within 10 s, and a
//! node keeps serving what it holds while Redis is down.

mod common;
mod harness;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::Wisp;

/// A `redis-server` of the test's own, on a free port, without persistence.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package; scripts/install-deps test)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn node(name: &str, redis: &Redis, demo: bool) -> Wisp {
    Wisp::start(
        name,
        &format!(
            "demo = {demo}\nidle_timeout = 30\n[cluster]\nredis = \"{}\"\n",
            redis.url()
        ),
    )
}

/// POSTs an offer-shaped body without following redirects: the status and `Location`.
async fn post(url: &str, token: &str) -> (u16, Option<String>) {
    let resp = whep_client::http_client()
        .post(url)
        .bearer_auth(token)
        .header("Content-Type", "application/sdp")
        .body("v=0\r\n")
        .send()
        .await
        .unwrap();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), location)
}

/// Polls until `f` holds, up to `secs`.
async fn eventually<F: std::future::Future<Output = bool>>(
    secs: u64,
    mut f: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_to_the_wrong_node_is_redirected_to_the_owner_and_a_dead_owner_leaves() {
    let mut redis = Redis::start();
    // A holds the demo session; B holds nothing.
    let a = node("cluster-a", &redis, true);
    let b = node("cluster-b", &redis, false);
    let token = a.token("*", "view publish");
    assert!(a.wait_log("joining the cluster", 5), "{}", a.log());

    // B sends a viewer of the demo to A, before any work (the body is not even an offer).
    let to_a = format!("{}/whep/demo", a.base);
    assert!(
        eventually(10, || async {
            post(&format!("{}/whep/demo", b.base), &token).await == (307, Some(to_a.clone()))
        })
        .await,
        "B redirects to A: {:?}",
        post(&format!("{}/whep/demo", b.base), &token).await
    );
    // A session nobody holds is B's to answer itself (404: no such session).
    assert_eq!(
        post(&format!("{}/whep/nothing", b.base), &token).await.0,
        404
    );

    // whep-client follows the redirect with its token and offer, and plays from A: the
    // resource (where PATCH and DELETE go) is A's.
    let mut opts = b.viewer("demo", &token, 30, 30);
    opts.url = format!("{}/whep/demo", b.base);
    let summary = whep_client::watch(&whep_client::http_client(), opts, |_| {})
        .await
        .expect("plays through the redirect");
    assert!(summary.video_frames >= 30, "{summary:?}");
    let resource = summary.resource.clone().unwrap_or_default();
    assert!(resource.starts_with(&to_a), "{resource}");
    assert_eq!(summary.delete_status, Some(200));

    // A publish goes to the node that holds the name: B claims "cam" for its publisher, and
    // A sends a publisher of "cam" there.
    assert!(
        matches!(
            post(&format!("{}/whip/cam", b.base), &token).await.0,
            400 | 415
        ),
        "B takes the publish itself"
    );
    assert_eq!(
        post(&format!("{}/whip/cam", a.base), &token).await,
        (307, Some(format!("{}/whip/cam", b.base)))
    );

    // Redis goes away: A keeps serving what it holds, and refuses what needs the directory.
    redis.stop();
    let mut opts = a.viewer("demo", &token, 10, 20);
    opts.url = format!("{}/whep/demo", a.base);
    let summary = whep_client::watch(&whep_client::http_client(), opts, |_| {})
        .await
        .expect("A still serves its own session");
    assert!(summary.video_frames >= 10);
    assert_eq!(post(&format!("{}/whep/other", a.base), &token).await.0, 503);
    assert!(a.wait_log("the cluster directory (Redis) is unreachable", 10));
    // Back: the nodes register again, and the redirect works as before.
    let redis = Redis::start_on(redis.port);
    assert!(
        eventually(15, || async {
            post(&format!("{}/whep/demo", b.base), &token).await == (307, Some(to_a.clone()))
        })
        .await,
        "redirects again once Redis is back: {}",
        b.log()
    );

    // A dies (no goodbye): within 10 s B no longer sends anyone there.
    let mut a = a;
    let _ = a.child.kill();
    let _ = a.child.wait();
    let killed = Instant::now();
    assert!(
        eventually(15, || async {
            post(&format!("{}/whep/demo", b.base), &token).await.0 == 404
        })
        .await
    );
    assert!(
        killed.elapsed() <= Duration::from_secs(12),
        "dropped after {:?}",
        killed.elapsed()
    );
    drop(redis);
}
