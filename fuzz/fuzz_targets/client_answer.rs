//! What whep-client does with a server's bytes: a 201's body as the SDP answer, then an ICE
//! restart's 200 body (an sdpfrag) applied to it, and a control-channel message. The input is
//! split at the first NUL: answer, fragment.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use str0m::config::DtlsCert;

static CERT: LazyLock<DtlsCert> = LazyLock::new(|| {
    str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("a DTLS certificate")
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (answer, fragment) = text.split_once('\0').unwrap_or((&text, ""));
    whep_client::fuzzing::answer_then_restart(&CERT, answer, fragment);
    whep_client::fuzzing::control_message(&text);
});
