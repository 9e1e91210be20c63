//! The `Link` headers of a WHIP/WHEP 201 (RFC 8288 link-values; RFC 9725 §4.6): the STUN and
//! TURN servers the server offers, with their credentials.
//!
//! Owns parsing only: comma-separated link-values across any number of header fields, `<URI>`
//! targets, parameters whose values are tokens or quoted-strings (with `\` escapes, and commas
//! and semicolons inside quotes). Anything malformed is skipped, never fatal: a server's odd
//! header must not stop a viewer.

use serde::Serialize;

/// An ICE server offered in a `Link` header with `rel="ice-server"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServerLink {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Never printed (the summary goes to logs): `has_credential` says whether there is one.
    #[serde(skip)]
    pub credential: Option<String>,
    pub has_credential: bool,
}

/// The ICE servers among the link-values of these `Link` header values, in order.
pub fn ice_servers<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<IceServerLink> {
    let mut out = Vec::new();
    for value in values {
        for link in split_values(value) {
            let Some((url, params)) = parse_value(link) else {
                continue;
            };
            let rel = params.iter().find(|(k, _)| k == "rel").map(|(_, v)| v);
            // rel is a space-separated list of relation types (RFC 8288 §3.3).
            if !rel.is_some_and(|r| r.split_ascii_whitespace().any(|t| t == "ice-server")) {
                continue;
            }
            let param = |name: &str| {
                params
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            let credential = param("credential");
            out.push(IceServerLink {
                url,
                username: param("username"),
                has_credential: credential.is_some(),
                credential,
            });
        }
    }
    out
}

/// Splits a header value into link-values: at commas outside `<...>` and quoted-strings.
fn split_values(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut in_uri, mut in_quotes, mut escaped) = (0, false, false, false);
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' if !in_uri => in_quotes = !in_quotes,
            '<' if !in_quotes => in_uri = true,
            '>' if !in_quotes => in_uri = false,
            ',' if !in_uri && !in_quotes => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// One link-value: its target and its parameters (names lower-cased, values unquoted).
fn parse_value(link: &str) -> Option<(String, Vec<(String, String)>)> {
    let link = link.trim();
    let rest = link.strip_prefix('<')?;
    let end = rest.find('>')?;
    let url = rest[..end].trim().to_string();
    if url.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    let mut s = &rest[end + 1..];
    loop {
        s = s.trim_start();
        let Some(after) = s.strip_prefix(';') else {
            break;
        };
        let after = after.trim_start();
        let name_end = after
            .find(|c: char| c == '=' || c == ';' || c.is_whitespace())
            .unwrap_or(after.len());
        let name = after[..name_end].to_ascii_lowercase();
        let mut tail = after[name_end..].trim_start();
        let mut value = String::new();
        if let Some(v) = tail.strip_prefix('=') {
            let v = v.trim_start();
            if let Some(q) = v.strip_prefix('"') {
                let (text, used) = unquote(q)?;
                value = text;
                tail = &q[used..];
            } else {
                let end = v.find(';').unwrap_or(v.len());
                value = v[..end].trim().to_string();
                tail = &v[end..];
            }
        }
        if !name.is_empty() {
            params.push((name, value));
        }
        s = tail;
    }
    Some((url, params))
}

/// The text of a quoted-string whose opening quote was consumed, and the bytes used up to and
/// including its closing quote. `None` if it never closes.
fn unquote(s: &str) -> Option<(String, usize)> {
    let mut text = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((text, i + 1)),
            '\\' => {
                let (_, next) = chars.next()?;
                text.push(next);
            }
            c => text.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_servers_come_from_every_link_value_with_their_credentials() {
        let values = [
            "<stun:stun.example.net>; rel=\"ice-server\"",
            "<turn:turn.example.net:3478?transport=udp>; rel=\"ice-server\"; \
             username=\"1700000000:wisp\"; credential=\"a,b;c\\\"d\"; \
             credential-type=\"password\", <https://example.net/other>; rel=\"next\"",
            "<turns:t.example.net:5349>;rel=ice-server;username=u;credential=p",
        ];
        let servers = ice_servers(values);
        assert_eq!(
            servers,
            [
                IceServerLink {
                    url: "stun:stun.example.net".into(),
                    username: None,
                    credential: None,
                    has_credential: false,
                },
                IceServerLink {
                    url: "turn:turn.example.net:3478?transport=udp".into(),
                    username: Some("1700000000:wisp".into()),
                    credential: Some("a,b;c\"d".into()),
                    has_credential: true,
                },
                IceServerLink {
                    url: "turns:t.example.net:5349".into(),
                    username: Some("u".into()),
                    credential: Some("p".into()),
                    has_credential: true,
                },
            ]
        );
        let printed = serde_json::to_string(&servers[2]).unwrap();
        assert!(
            !printed.contains("\"p\"") && printed.contains("\"has_credential\":true"),
            "{printed}"
        );
    }

    #[test]
    fn malformed_links_are_skipped() {
        for v in [
            "",
            ",,,",
            "stun:no-brackets; rel=\"ice-server\"",
            "<>; rel=\"ice-server\"",
            "<stun:x>; rel=\"ice-server; username=\"unterminated",
            "<stun:x",
        ] {
            let got = ice_servers([v]);
            assert!(got.is_empty(), "{v:?}: {got:?}");
        }
        assert_eq!(
            ice_servers(["<stun:ok>; rel=\"ice-server\", <stun:x"]).len(),
            1,
            "a good value next to a broken one is kept"
        );
    }
}
