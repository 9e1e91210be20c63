//! The built-in pages: `GET /` lists the sessions, `GET /play/{session}` is our own WHEP player
//! (plain HTML and JavaScript in `assets/player.html`, no third-party code, no build step).
//!
//! Owns only rendering; the player talks to the same WHEP endpoint as any other client. The
//! pages carry no X-Frame-Options so they can be embedded in an iframe.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header::{self, HeaderValue};
use axum::response::{Html, IntoResponse, Response};

use crate::auth::valid_session_name;
use crate::http::{ApiError, Shared};

const PLAYER: &str = include_str!("../assets/player.html");

/// `GET /`: the sessions, each a link to its player. Anonymous visitors see names only with
/// `public_sessions`; a token (`?token=` or a Bearer header) shows the sessions it names, with
/// player links that carry it.
pub async fn index(
    State(s): State<Shared>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Html<String> {
    let token = q.token.filter(|t| !t.is_empty());
    let grant = match &token {
        Some(t) => s
            .verifier
            .verify(t.trim())
            .map_err(|e| e.to_string())
            .map(Some),
        None => match crate::http::grant(&s, &headers) {
            Ok(g) => Ok(Some(g)),
            Err(crate::auth::AuthError::Missing) => Ok(None),
            Err(e) => Err(e.to_string()),
        },
    };
    let mut notice = String::new();
    let shown: Vec<_> = match &grant {
        Ok(Some(g)) => s
            .sessions
            .list()
            .into_iter()
            .filter(|x| g.covers(&x.name))
            .collect(),
        Ok(None) if s.config.public_sessions => s.sessions.list(),
        Ok(None) => {
            notice.push_str(
                "<p>Session names are shown to a token: open <code>/?token=JWT</code> (a token \
                 lists the sessions it names; mint one with <code>wisp token</code>).</p>",
            );
            Vec::new()
        }
        Err(why) => {
            notice.push_str(&format!(
                "<p>The token was refused: {}. Open <code>/?token=JWT</code> with a valid one.</p>",
                escape(why)
            ));
            Vec::new()
        }
    };
    let link_token = token
        .as_deref()
        .map(|t| format!("?token={}", escape(t)))
        .unwrap_or_default();
    let mut items = String::new();
    for session in &shown {
        let info = session.info();
        items.push_str(&format!(
            "<li><a href=\"/play/{n}{link_token}\">{n}</a> · {state} · {v} viewer(s)</li>\n",
            n = escape(&info.name),
            state = info.state,
            v = info.viewers
        ));
    }
    if items.is_empty() && notice.is_empty() {
        items.push_str("<li>No sessions. Create one with POST /api/sessions.</li>");
    }
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Wisp</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2rem}}</style></head><body>\
         <h1>Wisp sessions</h1>{notice}<ul>\n{items}</ul>\
         <p>Open a player with <code>/play/NAME?token=JWT</code>; mint a token with \
         <code>wisp token</code>.</p></body></html>\n"
    ))
}

/// The `?token=` of a page's URL.
#[derive(Debug, serde::Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
}

/// `GET /play/{session}`: the player page.
pub async fn play(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    if !valid_session_name(&name) || s.sessions.get(&name).is_none() {
        return ApiError::NotFound(format!("no session named {name:?}")).into_response();
    }
    let mut resp = Html(PLAYER.replace("{{SESSION}}", &escape(&name))).into_response();
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
