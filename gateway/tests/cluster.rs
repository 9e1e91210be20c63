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

/// A node with the capacity given (cores), without the demo.
fn sized_node(name: &str, redis: &Redis, capacity: f64) -> Wisp {
    Wisp::start(
        name,
        &format!(
            "demo = false\nidle_timeout = 30\n[cluster]\nredis = \"{}\"\ncapacity = {capacity}\n",
            redis.url()
        ),
    )
}

/// `POST /api/sessions` of a generated-pattern session named `name`, through `node`: the
/// status, and the answer's body.
async fn create(node: &Wisp, admin: &str, name: &str) -> (u16, serde_json::Value, Option<String>) {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/sessions", node.base))
        .bearer_auth(admin)
        .header("Content-Type", "application/json")
        .body(format!(
            r#"{{"name":"{name}","inputs":[{{"url":"demo"}}]}}"#
        ))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, body, retry)
}

/// The cluster's sessions as `GET /api/sessions` on `node` lists them: name → node.
async fn listed(node: &Wisp) -> Vec<(String, String)> {
    let list = node.api("/api/sessions").await;
    let mut out: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Watches `url` as a player that comes back when told (503 with Retry-After, while its
/// session moves): the summary of the try that played.
async fn watch_retrying(
    opts: impl Fn() -> whep_client::Options,
    secs: u64,
) -> Result<whep_client::Summary, String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match whep_client::watch(&whep_client::http_client(), opts(), |_| {}).await {
            Ok(s) => return Ok(s),
            Err(whep_client::ClientError::Http {
                status: 503 | 404,
                retry_after,
                ..
            }) if Instant::now() < deadline => {
                let pause = Duration::from_millis(retry_after.map_or(500, |s| s * 1000).min(1000));
                tokio::time::sleep(pause).await;
            }
            // Sent to the dead node while the directory still names it.
            Err(whep_client::ClientError::Request { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vod_sessions_go_where_there_is_room_and_move_when_their_node_dies() {
    let redis = Redis::start();
    // A carries one VOD session (0.25 cores each), B two.
    let a = sized_node("place-a", &redis, 0.3);
    let b = sized_node("place-b", &redis, 0.6);
    let admin = a.token("*", "admin view");
    let beat = || tokio::time::sleep(Duration::from_millis(2200));
    beat().await;

    // Made through A, the film goes to B, which has the most room: the answer is B's.
    let (status, body, _) = create(&a, &admin, "film").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["whep_url"], format!("{}/whep/film", b.base), "{body}");
    beat().await;
    // B has 0.35 left, A 0.3: B again.
    let (status, body, _) = create(&a, &admin, "film2").await;
    assert_eq!(
        (status, &body["whep_url"]),
        (201, &json(format!("{}/whep/film2", b.base)))
    );
    beat().await;
    // Through B now: A has 0.3, B 0.1.
    let (status, body, _) = create(&b, &admin, "film3").await;
    assert_eq!(
        (status, &body["whep_url"]),
        (201, &json(format!("{}/whep/film3", a.base)))
    );
    // A name the cluster has is refused on any node.
    let (status, body, _) = create(&b, &admin, "film").await;
    assert_eq!(status, 409, "{body}");
    beat().await;
    // No node has 0.25 cores left: 503, come back later.
    let (status, body, retry) = create(&a, &admin, "film4").await;
    assert_eq!(status, 503, "{body}");
    assert!(retry.is_some(), "Retry-After");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("no node of the cluster has room"),
        "{body}"
    );

    // Either node lists the whole cluster, with each session's node.
    let all = vec![
        ("film".to_string(), b.base.clone()),
        ("film2".to_string(), b.base.clone()),
        ("film3".to_string(), a.base.clone()),
    ];
    assert_eq!(listed(&a).await, all);
    assert_eq!(listed(&b).await, all);
    // A request about another node's session is answered there: B shows and deletes A's.
    let shown = b.api("/api/sessions/film3").await;
    assert_eq!(shown["name"], "film3", "{shown}");
    let deleted = reqwest::Client::new()
        .delete(format!("{}/api/sessions/film3", b.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 200);
    assert!(a.wait_log("session deleted through the API", 5));
    beat().await;

    // A viewer of the film through A plays from B; the film moves on.
    let view = a.token("*", "view");
    let film = |frames| {
        let mut o = a.viewer("film", &view, frames, 20);
        o.url = format!("{}/whep/film", a.base);
        o
    };
    let summary = whep_client::watch(&whep_client::http_client(), film(90), |_| {})
        .await
        .expect("plays through the redirect");
    assert!(
        summary
            .resource
            .as_deref()
            .unwrap_or("")
            .starts_with(&b.base),
        "{summary:?}"
    );
    // Keep it playing, as a viewer that stays, and note where it is.
    let opts = film(100_000);
    let stays =
        tokio::spawn(
            async move { whep_client::watch(&whep_client::http_client(), opts, |_| {}).await },
        );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = b.api("/api/sessions/film").await["position"]
        .as_f64()
        .expect("a playing film has a position");
    assert!(before >= 2.0, "position {before}");

    // B dies. A (room 0.3) takes the film, at its position; film2 has no room anywhere, and
    // a viewer of it hears that it is moving.
    let mut b = b;
    let _ = b.child.kill();
    let _ = b.child.wait();
    let killed = Instant::now();
    stays.abort();
    let again = watch_retrying(|| film(30), 15).await.expect("plays again");
    let back = killed.elapsed();
    assert!(
        again.resource.as_deref().unwrap_or("").starts_with(&a.base),
        "{again:?}"
    );
    assert!(
        back <= Duration::from_secs(10),
        "played again {back:?} after the kill"
    );
    assert!(
        a.wait_log("took the VOD session of a node that is gone", 1),
        "{}",
        a.log()
    );
    let after = a.api("/api/sessions/film").await["position"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        after >= before,
        "made again at {after} s, it was at {before} s"
    );
    let (status, _) = post(&format!("{}/whep/film2", a.base), &view).await;
    assert_eq!(status, 503, "film2 is moving, with nowhere to go");
    eprintln!("played again {back:?} after the kill; position {before} → {after}");
}

fn json(s: String) -> serde_json::Value {
    serde_json::Value::String(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_relays_sessions_held_elsewhere_and_its_viewers_steer_them() {
    let redis = Redis::start();
    // A holds the demo and takes a live publisher; C is an edge: it serves other nodes'
    // sessions through relays.
    let a = node("relay-a", &redis, true);
    let c = Wisp::start(
        "relay-c",
        &format!(
            "demo = false\nidle_timeout = 30\n[cluster]\nredis = \"{}\"\nrelay = true\n",
            redis.url()
        ),
    );
    let token = a.token("*", "view playback publish chat");
    tokio::time::sleep(Duration::from_millis(2200)).await;

    // A viewer of the demo on C plays from C (no redirect): C pulls it from A.
    let summary = whep_client::watch(
        &whep_client::http_client(),
        c.viewer("demo", &token, 30, 20),
        |_| {},
    )
    .await
    .expect("plays through the edge");
    assert!(summary.video_frames >= 30, "{summary:?}");
    assert!(
        summary
            .resource
            .as_deref()
            .unwrap_or("")
            .starts_with(&c.base),
        "{summary:?}"
    );
    assert!(
        c.wait_log("relaying the session from its node", 1),
        "{}",
        c.log()
    );
    // The API on C is about the session itself (A's answers it); the cluster's list shows
    // C's relay of it too.
    let shown = c.api("/api/sessions/demo").await;
    assert_eq!(shown["kind"], "vod", "{shown}");
    assert!(
        shown.get("relayed_from").is_none(),
        "A's session, not C's copy: {shown}"
    );
    assert!(
        eventually(5, || async {
            c.api("/api/sessions")
                .await
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["node"] == c.base && x["name"] == "demo" && x["relayed_from"] == a.base)
        })
        .await,
        "{}",
        c.api("/api/sessions").await
    );
    eprintln!(
        "VOD through the edge: first frame {:?} ms",
        summary.first_frame_ms
    );

    // A seek from a viewer on the edge moves the session itself, on A.
    let (tx, mut messages) = tokio::sync::mpsc::unbounded_channel();
    let mut opts = c.viewer("demo", &token, 1, 20);
    opts.frames = None;
    opts.control = Some(whep_client::Control::send_all(
        vec![
            r#"{"id":7,"op":"seek","to":20}"#.into(),
            r#"{"id":8,"op":"status"}"#.into(),
        ],
        tx,
        Duration::from_secs(2),
    ));
    let steered = whep_client::watch(&whep_client::http_client(), opts, |_| {})
        .await
        .expect("the edge viewer's control channel works");
    assert_eq!(steered.control_errors, 0, "{steered:?}");
    let mut replies = Vec::new();
    while let Ok(m) = messages.try_recv() {
        replies.push(m);
    }
    let seek = replies
        .iter()
        .find(|m| m.contains(r#""id":7"#))
        .unwrap_or_else(|| panic!("no seek reply: {replies:?}"));
    assert!(seek.contains(r#""ok":true"#), "{seek}");
    let status = replies
        .iter()
        .find(|m| m.contains(r#""id":8"#))
        .unwrap_or_else(|| panic!("no status reply: {replies:?}"));
    assert!(
        status.contains(r#""kind":"vod""#),
        "the edge says what A's session is: {status}"
    );
    let position = a.api("/api/sessions/demo").await["position"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        position >= 19.5,
        "A's session is at {position} s after the edge's seek to 20"
    );

    // A live publisher on A, watched on C through a relay: the first frame within 1 s.
    let rtmp = format!(
        "rtmp://{}/live/cam?token={token}",
        a.logged_addr("RTMP publishers on rtmp://")
    );
    let mut publisher = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-re", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=640x360:rate=30")
        .args([
            "-t", "30", "-c:v", "libx264", "-preset", "veryfast", "-g", "30",
        ])
        .args(["-pix_fmt", "yuv420p", "-f", "flv", &rtmp])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg runs");
    assert!(
        eventually(20, || async {
            a.api("/api/sessions/cam").await["state"] == "live"
                || a.api("/api/sessions/cam").await["video"].is_string()
        })
        .await,
        "the publish is live on A: {}",
        a.api("/api/sessions/cam").await
    );
    let live = whep_client::watch(
        &whep_client::http_client(),
        c.viewer("cam", &token, 30, 20),
        |_| {},
    )
    .await
    .expect("the live session plays through the edge");
    let _ = publisher.kill();
    let _ = publisher.wait();
    assert!(
        live.resource.as_deref().unwrap_or("").starts_with(&c.base),
        "{live:?}"
    );
    let first = live.first_frame_ms.unwrap_or(u64::MAX);
    eprintln!("live through the edge: first frame {first} ms");
    assert!(
        first <= 1000,
        "first frame through the edge after {first} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_past_relay_above_are_sent_to_an_edge() {
    let redis = Redis::start();
    // A sends the demo's viewers past the first to an edge; B is the only other node.
    let a = Wisp::start(
        "above-a",
        &format!(
            "demo = true\nidle_timeout = 30\n[cluster]\nredis = \"{}\"\nrelay_above = 1\n",
            redis.url()
        ),
    );
    let b = node("above-b", &redis, false);
    let token = a.token("*", "view");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut first = a.viewer("demo", &token, 100_000, 30);
    first.duration = Some(Duration::from_secs(30));
    let stays = tokio::spawn(async move {
        whep_client::watch(&whep_client::http_client(), first, |_| {}).await
    });
    assert!(
        eventually(10, || async {
            a.api("/api/sessions/demo").await["viewers"] == 1
        })
        .await
    );
    // The second viewer is sent to B, which relays the demo from A.
    assert_eq!(
        post(&format!("{}/whep/demo", a.base), &token).await,
        (307, Some(format!("{}/whep/demo?relay", b.base)))
    );
    let second = whep_client::watch(
        &whep_client::http_client(),
        a.viewer("demo", &token, 30, 20),
        |_| {},
    )
    .await
    .expect("plays through the edge it was sent to");
    assert!(
        second
            .resource
            .as_deref()
            .unwrap_or("")
            .starts_with(&b.base),
        "{second:?}"
    );
    assert!(
        b.wait_log("relaying the session from its node", 1),
        "{}",
        b.log()
    );
    stays.abort();
}
