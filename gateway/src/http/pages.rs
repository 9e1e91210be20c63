//! The built-in pages, plain HTML and JavaScript with no third-party code and no build step:
//! the console at `GET /` (`assets/console.html`: sessions, share links, publishing settings),
//! the WHEP player at `GET /play/{session}` and the WHIP publish page at
//! `GET /publish/{session}`.
//!
//! Owns only serving them; the pages talk to the same HTTP API as any other client, and hold
//! no token but the one in their URL or the browser's storage. With `assets` configured, each
//! page is read from that folder at each request instead. The pages carry no
//! X-Frame-Options so they can be embedded in an iframe.

use axum::extract::{Path, State};
use axum::http::header::{self, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};

use crate::auth::valid_session_name;
use crate::cluster::Owner;
use crate::http::error::{Internal, NotFound};
use crate::http::{ApiError, Shared};

/// One page: its file name in an assets folder, and the copy built into the binary.
#[derive(Debug, Clone, Copy)]
struct Page {
    file: &'static str,
    builtin: &'static str,
}

const CONSOLE: Page = Page {
    file: "console.html",
    builtin: include_str!("../../assets/console.html"),
};
const PLAYER: Page = Page {
    file: "player.html",
    builtin: include_str!("../../assets/player.html"),
};
const PUBLISH: Page = Page {
    file: "publish.html",
    builtin: include_str!("../../assets/publish.html"),
};

/// `GET /`: the console. It asks for a token and lists what that token may see.
pub async fn console(State(s): State<Shared>) -> Response {
    render(&s, CONSOLE, None).await
}

/// `GET /play/{session}`: the player page, also for a name nobody has published yet (the page
/// waits for it).
pub async fn play(State(s): State<Shared>, Path(name): Path<String>, uri: Uri) -> Response {
    if let Some(to) = at_owner(&s, &name, &uri).await {
        return to;
    }
    render(&s, PLAYER, Some(&name)).await
}

/// `GET /publish/{session}`: the page that publishes a browser's camera, microphone or screen
/// with WHIP.
pub async fn publish(State(s): State<Shared>, Path(name): Path<String>, uri: Uri) -> Response {
    if let Some(to) = at_owner(&s, &name, &uri).await {
        return to;
    }
    render(&s, PUBLISH, Some(&name)).await
}

/// In a cluster, a page about a session another node holds comes from that node (a 307 with
/// the same path and query): the page then talks to the node of its session, whose WHEP and
/// WHIP answers need no redirect (a browser drops the token on a redirect to another origin).
/// Redis unreachable: the page is served here.
async fn at_owner(s: &Shared, name: &str, uri: &Uri) -> Option<Response> {
    let cluster = s.cluster.as_ref()?;
    if s.sessions.get(name).is_some() || !valid_session_name(name) {
        return None;
    }
    let Ok(Owner::There(node)) = cluster.owner(name).await else {
        return None;
    };
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let location = HeaderValue::from_str(&format!("{node}{path}")).ok()?;
    let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
    resp.headers_mut().insert(header::LOCATION, location);
    Some(resp)
}

async fn render(s: &Shared, page: Page, session: Option<&str>) -> Response {
    if let Some(name) = session
        && (!valid_session_name(name) || name == "*")
    {
        return ApiError::from(NotFound::BadSessionName(name.to_string())).into_response();
    }
    let text = match &s.config.assets {
        Some(dir) => {
            let path = dir.join(page.file);
            match tokio::fs::read_to_string(&path).await {
                Ok(text) => text,
                Err(e) => {
                    // The path is the operator's to see, in the log, not a visitor's.
                    tracing::warn!(path = %path.display(), "page not served: {e}");
                    return ApiError::from(Internal::Page(page.file)).into_response();
                }
            }
        }
        None => page.builtin.to_string(),
    };
    let text = match session {
        Some(name) => text.replace("{{SESSION}}", &escape(name)),
        None => text,
    };
    let mut resp = Html(text).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
