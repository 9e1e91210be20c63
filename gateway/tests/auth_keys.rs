//! Public-key tokens (RS256, ES256, EdDSA; PEM and JWKS), algorithm confusion, and the
//! `wisp token` command, with the fixed test keys in tests/keys.

use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;
use wisp::auth::{AuthError, Claims, Minter, Scope, Verifier, now_secs};

fn key(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn claims() -> Claims {
    Claims {
        iat: None,
        sub: Some("bob".into()),
        ..Claims::new(vec!["demo".into()], "view chat", now_secs() + 300)
    }
}

#[test]
fn each_public_key_kind_verifies_its_own_tokens_from_pem_and_jwks() {
    let jwks = String::from_utf8(key("jwks.json")).expect("utf8");
    let by_jwks = Verifier::jwks(&jwks).expect("jwks loads");
    for kind in ["rsa", "ec", "ed"] {
        let minter = Minter::private_key_pem(&key(&format!("{kind}.key"))).expect("private key");
        let token = minter.mint(&claims());
        let by_pem = Verifier::public_key_pem(&key(&format!("{kind}.pub"))).expect("public key");
        let grant = by_pem
            .verify(&token)
            .unwrap_or_else(|e| panic!("{kind} via PEM: {e}"));
        assert!(grant.check("demo", Scope::Chat).is_ok());
        by_jwks
            .verify(&token)
            .unwrap_or_else(|e| panic!("{kind} via JWKS: {e}"));
    }
    // A key of one kind does not verify another's tokens.
    let rsa_only = Verifier::public_key_pem(&key("rsa.pub")).expect("public key");
    let ec_token = Minter::private_key_pem(&key("ec.key"))
        .expect("key")
        .mint(&claims());
    assert!(
        matches!(rsa_only.verify(&ec_token), Err(AuthError::Invalid(r)) if r.contains("ES256"))
    );
}

#[test]
fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
    // The classic confusion attack: the public key, known to everyone, used as an HMAC secret.
    let public_pem = key("rsa.pub");
    let forged = Minter::hs256(&public_pem)
        .expect("long enough to be an HMAC key")
        .mint(&claims());
    let verifier = Verifier::public_key_pem(&public_pem).expect("public key");
    let err = verifier.verify(&forged).expect_err("must not verify");
    assert!(
        matches!(&err, AuthError::Invalid(r) if r.contains("HS256")),
        "{err}"
    );
}

#[test]
fn a_tampered_payload_breaks_the_signature() {
    let minter = Minter::private_key_pem(&key("ed.key")).expect("key");
    let verifier = Verifier::public_key_pem(&key("ed.pub")).expect("key");
    let token = minter.mint(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut wider = claims();
    wider.sessions = vec!["*".into()];
    wider.scope = "admin view".into();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&wider).expect("json"));
    let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    assert_eq!(
        verifier.verify(&tampered),
        Err(AuthError::Invalid("bad signature".into()))
    );
}

fn wisp(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(args)
        .output()
        .expect("wisp runs")
}

#[test]
fn wisp_token_mints_what_the_gateway_accepts() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let secret = dir.join("secret");
    let out = wisp(&[
        "token",
        "--jwt-secret-file",
        secret.to_str().expect("utf8"),
        "--sessions",
        "demo,film",
        "--scope",
        "view playback",
        "--ttl",
        "120",
        "--sub",
        "carol",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf8");
    // The secret file ends with a newline; the key is its trimmed bytes.
    let verifier = Verifier::hs256(key("secret").trim_ascii()).expect("secret");
    let grant = verifier.verify(token.trim()).expect("valid");
    assert_eq!(grant.sub.as_deref(), Some("carol"));
    assert_eq!(grant.sessions, vec!["demo", "film"]);
    assert!(grant.check("film", Scope::Playback).is_ok());
    assert!(grant.check("film", Scope::Admin).is_err());
    let left = grant.exp - now_secs();
    assert!((110..=120).contains(&left), "expires in {left} s");

    let ed = dir.join("ed.key");
    let out = wisp(&[
        "token",
        "--jwt-private-key",
        ed.to_str().expect("utf8"),
        "--sessions",
        "*",
    ]);
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).expect("utf8");
    let grant = Verifier::public_key_pem(&key("ed.pub"))
        .expect("key")
        .verify(token.trim())
        .expect("ok");
    assert!(
        grant.check("any", Scope::View).is_ok(),
        "default scope is view"
    );
}

#[test]
fn wisp_token_refuses_mistakes_with_a_reason() {
    let secret = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys/secret");
    let s = secret.to_str().expect("utf8");
    for (args, says) in [
        (
            vec!["--sessions", "demo", "--scope", "view root"],
            "unknown scope 'root'",
        ),
        (vec!["--sessions", "a/b"], "not a session name"),
        (vec!["--sessions", "demo", "--ttl", "0"], "--ttl"),
    ] {
        let mut all = vec!["token", "--jwt-secret-file", s];
        all.extend(args);
        let out = wisp(&all);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let short = std::env::temp_dir().join(format!("wisp-short-secret-{}", std::process::id()));
    std::fs::write(&short, "tooshort\n").expect("write");
    let out = wisp(&[
        "token",
        "--jwt-secret-file",
        short.to_str().expect("utf8"),
        "--sessions",
        "demo",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32"));
    std::fs::remove_file(short).ok();
}
