//! The built-in pages: `GET /` lists the sessions, `GET /play/{session}` is our own WHEP player
//! (plain HTML and JavaScript in `assets/player.html`, no third-party code, no build step).
//!
//! Owns only rendering; the player talks to the same WHEP endpoint as any other client. The
//! pages carry no X-Frame-Options so they can be embedded in an iframe.

use axum::extract::{Path, State};
use axum::http::header::{self, HeaderValue};
use axum::response::{Html, IntoResponse, Response};

use crate::auth::valid_session_name;
use crate::http::{ApiError, Shared};

const PLAYER: &str = include_str!("../assets/player.html");

/// `GET /`: the sessions, each a link to its player.
pub async fn index(State(s): State<Shared>) -> Html<String> {
    let mut items = String::new();
    for session in s.sessions.list() {
        let info = session.info();
        items.push_str(&format!(
            "<li><a href=\"/play/{n}\">{n}</a> · {state} · {v} viewer(s)</li>\n",
            n = escape(&info.name),
            state = info.state,
            v = info.viewers
        ));
    }
    if items.is_empty() {
        items.push_str("<li>No sessions. Create one with POST /api/sessions.</li>");
    }
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Wisp</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2rem}}</style></head><body>\
         <h1>Wisp sessions</h1><ul>\n{items}</ul>\
         <p>Open a player with <code>/play/NAME?token=JWT</code>; mint a token with \
         <code>wisp token</code>.</p></body></html>\n"
    ))
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
