//! Tokens: any text as a bearer token, and any bytes as the claims of a correctly signed HS256
//! token (so the claims handling past the signature check is reached). The first byte picks.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use wisp::auth::Verifier;

const SECRET: &[u8] = b"a-fuzzing-secret-of-at-least-32-bytes!!";

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| Verifier::hs256(SECRET).expect("a key"));

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let signing_input = format!("{head}.{}", URL_SAFE_NO_PAD.encode(rest));
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
        let tag = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    };
    if let Ok(grant) = VERIFIER.verify(&token) {
        for session in ["demo", "*", ""] {
            let _ = grant.covers(session);
            for scope in wisp::auth::Scope::ALL {
                let _ = grant.check(session, scope);
            }
        }
    }
});
