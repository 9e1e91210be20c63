//! Who an RTMP or SRT publisher says it is: the session name and token in an RTMP stream key
//! (`NAME?token=JWT`, as OBS's "Stream Key" or the tail of FFmpeg's `rtmp://HOST/live/...`)
//! or an SRT stream id (`publish:NAME:JWT`).
//!
//! Owns parsing only: it checks the shape and the session name, not the token (`auth.rs`
//! does, as for WHIP). Every refusal says what the publisher should have sent.

use crate::auth::valid_session_name;

/// A publisher's claim: the live session it wants and the token it offers for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishKey {
    pub session: String,
    pub token: String,
    /// `video=copy`: the publisher's H.264 goes to viewers as it is (it must be baseline).
    pub copy_video: bool,
}

/// Why a stream key or stream id names no session and token. The publisher's to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no token: use the stream key NAME?token=JWT (a token with scope publish for NAME)")]
    RtmpNoToken,
    #[error(
        "the stream id must be publish:NAME:JWT (a token with scope publish for NAME), not {0:?}"
    )]
    SrtStreamId(String),
    #[error("{0:?} is not a session name: use 1-64 of [A-Za-z0-9._-]")]
    Name(String),
    #[error("video={0:?}: use video=copy (pass baseline H.264 through) or video=transcode")]
    Video(String),
}

/// The `video=` choice of a stream key's query, if any.
fn copy_video(query: &str) -> Result<bool, KeyError> {
    match query.split('&').find_map(|kv| kv.strip_prefix("video=")) {
        None | Some("transcode") => Ok(false),
        Some("copy") => Ok(true),
        Some(other) => Err(KeyError::Video(other.chars().take(40).collect())),
    }
}

impl PublishKey {
    /// From an RTMP publish: the stream key as the client sent it (`NAME?token=JWT`, more
    /// query parameters allowed). The application name (`live` in the documented URLs) is not
    /// part of the session name.
    pub fn from_rtmp(stream_key: &str) -> Result<Self, KeyError> {
        let (name, query) = stream_key.split_once('?').unwrap_or((stream_key, ""));
        let name = name.trim_matches('/');
        let token = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .filter(|t| !t.is_empty())
            .ok_or(KeyError::RtmpNoToken)?;
        let mut key = Self::new(name, token)?;
        key.copy_video = copy_video(query)?;
        Ok(key)
    }

    /// From an SRT stream id, `publish:NAME:JWT` (SRT's access-control stream id, as
    /// mediamtx and FFmpeg's `streamid=` write it).
    pub fn from_srt(stream_id: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::SrtStreamId(stream_id.chars().take(80).collect());
        let mut parts = stream_id.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("publish"), Some(name), Some(token)) if !token.is_empty() => {
                // A token has no `?`: what follows one is options, as in an RTMP key.
                let (token, query) = token.split_once('?').unwrap_or((token, ""));
                if token.is_empty() {
                    return Err(bad());
                }
                let mut key = Self::new(name, token)?;
                key.copy_video = copy_video(query)?;
                Ok(key)
            }
            _ => Err(bad()),
        }
    }

    fn new(name: &str, token: &str) -> Result<Self, KeyError> {
        if name == "*" || !valid_session_name(name) {
            return Err(KeyError::Name(name.chars().take(80).collect()));
        }
        Ok(Self {
            session: name.to_string(),
            token: token.to_string(),
            copy_video: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtmp_stream_keys_as_obs_and_ffmpeg_send_them() {
        let k = PublishKey::from_rtmp("cam?token=a.b.c").unwrap();
        assert_eq!((k.session.as_str(), k.token.as_str()), ("cam", "a.b.c"));
        let k = PublishKey::from_rtmp("cam?foo=1&token=a.b.c&bar").unwrap();
        assert_eq!(k.token, "a.b.c");
        assert_eq!(PublishKey::from_rtmp("cam"), Err(KeyError::RtmpNoToken));
        assert_eq!(
            PublishKey::from_rtmp("cam?token="),
            Err(KeyError::RtmpNoToken)
        );
        assert!(matches!(
            PublishKey::from_rtmp("a b?token=x"),
            Err(KeyError::Name(_))
        ));
        assert!(matches!(
            PublishKey::from_rtmp("*?token=x"),
            Err(KeyError::Name(_))
        ));
        assert!(!PublishKey::from_rtmp("cam?token=t").unwrap().copy_video);
        assert!(
            PublishKey::from_rtmp("cam?token=t&video=copy")
                .unwrap()
                .copy_video
        );
        assert!(
            !PublishKey::from_rtmp("cam?video=transcode&token=t")
                .unwrap()
                .copy_video
        );
        assert_eq!(
            PublishKey::from_rtmp("cam?token=t&video=raw"),
            Err(KeyError::Video("raw".into()))
        );
    }

    #[test]
    fn srt_stream_ids() {
        let k = PublishKey::from_srt("publish:cam2:a.b.c").unwrap();
        assert_eq!((k.session.as_str(), k.token.as_str()), ("cam2", "a.b.c"));
        for bad in [
            "",
            "publish",
            "publish:cam2",
            "publish:cam2:",
            "read:cam2:a.b.c",
            "#!::r=cam",
        ] {
            assert!(
                matches!(PublishKey::from_srt(bad), Err(KeyError::SrtStreamId(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            PublishKey::from_srt("publish:../x:t"),
            Err(KeyError::Name(_))
        ));
        let k = PublishKey::from_srt("publish:cam2:a.b.c?video=copy").unwrap();
        assert_eq!((k.token.as_str(), k.copy_video), ("a.b.c", true));
        assert!(matches!(
            PublishKey::from_srt("publish:cam2:?video=copy"),
            Err(KeyError::SrtStreamId(_))
        ));
    }
}
