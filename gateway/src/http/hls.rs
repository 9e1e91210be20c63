//! HLS for players: `GET /hls/{session}/index.m3u8` (the master playlist) and each
//! rendition's playlist, init segment and media segments below it.
//!
//! Owns serving what a session's HLS egress writes: the `view` scope checked (a `?token=`
//! query, which every URI of a served playlist then carries, so players that resolve relative
//! URIs keep it; or a Bearer header), the egress started on a player's first request when the
//! session's `hls` is `on-demand` (the default), the master playlist held back until every
//! rendition has a segment, content types and caching. Writing the files is the egress's
//! (`egress/`, `wisp-transcoder egress hls`).

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::auth::Scope;
use crate::config::HlsMode;
use crate::egress::Egress;
use crate::http::error::{HlsNotReady, Invalid, NotFound};
use crate::http::{ApiError, Shared};

/// How long the first request waits for the renditions' first segments.
const READY_WAIT: Duration = Duration::from_secs(20);

/// `GET /hls/{session}/index.m3u8`.
pub async fn master(
    State(s): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(&s, &name, None, "index.m3u8", q, &headers).await
}

/// `GET /hls/{session}/{rendition}/{file}`.
pub async fn file(
    State(s): State<Shared>,
    Path((name, rendition, file)): Path<(String, String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(&s, &name, Some(&rendition), &file, q, &headers).await
}

async fn serve(
    s: &Shared,
    name: &str,
    rendition: Option<&str>,
    file: &str,
    q: TokenQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let query_token = q.token.filter(|t| !t.is_empty());
    let grant = match &query_token {
        Some(t) => s.verifier.verify(t.trim())?,
        None => crate::http::grant(s, headers)?,
    };
    grant.check(name, Scope::View)?;
    let session = s
        .sessions
        .get(name)
        .ok_or_else(|| NotFound::Session(name.to_string()))?;
    let not_found = || ApiError::from(NotFound::HlsFile(name.to_string()));
    if !rendition.is_none_or(plain_name) || !plain_name(file) {
        return Err(not_found());
    }
    let content_type = match file.rsplit_once('.').map(|(_, e)| e) {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("m4s") => "video/iso.segment",
        Some("mp4") => "video/mp4",
        _ => return Err(not_found()),
    };
    if session.kind == crate::session::Kind::Vod
        && session.spec.codec() != crate::config::VideoCodec::H264
    {
        return Err(Invalid::Codec(
            "HLS takes H.264 video, and this session's video is VP8".into(),
        )
        .into());
    }
    let egress = match (rendition, s.hls_mode(&session)) {
        (_, HlsMode::Off) => {
            return Err(NotFound::HlsOff(name.to_string()).into());
        }
        // A player starts with the master playlist: that starts HLS if it is not running.
        (None, _) => s.egresses.hls_on_demand(&session)?,
        (Some(_), _) => s.egresses.hls_of(name).ok_or_else(not_found)?,
    };
    egress.touch();
    if rendition.is_none() {
        wait_ready(&egress).await?;
    }
    let mut path = egress.hls_dir().to_path_buf();
    if let Some(r) = rendition {
        path.push(r);
    }
    path.push(file);
    let bytes = tokio::fs::read(&path).await.map_err(|_| not_found())?;
    let playlist = content_type.starts_with("application/");
    let body = match (&query_token, playlist) {
        (Some(t), true) if plain_token(t) => {
            with_token(&String::from_utf8_lossy(&bytes), t).into_bytes()
        }
        _ => bytes,
    };
    let cache = match playlist {
        // Live playlists change every segment.
        true => "no-cache",
        // A segment never changes once it is listed (written aside, then renamed).
        false => "public, max-age=60",
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Ok(resp)
}

/// Waits until the master playlist and a segment of every rendition it lists exist, so that
/// a player's first request is answered with something it can play.
async fn wait_ready(egress: &Egress) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    loop {
        if egress.is_running() && renditions_ready(egress.hls_dir()).await {
            return Ok(());
        }
        if egress.is_finished() {
            let info = egress.info();
            let why = info.error.or(info.reason).unwrap_or_default();
            return Err(HlsNotReady::Stopped(why).into());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HlsNotReady::Starting.into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn renditions_ready(dir: &std::path::Path) -> bool {
    let Ok(master) = tokio::fs::read_to_string(dir.join("index.m3u8")).await else {
        return false;
    };
    let mut any = false;
    for uri in master
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        any = true;
        match tokio::fs::read_to_string(dir.join(uri)).await {
            Ok(p) if p.contains("#EXTINF") => {}
            _ => return false,
        }
    }
    any
}

/// A file or directory name the egress writes: letters, digits, `.`, `_`, `-`, not hidden.
fn plain_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A token safe to repeat in URIs as it is (a JWT's characters).
fn plain_token(t: &str) -> bool {
    t.len() <= 4096
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `playlist` with `?token=T` on every URI: its URI lines and `URI="…"` attributes.
fn with_token(playlist: &str, token: &str) -> String {
    let mut out = String::with_capacity(playlist.len() + 256);
    for line in playlist.lines() {
        if line.is_empty() {
            out.push('\n');
            continue;
        }
        if !line.starts_with('#') {
            out.push_str(&add_query(line, token));
        } else if let Some(start) = line.find("URI=\"") {
            let value_start = start + 5;
            match line[value_start..].find('"') {
                Some(len) => {
                    let uri = &line[value_start..value_start + len];
                    out.push_str(&line[..value_start]);
                    out.push_str(&add_query(uri, token));
                    out.push_str(&line[value_start + len..]);
                }
                None => out.push_str(line),
            }
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn add_query(uri: &str, token: &str) -> String {
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}token={token}")
}

/// The `?token=` of a URL (an HLS player cannot send a header).
#[derive(Debug, serde::Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_uri_of_a_playlist_carries_the_token() {
        let media = "#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.000000,\nseg1.m4s\n";
        assert_eq!(
            with_token(media, "a.b-c_d"),
            "#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4?token=a.b-c_d\"\n#EXTINF:2.000000,\nseg1.m4s?token=a.b-c_d\n"
        );
        let master =
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1,CODECS=\"avc1.42e01f\"\n360p/index.m3u8\n";
        assert!(with_token(master, "t").ends_with("360p/index.m3u8?token=t\n"));
        assert!(with_token(master, "t").contains("CODECS=\"avc1.42e01f\""));
    }

    #[test]
    fn only_plain_names_and_tokens_pass() {
        assert!(plain_name("seg12.m4s") && plain_name("720p"));
        for bad in ["..", ".hidden", "a/b", "", "x\ny", "a%2f"] {
            assert!(!plain_name(bad), "{bad:?}");
        }
        assert!(plain_token("eyJ0.eyJ1-_x.sig"));
        assert!(!plain_token("a\"b") && !plain_token("a\nb") && !plain_token("a&b"));
    }
}
