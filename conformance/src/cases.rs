//! The cases, one per testable item of CHECKLIST.md, run against one endpoint at a time.
//!
//! Ids are the checklist's. Items the checklist states for WHIP and applies to WHEP as well
//! (its items 53 and 58: the answer checks 15–17 and 26, and 21–41 "verbatim") run against a
//! WHEP endpoint under the same name with `WHEP-` for `WHIP-`; items shared by both
//! (`WHxP-…`) keep their id and are told apart by the endpoint.
//!
//! The suite follows the spec text, not any server: no session names, auth or codecs are
//! assumed beyond what the URLs and the options give. Where the spec is ambiguous
//! (CHECKLIST.md §4) a case is INFO and says why.

use std::time::{Duration, Instant};

use reqwest::{Method, Url};

use crate::http::{Http, Req, Resp, cut};
use crate::report::{Case, Level, Verdict};
use crate::sdp::{
    Credentials, Parsed, Side, browser_offer, direction, find_attr, formats, random_token,
    restart_fragment, trickle_fragment,
};

const SDP: &str = "application/sdp";
const TRICKLE: &str = "application/trickle-ice-sdpfrag";
const ORIGIN: &str = "https://conformance.example";

/// What the run was asked to do besides the endpoints.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// A WHEP endpoint of a stream with no publisher (WHEP-409-NO-PUBLISHER).
    pub whep_no_publisher: Option<Url>,
    /// POSTs in the rate-limit burst (0: not run).
    pub burst: usize,
    /// Skip the media-level cases (no WebRTC peer).
    pub no_media: bool,
}

/// The results so far, and the filters.
#[derive(Debug)]
pub struct Run {
    pub http: Http,
    pub cases: Vec<Case>,
    pub only: Vec<String>,
    pub skip: Vec<String>,
    pub settings: Settings,
}

/// A session the suite created: its URL and the answer's parts.
#[derive(Debug, Clone)]
struct Created {
    url: Url,
    resp: Resp,
    answer: Parsed,
    creds: Credentials,
}

impl Run {
    fn wanted(&self, id: &str) -> bool {
        (self.only.is_empty() || self.only.iter().any(|o| o == id))
            && !self.skip.iter().any(|s| s == id)
    }

    fn record(
        &mut self,
        endpoint: &'static str,
        id: &str,
        level: Level,
        section: &'static str,
        result: Result<String, String>,
    ) {
        let (result, detail) = match result {
            Ok(d) => (Verdict::Pass, d),
            Err(d) => (Verdict::Fail, d),
        };
        self.push(endpoint, id, level, section, result, detail);
    }

    fn skipped(
        &mut self,
        endpoint: &'static str,
        id: &str,
        level: Level,
        section: &'static str,
        why: String,
    ) {
        self.push(endpoint, id, level, section, Verdict::Skip, why);
    }

    fn push(
        &mut self,
        endpoint: &'static str,
        id: &str,
        level: Level,
        section: &'static str,
        result: Verdict,
        detail: String,
    ) {
        if self.wanted(id) {
            self.cases.push(Case {
                id: id.to_string(),
                endpoint,
                level,
                section,
                result,
                detail,
            });
        }
    }

    async fn send(&mut self, req: Req) -> Result<Resp, String> {
        self.http.send(req).await
    }

    /// POSTs an offer; a WHIP endpoint that is busy with the suite's previous publisher
    /// (409: one publisher per stream) is asked again for up to 3 s.
    async fn post_offer(
        &mut self,
        side: Side,
        endpoint: &Url,
        content_type: Option<&str>,
        body: &str,
        extra: &[(&str, &str)],
    ) -> Result<Resp, String> {
        let started = Instant::now();
        loop {
            let mut req = Req::new(Method::POST, endpoint).body(content_type, body);
            for (n, v) in extra {
                req = req.header(n, v);
            }
            let r = self.send(req).await?;
            if side == Side::Whip && r.status == 409 && started.elapsed() < Duration::from_secs(3) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            return Ok(r);
        }
    }

    /// POSTs a browser-shaped offer (with `edit` applied) and returns the session if 201.
    async fn create(
        &mut self,
        side: Side,
        endpoint: &Url,
        edit: impl FnOnce(String) -> String,
    ) -> Result<Created, String> {
        let creds = Credentials::random();
        let offer = edit(browser_offer(side, &creds, "actpass"));
        let resp = self
            .post_offer(side, endpoint, Some(SDP), &offer, &[("origin", ORIGIN)])
            .await?;
        if resp.status != 201 {
            return Err(format!(
                "POST of a browser-shaped offer got {}",
                resp.brief()
            ));
        }
        let loc = resp.header("location");
        // Relative to where it was answered (after any redirect).
        let url = resp
            .at
            .join(&loc)
            .map_err(|e| format!("Location {loc:?} does not resolve: {e}"))?;
        Ok(Created {
            url,
            answer: Parsed::new(&resp.body),
            resp,
            creds,
        })
    }

    async fn delete(&mut self, url: &Url) -> Option<u16> {
        self.send(Req::new(Method::DELETE, url))
            .await
            .ok()
            .map(|r| r.status)
    }

    async fn patch(
        &mut self,
        url: &Url,
        content_type: &str,
        if_match: Option<&str>,
        body: &str,
    ) -> Result<Resp, String> {
        let mut req = Req::new(Method::PATCH, url).body(Some(content_type), body);
        if let Some(tag) = if_match {
            req = req.header("if-match", tag);
        }
        self.send(req).await
    }
}

fn is_4xx(s: u16) -> bool {
    (400..500).contains(&s)
}

fn check(ok: bool, pass: String, fail: String) -> Result<String, String> {
    if ok { Ok(pass) } else { Err(fail) }
}

/// Runs every case against one endpoint.
pub async fn endpoint(run: &mut Run, side: Side, url: &Url) {
    let ep: &'static str = match side {
        Side::Whip => "whip",
        Side::Whep => "whep",
    };
    let p = side.name();
    let id = |rest: &str| format!("{p}-{rest}");
    let sec = |whip: &'static str, whep: &'static str| match side {
        Side::Whip => whip,
        Side::Whep => whep,
    };
    let errors_before = run.http.errors.len();
    let mut locations = Vec::new();

    // --- The session every later case uses.
    let main = run.create(side, url, |o| o).await;
    match &main {
        Ok(c) => {
            let r = &c.resp;
            let mut bad = Vec::new();
            if r.media_type() != SDP {
                bad.push(format!("Content-Type is {:?}", r.header("content-type")));
            }
            if !r.body.starts_with("v=0") || !Parsed::is_valid(&r.body) {
                bad.push(format!("the body is not SDP: {:?}", cut(&r.body, 60)));
            }
            locations.push(c.url.clone());
            run.record(
                ep,
                &id("POST-201"),
                Level::Must,
                sec("W§4.2", "E§4.3.1"),
                check(
                    bad.is_empty(),
                    format!(
                        "POST browser-shaped offer → {}; Location {}",
                        r.brief(),
                        c.url
                    ),
                    bad.join("; "),
                ),
            );
        }
        Err(e) => {
            let e = e.clone();
            run.record(
                ep,
                &id("POST-201"),
                Level::Must,
                sec("W§4.2", "E§4.3.1"),
                Err(e),
            );
        }
    }
    let main = main.ok();

    if let Some(c) = &main {
        answer_cases(run, side, ep, c);
        link_cases(run, side, ep, c);
        if side == Side::Whep {
            extension_cases(run, ep, url, c).await;
        }
    } else {
        let dir = match side {
            Side::Whip => ("WHIP-DIR-ANSWER".to_string(), "W§4.2"),
            Side::Whep => ("WHEP-DIR".to_string(), "E§4.3.5"),
        };
        for (i, s) in [
            dir,
            (id("BUNDLE"), "W§4.4.1"),
            (id("SETUP-ANSWER"), "J§5.3.1"),
            (id("ANSWER-JSEP"), "J§5.3.1"),
            (id("ANSWER-CANDS"), "W§4.3.2"),
        ] {
            run.skipped(
                ep,
                &i,
                Level::Must,
                s,
                "no session: the first POST was not 201".into(),
            );
        }
    }

    // --- GET, HEAD, other methods.
    {
        let mut bad = Vec::new();
        let mut seen = Vec::new();
        let mut targets = vec![url.clone()];
        if let Some(c) = &main {
            targets.push(c.url.clone());
        }
        for t in &targets {
            match run.send(Req::new(Method::GET, t)).await {
                Ok(r) => {
                    seen.push(format!("GET {} → {}", t.path(), r.status));
                    if !(200..300).contains(&r.status) || !r.body.is_empty() {
                        bad.push(format!(
                            "GET {} → {} with {} bytes",
                            t.path(),
                            r.status,
                            r.body.len()
                        ));
                    }
                }
                Err(e) => bad.push(e),
            }
        }
        run.record(
            ep,
            "WHxP-GET-2XX",
            Level::Must,
            "W§4.1; E§4.1",
            check(bad.is_empty(), seen.join(", "), bad.join("; ")),
        );
    }
    if side == Side::Whep {
        let r = run.send(Req::new(Method::HEAD, url)).await;
        let result = r.and_then(|r| {
            check(
                r.status == 200 && r.media_type() == SDP && r.body.is_empty(),
                format!("HEAD → 200, Content-Type {}", r.header("content-type")),
                format!(
                    "HEAD → {}, Content-Type {:?}, {} bytes (want 200, application/sdp, no body)",
                    r.status,
                    r.header("content-type"),
                    r.body.len()
                ),
            )
        });
        run.record(ep, "WHEP-HEAD", Level::Should, "E§4.2", result);
    }
    {
        let mut seen = Vec::new();
        let mut ok = true;
        let probes = [
            (Method::PUT, url.clone(), "405 with Allow"),
            (
                Method::from_bytes(b"FOO").expect("a token"),
                url.clone(),
                "501",
            ),
        ];
        for (m, u, want) in probes {
            if let Ok(r) = run.send(Req::new(m.clone(), &u)).await {
                let good = match want {
                    "501" => r.status == 501 || r.status == 405,
                    _ => r.status == 405 && r.has("allow"),
                };
                ok &= good;
                seen.push(format!(
                    "{m} {} → {}{} (recommended {want})",
                    u.path(),
                    r.status,
                    if r.has("allow") {
                        format!(", Allow: {}", r.header("allow"))
                    } else {
                        String::new()
                    }
                ));
            }
        }
        let detail = seen.join("; ");
        run.record(
            ep,
            "WHxP-METHOD-OTHER",
            Level::Info,
            "RFC 9110 §15.5.6 (derived)",
            if ok { Ok(detail) } else { Err(detail) },
        );
    }

    // --- OPTIONS and CORS.
    options_cases(run, side, ep, url, main.as_ref()).await;

    // --- Auth on the endpoint.
    auth_cases(run, side, ep, url, main.as_ref()).await;

    // --- PATCH: trickle, restart, entity-tags.
    if let Some(c) = &main {
        patch_cases(run, side, ep, c).await;
    } else {
        run.skipped(
            ep,
            &id("TRICKLE-204"),
            Level::Must,
            "W§4.3.2",
            "no session to PATCH".into(),
        );
    }

    // --- DELETE.
    if let Some(c) = &main {
        let r = run
            .send(Req::new(Method::DELETE, &c.url).header("if-match", "\"bogus\""))
            .await;
        run.record(
            ep,
            &id("DELETE-NO-ETAG"),
            Level::Must,
            sec("W§4.3.1", "E§4.4"),
            r.and_then(|r| {
                check(
                    r.status == 200,
                    "DELETE with If-Match: \"bogus\" → 200 (entity-tag ignored)".into(),
                    format!("DELETE with If-Match: \"bogus\" → {} (want 200)", r.brief()),
                )
            }),
        );
    }
    match run.create(side, url, |o| o).await {
        Ok(c) => {
            locations.push(c.url.clone());
            let first = run.delete(&c.url).await;
            let again = run.delete(&c.url).await;
            let patch = run
                .patch(&c.url, TRICKLE, Some("*"), &trickle_fragment(&c.creds, &[]))
                .await
                .map(|r| r.status)
                .ok();
            run.record(
                ep,
                &id("DELETE"),
                Level::Must,
                sec("W§4.2", "E§4.4"),
                check(
                    first == Some(200),
                    format!(
                        "DELETE → 200; again → {again:?}, PATCH after → {patch:?} (404 recommended)"
                    ),
                    format!("DELETE → {first:?} (want exactly 200: OBS takes nothing else)"),
                ),
            );
        }
        Err(e) => run.skipped(ep, &id("DELETE"), Level::Must, "W§4.2", e),
    }
    {
        let ghost = url
            .join(&format!(
                "{}/{}",
                url.path().trim_end_matches('/'),
                random_token(32)
            ))
            .expect("a path joins");
        let d = run.delete(&ghost).await;
        let pa = run
            .patch(&ghost, TRICKLE, Some("*"), "a=end-of-candidates\r\n")
            .await
            .map(|r| r.status)
            .ok();
        run.record(
            ep,
            "WHxP-UNKNOWN-SESSION",
            Level::Info,
            "derived (RFC 9110 §15.5.5)",
            check(
                d == Some(404) && pa == Some(404),
                format!("DELETE and PATCH of a session never issued → 404, 404 ({ghost})"),
                format!("DELETE → {d:?}, PATCH → {pa:?} of a session never issued (404 expected)"),
            ),
        );
    }

    // --- POST variants.
    post_variants(run, side, ep, url, &mut locations).await;

    // --- Session URL entropy.
    entropy_case(run, ep, &locations);

    // --- Deployment and load.
    {
        let host = url.host_str().unwrap_or("");
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback());
        if url.scheme() == "https" {
            run.record(
                ep,
                "WHxP-HTTPS",
                Level::Must,
                "W§5; E§5",
                Ok("the endpoint is https".into()),
            );
        } else if loopback {
            run.skipped(
                ep,
                "WHxP-HTTPS",
                Level::Must,
                "W§5; E§5",
                format!(
                    "plain http on a loopback address ({host}): a deployment check, run it \
                     against the public URL"
                ),
            );
        } else {
            run.record(
                ep,
                "WHxP-HTTPS",
                Level::Must,
                "W§5; E§5",
                Err(format!("the endpoint {url} is not https")),
            );
        }
    }
    rate_case(run, side, ep, url).await;

    match side {
        Side::Whep => whep_only(run, ep, url, main.as_ref()).await,
        Side::Whip => whip_media_cases(run, ep, url).await,
    }

    // Every problem-details body seen on this endpoint.
    let seen: Vec<(String, Resp)> = run.http.errors[errors_before..].to_vec();
    let mut bad = Vec::new();
    let mut problems = 0;
    let mut unavailable = Vec::new();
    for (what, r) in &seen {
        if r.status == 503 {
            unavailable.push((what.clone(), r.header("retry-after")));
        }
        if r.media_type() != "application/problem+json" || r.body.is_empty() {
            continue;
        }
        problems += 1;
        match serde_json::from_str::<serde_json::Value>(&r.body) {
            Ok(v) => {
                if let Some(s) = v.get("status")
                    && s.as_u64() != Some(u64::from(r.status))
                {
                    bad.push(format!("{what}: status {s} in a {} response", r.status));
                }
            }
            Err(e) => bad.push(format!("{what}: problem+json that is not JSON: {e}")),
        }
    }
    run.record(
        ep,
        "WHxP-ERR-GENERIC",
        Level::Should,
        "W§4.1; E§4.1; RFC 9457",
        check(
            bad.is_empty(),
            format!(
                "{} error responses, {problems} with problem details, all well-formed",
                seen.len()
            ),
            bad.join("; "),
        ),
    );
    if unavailable.is_empty() {
        run.skipped(
            ep,
            "WHxP-503",
            Level::May,
            "W§4.5; E§4.7",
            "no 503 seen in this run".into(),
        );
    } else {
        let bad: Vec<String> = unavailable
            .iter()
            .filter(|(_, ra)| !ra.is_empty() && ra.parse::<u64>().is_err() && !ra.contains("GMT"))
            .map(|(w, ra)| format!("{w}: Retry-After {ra:?}"))
            .collect();
        run.record(
            ep,
            "WHxP-503",
            Level::May,
            "W§4.5; E§4.7",
            check(
                bad.is_empty(),
                format!(
                    "{} 503s, Retry-After delay-seconds or HTTP-date where present",
                    unavailable.len()
                ),
                bad.join("; "),
            ),
        );
    }
    redirect_case(run, ep);
}

/// Item 45: the redirects this endpoint's POSTs got (a load balancer, or a cluster node that
/// does not hold the session) are 307 or 308 with a `Location`; never 301, 302 or 303.
fn redirect_case(run: &mut Run, ep: &'static str) {
    let seen = std::mem::take(&mut run.http.redirects);
    if seen.is_empty() {
        run.skipped(
            ep,
            "WHxP-REDIRECT",
            Level::Must,
            "W§4.5; E§4.7",
            "no redirect in this run (give the endpoint of a node that does not hold the \
             session to test one)"
                .into(),
        );
        return;
    }
    let bad: Vec<String> = seen
        .iter()
        .filter(|(status, _, location)| !matches!(status, 307 | 308) || location.is_empty())
        .map(|(status, from, location)| format!("POST {from} → {status} Location {location:?}"))
        .collect();
    let (status, from, location) = &seen[0];
    run.record(
        ep,
        "WHxP-REDIRECT",
        Level::Must,
        "W§4.5; E§4.7",
        check(
            bad.is_empty(),
            format!(
                "{} redirects, all 307/308 with Location (first: POST {from} → {status} \
                 Location {location}), followed with the same request",
                seen.len()
            ),
            bad.join("; "),
        ),
    );
}

/// Checks of the 201's answer (items 9, 11, 15–18, 54, 60).
fn answer_cases(run: &mut Run, side: Side, ep: &'static str, c: &Created) {
    let p = side.name();
    let id = |rest: &str| format!("{p}-{rest}");
    let a = &c.answer;
    let offer = Parsed::new(&browser_offer(side, &c.creds, "actpass"));
    let accepted: Vec<&Vec<String>> = a.accepted().collect();

    // Direction.
    let want = side.answer_direction();
    let dirs: Vec<String> = accepted
        .iter()
        .map(|m| direction(m).unwrap_or("none").to_string())
        .collect();
    let (dir_id, dir_sec) = match side {
        Side::Whip => ("WHIP-DIR-ANSWER".to_string(), "W§4.2"),
        Side::Whep => ("WHEP-DIR".to_string(), "E§4.3.5"),
    };
    run.record(
        ep,
        &dir_id,
        Level::Must,
        dir_sec,
        check(
            !dirs.is_empty() && dirs.iter().all(|d| d == want),
            format!("every accepted section is {want}"),
            format!("accepted sections' directions {dirs:?}, want {want}"),
        ),
    );

    // BUNDLE and rtcp-mux.
    let mids: Vec<&str> = accepted
        .iter()
        .filter_map(|m| find_attr(m, "mid"))
        .collect();
    let group = find_attr(&a.session, "group").unwrap_or("");
    let bundled: Vec<&str> = group
        .strip_prefix("BUNDLE")
        .map(|g| g.split_whitespace().collect())
        .unwrap_or_default();
    let no_mux: Vec<&str> = accepted
        .iter()
        .filter(|m| find_attr(m, "rtcp-mux").is_none())
        .filter_map(|m| find_attr(m, "mid"))
        .collect();
    let mux_only = accepted
        .iter()
        .filter(|m| find_attr(m, "rtcp-mux-only").is_some())
        .count();
    run.record(
        ep,
        &id("BUNDLE"),
        Level::Must,
        match side {
            Side::Whip => "W§4.4.1; J§5.3.1",
            Side::Whep => "E§4.6.1; J§5.3.1",
        },
        check(
            mids.iter().all(|m| bundled.contains(m)) && no_mux.is_empty(),
            format!(
                "a=group:BUNDLE {}; a=rtcp-mux in every accepted section; a=rtcp-mux-only in \
                 {mux_only} of {} (W§4.4.1 asks for it, RFC 8858 defines it for offers: \
                 CHECKLIST §4)",
                bundled.join(" "),
                accepted.len()
            ),
            format!(
                "BUNDLE group {bundled:?} for accepted mids {mids:?}; sections without \
                 a=rtcp-mux: {no_mux:?}"
            ),
        ),
    );

    if side == Side::Whep {
        let streams: Vec<Option<&str>> = accepted
            .iter()
            .filter(|m| direction(m) == Some("sendonly"))
            .map(|m| find_attr(m, "msid").and_then(|v| v.split_whitespace().next()))
            .collect();
        let first = streams.first().copied().flatten();
        run.record(
            ep,
            "WHEP-MSID",
            Level::Must,
            "E§4.6.2",
            check(
                first.is_some() && streams.iter().all(|s| *s == first),
                format!("every sendonly section has a=msid:{}", first.unwrap_or("")),
                format!("msid stream ids per sendonly section: {streams:?}"),
            ),
        );
    }

    // DTLS role.
    let setups: Vec<&str> = a.media.iter().filter_map(|m| a.attr(m, "setup")).collect();
    run.record(
        ep,
        &id("SETUP-ANSWER"),
        Level::Must,
        "J§5.3.1",
        check(
            !setups.is_empty() && setups.iter().all(|s| *s == "active" || *s == "passive"),
            format!(
                "a=setup:{} for an actpass offer",
                setups.first().unwrap_or(&"")
            ),
            format!("a=setup values {setups:?} (want active or passive)"),
        ),
    );

    // JSEP shape.
    let mut bad = Vec::new();
    if a.media.len() != offer.media.len() {
        bad.push(format!(
            "{} m= lines for an offer of {}",
            a.media.len(),
            offer.media.len()
        ));
    }
    for (i, (am, om)) in a.media.iter().zip(&offer.media).enumerate() {
        let kind = |m: &Vec<String>| m[0].split_whitespace().next().unwrap_or("").to_string();
        let proto = |m: &Vec<String>| m[0].split_whitespace().nth(2).unwrap_or("").to_string();
        if kind(am) != kind(om) || proto(am) != proto(om) {
            bad.push(format!(
                "m= line {i} is {:?}, the offer's {:?}",
                am[0], om[0]
            ));
        }
        if find_attr(am, "mid") != find_attr(om, "mid") {
            bad.push(format!("m= line {i} has mid {:?}", find_attr(am, "mid")));
        }
        let rejected = am[0].split_whitespace().nth(1) == Some("0");
        if !rejected {
            let offered = formats(om);
            if !formats(am).iter().any(|f| offered.contains(f)) {
                bad.push(format!("m= line {i} has no format the offer had"));
            }
            for attr in ["ice-ufrag", "ice-pwd", "fingerprint", "setup"] {
                if a.attr(am, attr).is_none() {
                    bad.push(format!("m= line {i} lacks a={attr}"));
                }
            }
        }
    }
    let bundle_only = a.count("bundle-only");
    run.record(
        ep,
        &id("ANSWER-JSEP"),
        Level::Must,
        "J§5.3.1",
        check(
            bad.is_empty(),
            format!(
                "{} m= lines in the offer's order with its mids, protos and formats; ICE and \
                 DTLS attributes present{}",
                a.media.len(),
                if bundle_only > 0 {
                    format!("; {bundle_only} a=bundle-only (J forbids, the spec examples use it)")
                } else {
                    String::new()
                }
            ),
            bad.join("; "),
        ),
    );

    // Candidates.
    let cands: Vec<String> = a
        .session
        .iter()
        .chain(a.media.iter().flatten())
        .filter(|l| l.starts_with("a=candidate:"))
        .cloned()
        .collect();
    let host_udp = cands
        .iter()
        .filter(|c| c.to_ascii_lowercase().contains(" udp ") && c.contains("typ host"))
        .count();
    let end = a.count("end-of-candidates") > 0;
    run.record(
        ep,
        &id("ANSWER-CANDS"),
        Level::Must,
        sec_cands(side),
        check(
            !cands.is_empty(),
            format!(
                "{} candidates ({host_udp} UDP host){}",
                cands.len(),
                if end {
                    ", a=end-of-candidates"
                } else {
                    "; no a=end-of-candidates (recommended)"
                }
            ),
            "the answer has no a=candidate: the full list is required (no server trickle)".into(),
        ),
    );

    let lite = a.count("ice-lite") > 0;
    run.record(
        ep,
        &id("ICE-MODE"),
        Level::Info,
        match side {
            Side::Whip => "W§4.4.5",
            Side::Whep => "E§4.6.3",
        },
        Ok(if lite {
            "ICE-lite (fine only where every client can reach the server's addresses)".into()
        } else {
            "full ICE".into()
        }),
    );
}

fn sec_cands(side: Side) -> &'static str {
    match side {
        Side::Whip => "W§4.3.2",
        Side::Whep => "E§4.5.2 → W§4.3.2",
    }
}

/// `Link` headers of the 201: ICE servers and extensions (items 42, 43, 47, 62, 63, 67).
fn link_cases(run: &mut Run, side: Side, ep: &'static str, c: &Created) {
    let p = side.name();
    let links: Vec<String> = c
        .resp
        .all("link")
        .iter()
        .flat_map(|v| split_links(v))
        .collect();
    let ice: Vec<&String> = links
        .iter()
        .filter(|l| l.to_ascii_lowercase().contains("rel=\"ice-server\""))
        .collect();
    if ice.is_empty() {
        run.skipped(
            ep,
            &format!("{p}-ICE-LINK"),
            Level::May,
            "W§4.6",
            "no ice-server Link on the 201 (none configured)".into(),
        );
    } else {
        let mut bad = Vec::new();
        for l in &ice {
            let target = l
                .trim()
                .strip_prefix('<')
                .and_then(|r| r.split_once('>'))
                .map(|(t, _)| t);
            let Some(target) = target else {
                bad.push(format!("{l}: target not in <>"));
                continue;
            };
            let scheme = target.split(':').next().unwrap_or("");
            if !["stun", "stuns", "turn", "turns"].contains(&scheme) {
                bad.push(format!("{target}: scheme {scheme}"));
            }
            if l.matches("rel=").count() != 1 {
                bad.push(format!("{l}: rel more than once"));
            }
            if scheme.starts_with("turn") && !(l.contains("username=") && l.contains("credential="))
            {
                bad.push(format!("{target}: TURN without username and credential"));
            }
            if let Some((_, ct)) = l.split_once("credential-type=")
                && !ct.trim_start_matches('"').starts_with("password")
            {
                bad.push(format!("{target}: credential-type {ct}"));
            }
        }
        run.record(
            ep,
            &format!("{p}-ICE-LINK"),
            Level::May,
            "W§4.6; RFC 8288",
            check(
                bad.is_empty(),
                format!("{} ice-server Links, well-formed", ice.len()),
                bad.join("; "),
            ),
        );
        let joined = c
            .resp
            .all("link")
            .iter()
            .filter(|v| v.contains("ice-server") && split_links(v).len() > 1)
            .count();
        run.record(
            ep,
            &format!("{p}-ICE-LINK-FORMAT"),
            Level::Info,
            "W§4.6 examples",
            check(
                joined == 0,
                "one Link field per ICE server".into(),
                format!(
                    "{joined} Link fields carry several ICE servers (some clients split them \
                     wrongly)"
                ),
            ),
        );
    }
    let prefix = format!("urn:ietf:params:{}:ext", p.to_ascii_lowercase());
    let exts: Vec<&String> = links.iter().filter(|l| l.contains(&prefix)).collect();
    let bad: Vec<&&String> = exts
        .iter()
        .filter(|l| {
            let t = l
                .trim()
                .strip_prefix('<')
                .and_then(|r| r.split_once('>'))
                .map(|(t, _)| t);
            t.is_none_or(|t| c.url.join(t).is_err())
        })
        .collect();
    run.record(
        ep,
        &format!("{p}-EXT-LINK"),
        Level::Must,
        match side {
            Side::Whip => "W§4.9",
            Side::Whep => "E§4.10",
        },
        check(
            bad.is_empty(),
            if exts.is_empty() {
                "no extension advertised".into()
            } else {
                format!("{} extension Links with resolvable targets", exts.len())
            },
            format!("extension Links without a usable target: {bad:?}"),
        ),
    );
    if side == Side::Whep {
        let sse = links
            .iter()
            .find(|l| l.contains("urn:ietf:params:whep:ext:core:server-sent-events"));
        match sse {
            None => run.skipped(
                ep,
                "WHEP-EXT-SSE-LINK",
                Level::May,
                "X (draft-ietf-wish-whep-02 §4.9.1)",
                "the server-sent events extension is not advertised".into(),
            ),
            Some(l) => {
                let known = [
                    "active",
                    "inactive",
                    "layers",
                    "reconnect",
                    "viewercount",
                    "scte35",
                ];
                let events = l
                    .split_once("events=")
                    .map(|(_, e)| e.trim_matches(['"', ' ', ';']).to_string())
                    .unwrap_or_default();
                let unknown: Vec<&str> = events
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty() && !known.contains(e))
                    .collect();
                run.record(
                    ep,
                    "WHEP-EXT-SSE-LINK",
                    Level::Must,
                    "X (draft-ietf-wish-whep-02 §4.9.1)",
                    check(
                        unknown.is_empty(),
                        format!("events=\"{events}\""),
                        format!("unknown event types {unknown:?}"),
                    ),
                );
            }
        }
        let layer = links
            .iter()
            .any(|l| l.contains("urn:ietf:params:whep:ext:core:layer"));
        if layer {
            let with_layers = sse.is_some_and(|l| l.contains("layers"));
            run.record(
                ep,
                "WHEP-EXT-LAYER",
                Level::Must,
                "X (draft-ietf-wish-whep-02 §4.9.2)",
                check(
                    with_layers,
                    "layer selection with an SSE link that offers \"layers\"".into(),
                    "layer selection advertised without SSE \"layers\" events".into(),
                ),
            );
        } else {
            run.skipped(
                ep,
                "WHEP-EXT-LAYER",
                Level::May,
                "X (draft-ietf-wish-whep-02 §4.9.2)",
                "the layer selection extension is not advertised".into(),
            );
        }
    }
}

/// The target of the 201's `Link` with relation `rel`, resolved against the URL that
/// answered the 201, and the link-value.
fn link_target(c: &Created, rel: &str) -> Option<(Url, String)> {
    c.resp
        .all("link")
        .iter()
        .flat_map(|v| split_links(v))
        .filter(|l| l.contains(&format!("rel=\"{rel}\"")) || l.contains(&format!("rel={rel}")))
        .find_map(|l| {
            let t = l.trim().strip_prefix('<')?.split_once('>')?.0.to_string();
            Some((c.resp.at.join(&t).ok()?, l))
        })
}

/// One server-sent event, as WHATWG parses its lines: its type, and its `data:` lines.
#[derive(Debug, Default)]
struct SseMessage {
    event: Option<String>,
    data: Vec<String>,
}

/// The events of a `text/event-stream` body (comments and keep-alives dropped; a message
/// cut off at the end is left out).
fn sse_messages(body: &str) -> Vec<SseMessage> {
    let mut out = Vec::new();
    let mut cur = SseMessage::default();
    for line in body.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            // WHATWG: a block whose data buffer is empty dispatches nothing.
            let m = std::mem::take(&mut cur);
            if !m.data.is_empty() {
                out.push(m);
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => cur.event = Some(value.to_string()),
            "data" => cur.data.push(value.to_string()),
            _ => {}
        }
    }
    out
}

/// Items 64–67: the server-sent events and layer selection extensions, when advertised: a
/// stream made for two event types and one unknown type refused, the stream's format, its
/// DELETE and its end with the resource; a layer request for the default.
async fn extension_cases(run: &mut Run, ep: &'static str, endpoint: &Url, c: &Created) {
    const SSE: &str = "urn:ietf:params:whep:ext:core:server-sent-events";
    const LAYER: &str = "urn:ietf:params:whep:ext:core:layer";
    const X1: &str = "X (draft-ietf-wish-whep-02 §4.9.1)";
    const X2: &str = "X (draft-ietf-wish-whep-02 §4.9.2)";
    match link_target(c, SSE) {
        None => {
            for id in [
                "WHEP-EXT-SSE-CREATE",
                "WHEP-EXT-SSE-BAD",
                "WHEP-EXT-SSE-STREAM",
                "WHEP-EXT-SSE-DELETE",
            ] {
                run.skipped(
                    ep,
                    id,
                    Level::May,
                    X1,
                    "the server-sent events extension is not advertised".into(),
                );
            }
        }
        Some((sse, link)) => {
            // The `events` parameter's value, up to the next parameter.
            let advertised: Vec<String> = link
                .split(';')
                .find_map(|p| p.trim().strip_prefix("events="))
                .map(|e| {
                    e.trim_matches(['"', ' '])
                        .split(',')
                        .map(|x| x.trim().to_string())
                        .collect()
                })
                .unwrap_or_default();
            // Types the server says it has (the spec's defaults if it names none): "active"
            // (the stream plays), "inactive" (which must not come first) and "viewercount".
            let mut want: Vec<String> = ["active", "inactive", "viewercount"]
                .iter()
                .filter(|t| advertised.is_empty() || advertised.iter().any(|a| a == *t))
                .map(|t| t.to_string())
                .collect();
            if want.is_empty() {
                want = advertised.iter().take(2).cloned().collect();
            }
            let body = serde_json::to_string(&want).expect("strings serialize");
            let made = run
                .send(Req::new(Method::POST, &sse).body(Some("application/json"), &body))
                .await;
            let stream = match &made {
                Ok(r) if r.status == 201 && !r.header("location").is_empty() => {
                    r.at.join(&r.header("location")).ok()
                }
                _ => None,
            };
            run.record(
                ep,
                "WHEP-EXT-SSE-CREATE",
                Level::Must,
                X1,
                match &made {
                    Ok(r) => check(
                        stream.is_some(),
                        format!("POST {body} → 201, Location {}", r.header("location")),
                        format!(
                            "POST {body} → {} with Location {:?}",
                            r.brief(),
                            r.header("location")
                        ),
                    ),
                    Err(e) => Err(e.clone()),
                },
            );
            let bad = run
                .send(
                    Req::new(Method::POST, &sse)
                        .body(Some("application/json"), r#"["no-such-event"]"#),
                )
                .await;
            run.record(
                ep,
                "WHEP-EXT-SSE-BAD",
                Level::Must,
                "X (editor's text, PR #41/#43)",
                match bad {
                    Ok(r) => check(
                        r.status == 400,
                        "POST [\"no-such-event\"] → 400".into(),
                        format!(
                            "POST [\"no-such-event\"] → {} (want 400, and no stream)",
                            r.brief()
                        ),
                    ),
                    Err(e) => Err(e),
                },
            );
            match stream {
                None => {
                    for id in ["WHEP-EXT-SSE-STREAM", "WHEP-EXT-SSE-DELETE"] {
                        run.skipped(
                            ep,
                            id,
                            Level::Must,
                            X1,
                            "no event stream was created".into(),
                        );
                    }
                }
                Some(stream) => {
                    let pulled = run.http.pull(&stream, Duration::from_millis(2500)).await;
                    let result = match pulled {
                        Ok(r) => {
                            let msgs = sse_messages(&r.body);
                            let mut bad = Vec::new();
                            if r.status != 200 || r.media_type() != "text/event-stream" {
                                bad.push(format!(
                                    "GET → {} {:?}",
                                    r.status,
                                    r.header("content-type")
                                ));
                            }
                            for m in &msgs {
                                let t = m.event.clone().unwrap_or_else(|| "message".into());
                                if !want.contains(&t) {
                                    bad.push(format!("an event of type {t:?}, not asked for"));
                                }
                                if m.data.len() != 1 {
                                    bad.push(format!(
                                        "{t}: {} data lines (want one)",
                                        m.data.len()
                                    ));
                                } else if t == "scte35" {
                                    // Base64, not JSON.
                                } else if serde_json::from_str::<serde_json::Value>(&m.data[0])
                                    .is_err()
                                {
                                    bad.push(format!(
                                        "{t}: data is not JSON: {}",
                                        cut(&m.data[0], 60)
                                    ));
                                } else if t == "viewercount"
                                    && serde_json::from_str::<serde_json::Value>(&m.data[0])
                                        .ok()
                                        .and_then(|v| v.get("viewercount").and_then(|n| n.as_u64()))
                                        .is_none()
                                {
                                    bad.push(format!("viewercount without a count: {}", m.data[0]));
                                }
                            }
                            if msgs
                                .first()
                                .is_some_and(|f| f.event.as_deref() == Some("inactive"))
                            {
                                bad.push("a first \"inactive\" (the stream plays)".into());
                            }
                            if msgs.is_empty() && want.iter().any(|w| w == "active") {
                                bad.push(
                                    "no event in 2.5 s (the stream plays: \"active\" is due)"
                                        .into(),
                                );
                            }
                            let types: Vec<String> = msgs
                                .iter()
                                .map(|m| m.event.clone().unwrap_or_default())
                                .collect();
                            check(
                                bad.is_empty(),
                                format!("200 text/event-stream; events in 2.5 s: {types:?}"),
                                bad.join("; "),
                            )
                        }
                        Err(e) => Err(e),
                    };
                    run.record(ep, "WHEP-EXT-SSE-STREAM", Level::Must, X1, result);
                    // DELETE the stream, then a pull must be 404; a stream of a resource
                    // that is DELETEd goes with it.
                    let deleted = run
                        .send(Req::new(Method::DELETE, &stream))
                        .await
                        .map(|r| r.status);
                    let after = run
                        .http
                        .pull(&stream, Duration::from_millis(500))
                        .await
                        .map(|r| r.status);
                    let mut with_resource = None;
                    if let Ok(other) = run.create(Side::Whep, endpoint, |o| o).await
                        && let Some((sse2, _)) = link_target(&other, SSE)
                        && let Ok(r) = run
                            .send(
                                Req::new(Method::POST, &sse2).body(Some("application/json"), &body),
                            )
                            .await
                        && let Ok(s2) = r.at.join(&r.header("location"))
                    {
                        run.delete(&other.url).await;
                        with_resource = run
                            .http
                            .pull(&s2, Duration::from_millis(500))
                            .await
                            .ok()
                            .map(|r| r.status);
                    }
                    run.record(
                        ep,
                        "WHEP-EXT-SSE-DELETE",
                        Level::Must,
                        X1,
                        check(
                            deleted.as_ref().is_ok_and(|s| (200..300).contains(s))
                                && after.as_ref().is_ok_and(|s| *s == 404)
                                && with_resource == Some(404),
                            format!("DELETE → {deleted:?}, then GET → {after:?}; after the resource's DELETE, its stream → {with_resource:?}"),
                            format!("DELETE → {deleted:?}, then GET → {after:?} (want 404); after the resource's DELETE, its stream → {with_resource:?} (want 404)"),
                        ),
                    );
                }
            }
        }
    }
    match link_target(c, LAYER) {
        None => run.skipped(
            ep,
            "WHEP-EXT-LAYER-SELECT",
            Level::May,
            X2,
            "the layer selection extension is not advertised".into(),
        ),
        Some((layer, _)) => {
            // The default again: `mediaId` is the video m-line's index (1 in the suite's offer).
            let reset = run
                .send(
                    Req::new(Method::POST, &layer)
                        .body(Some("application/json"), r#"{"mediaId":"1"}"#),
                )
                .await;
            let unknown = run
                .send(Req::new(Method::POST, &layer).body(
                    Some("application/json"),
                    r#"{"mediaId":"1","rid":"no-such-layer"}"#,
                ))
                .await;
            let result = match (reset, unknown) {
                (Ok(a), Ok(b)) => check(
                    a.status == 200 && is_4xx(b.status),
                    format!(
                        "{{\"mediaId\":\"1\"}} → 200; an unknown rid → {}",
                        b.brief()
                    ),
                    format!(
                        "{{\"mediaId\":\"1\"}} → {} (want 200); an unknown rid → {} (want a 4xx)",
                        a.brief(),
                        b.brief()
                    ),
                ),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            run.record(ep, "WHEP-EXT-LAYER-SELECT", Level::Should, X2, result);
        }
    }
}

/// Splits a `Link` field value into link-values (commas outside `<>` and quotes).
fn split_links(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut cur, mut angle, mut quote) = (String::new(), false, false);
    for ch in v.chars() {
        match ch {
            '<' if !quote => angle = true,
            '>' if !quote => angle = false,
            '"' if !angle => quote = !quote,
            ',' if !angle && !quote => {
                out.push(std::mem::take(&mut cur).trim().to_string());
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Items 37–41, and the CORS headers of the 201 (39).
async fn options_cases(
    run: &mut Run,
    side: Side,
    ep: &'static str,
    url: &Url,
    main: Option<&Created>,
) {
    let p = side.name();
    let preflight = Req::new(Method::OPTIONS, url)
        .no_auth()
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        );
    match run.send(preflight).await {
        Ok(r) => {
            let lower = |n: &str| r.header(n).to_ascii_lowercase();
            let methods = lower("access-control-allow-methods");
            let headers = lower("access-control-allow-headers");
            let origin = r.header("access-control-allow-origin");
            let mut bad = Vec::new();
            if !(200..300).contains(&r.status) {
                bad.push(format!("status {}", r.status));
            }
            if origin != "*" && origin != ORIGIN {
                bad.push(format!("Access-Control-Allow-Origin {origin:?}"));
            }
            if !methods.contains("post") {
                bad.push(format!(
                    "Access-Control-Allow-Methods {methods:?} lacks POST"
                ));
            }
            for h in ["authorization", "content-type"] {
                if !headers.contains(h) {
                    bad.push(format!(
                        "Access-Control-Allow-Headers {headers:?} lacks {h}"
                    ));
                }
            }
            let accept_post = r.header("accept-post");
            run.record(
                ep,
                &format!("{p}-OPTIONS"),
                Level::Must,
                "W§4.2; E§4.4; Fetch",
                check(
                    bad.is_empty(),
                    format!(
                        "preflight → {}, allow-origin {origin}, methods {methods}, headers \
                         {headers}; Accept-Post {}",
                        r.status,
                        if accept_post.is_empty() {
                            "missing (SHOULD be application/sdp)".to_string()
                        } else {
                            accept_post.clone()
                        }
                    ),
                    format!("preflight without credentials: {}", bad.join("; ")),
                ),
            );
            let ice = r
                .all("link")
                .iter()
                .any(|l| l.to_ascii_lowercase().contains("ice-server"));
            run.record(
                ep,
                &format!("{p}-OPTIONS-ICE"),
                Level::Should,
                "W§4.6",
                check(
                    !ice,
                    "no ice-server Link on a CORS preflight".into(),
                    "ice-server Links on a CORS preflight (SHOULD NOT)".into(),
                ),
            );
            let plain = Req::new(Method::OPTIONS, url)
                .no_auth()
                .header("origin", ORIGIN);
            let plain = run.send(plain).await;
            let result = plain.and_then(|q| {
                check(
                    (200..300).contains(&r.status)
                        && (200..300).contains(&q.status)
                        && q.has("access-control-allow-origin"),
                    format!(
                        "preflight without Authorization → {}; plain OPTIONS with Origin → {} \
                         with Access-Control-Allow-Origin",
                        r.status, q.status
                    ),
                    format!(
                        "preflight without Authorization → {}; plain OPTIONS with Origin → {}, \
                         Access-Control-Allow-Origin {:?}",
                        r.status,
                        q.status,
                        q.header("access-control-allow-origin")
                    ),
                )
            });
            run.record(
                ep,
                &format!("{p}-OPTIONS-NOAUTH"),
                Level::Should,
                "W§4.7.1 (derived)",
                result,
            );
        }
        Err(e) => run.record(ep, &format!("{p}-OPTIONS"), Level::Must, "W§4.2", Err(e)),
    }
    let Some(c) = main else { return };
    let pre = Req::new(Method::OPTIONS, &c.url)
        .no_auth()
        .header("origin", ORIGIN)
        .header("access-control-request-method", "PATCH")
        .header(
            "access-control-request-headers",
            "authorization, content-type, if-match",
        );
    let result = match run.send(pre).await {
        Ok(r) => {
            let methods = r
                .header("access-control-allow-methods")
                .to_ascii_lowercase();
            let headers = r
                .header("access-control-allow-headers")
                .to_ascii_lowercase();
            check(
                (200..300).contains(&r.status)
                    && methods.contains("patch")
                    && methods.contains("delete")
                    && headers.contains("if-match"),
                format!("session preflight → {}, methods {methods}", r.status),
                format!(
                    "session preflight → {}, methods {methods:?}, headers {headers:?} (want \
                     PATCH, DELETE, If-Match)",
                    r.status
                ),
            )
        }
        Err(e) => Err(e),
    };
    run.record(
        ep,
        &format!("{p}-OPTIONS-SESSION"),
        Level::Should,
        "derived (ZLMediaKit#4727)",
        result,
    );
    let r = &c.resp;
    let expose = r
        .header("access-control-expose-headers")
        .to_ascii_lowercase();
    let origin = r.header("access-control-allow-origin");
    let missing: Vec<&str> = ["location", "etag", "link"]
        .into_iter()
        .filter(|h| !expose.contains(h) && !expose.contains('*'))
        .collect();
    run.record(
        ep,
        &format!("{p}-CORS-EXPOSE"),
        Level::Should,
        "Fetch (derived)",
        check(
            !origin.is_empty() && missing.is_empty(),
            format!("201 to a cross-origin POST: allow-origin {origin}, expose {expose}"),
            format!(
                "201 to a cross-origin POST: allow-origin {origin:?}, expose {expose:?} lacks \
                 {missing:?}"
            ),
        ),
    );
}

/// Item 44, when the suite has a token: what the server does without it.
async fn auth_cases(
    run: &mut Run,
    side: Side,
    ep: &'static str,
    url: &Url,
    main: Option<&Created>,
) {
    let creds = Credentials::random();
    let offer = browser_offer(side, &creds, "actpass");
    let bare = run
        .send(
            Req::new(Method::POST, url)
                .no_auth()
                .body(Some(SDP), &offer),
        )
        .await;
    let Ok(bare) = bare else { return };
    if bare.status == 201 {
        if let Ok(u) = url.join(&bare.header("location")) {
            run.delete(&u).await;
        }
        run.skipped(
            ep,
            "WHxP-AUTH",
            Level::Must,
            "W§4.7; E§4.9; RFC 6750 §3",
            "the endpoint takes a POST without credentials (auth not required)".into(),
        );
        return;
    }
    let mut bad = Vec::new();
    let mut seen = Vec::new();
    let challenge = |r: &Resp| r.header("www-authenticate").to_ascii_lowercase();
    seen.push(format!("no token → {}", bare.status));
    if bare.status != 401 || !challenge(&bare).starts_with("bearer") {
        bad.push(format!(
            "no token → {}, WWW-Authenticate {:?} (want 401 with a Bearer challenge)",
            bare.status,
            bare.header("www-authenticate")
        ));
    }
    let wrong = run
        .send(
            Req::new(Method::POST, url)
                .header("authorization", "Bearer not.a.valid-token")
                .body(Some(SDP), &offer),
        )
        .await;
    if let Ok(r) = wrong {
        seen.push(format!("bad token → {}", r.status));
        if r.status != 401 || !challenge(&r).contains("invalid_token") {
            bad.push(format!(
                "bad token → {}, WWW-Authenticate {:?} (want 401 error=\"invalid_token\")",
                r.status,
                r.header("www-authenticate")
            ));
        }
    }
    let basic = run
        .send(
            Req::new(Method::POST, url)
                .header("authorization", "Basic dXNlcjpwYXNz")
                .body(Some(SDP), &offer),
        )
        .await;
    if let Ok(r) = basic {
        seen.push(format!("Basic → {}", r.status));
        if r.status != 401 && r.status != 201 {
            bad.push(format!("Basic credentials → {} (want 401)", r.status));
        }
        if r.status == 201
            && let Ok(u) = url.join(&r.header("location"))
        {
            run.delete(&u).await;
        }
    }
    if let Some(c) = main {
        let p = run
            .send(
                Req::new(Method::PATCH, &c.url)
                    .no_auth()
                    .header("if-match", "*")
                    .body(Some(TRICKLE), &trickle_fragment(&c.creds, &[])),
            )
            .await;
        let d = run.send(Req::new(Method::DELETE, &c.url).no_auth()).await;
        for (what, r) in [("PATCH", p), ("DELETE", d)] {
            if let Ok(r) = r {
                seen.push(format!("session {what} without token → {}", r.status));
                if r.status != 401 {
                    bad.push(format!(
                        "session {what} without token → {} (want 401)",
                        r.status
                    ));
                }
            }
        }
    }
    run.record(
        ep,
        "WHxP-AUTH",
        Level::Must,
        "W§4.7; E§4.9; RFC 6750 §3",
        check(bad.is_empty(), seen.join(", "), bad.join("; ")),
    );
}

/// Items 24–35: PATCH for trickle and ICE restart, and the entity-tag rules.
async fn patch_cases(run: &mut Run, side: Side, ep: &'static str, c: &Created) {
    let p = side.name();
    let id = |rest: &str| format!("{p}-{rest}");
    let etag = c.resp.header("etag");
    let tag = (!etag.is_empty()).then_some(etag.as_str());
    let frag = trickle_fragment(&c.creds, &["1 1 udp 2122260223 192.0.2.1 61764 typ host"]);

    let r = run.patch(&c.url, SDP, tag, &frag).await;
    run.record(
        ep,
        &id("PATCH-CT"),
        Level::Must,
        "W§4.3.1",
        r.and_then(|r| {
            check(
                is_4xx(r.status),
                format!(
                    "PATCH with Content-Type application/sdp → {}{}",
                    r.status,
                    if r.has("accept-patch") {
                        format!(", Accept-Patch: {}", r.header("accept-patch"))
                    } else {
                        String::new()
                    }
                ),
                format!(
                    "PATCH with Content-Type application/sdp → {} (want 4xx)",
                    r.brief()
                ),
            )
        }),
    );
    let r = run.patch(&c.url, TRICKLE, tag, "garbage").await;
    run.record(
        ep,
        &id("PATCH-MALFORMED"),
        Level::Must,
        "W§4.3.1",
        r.and_then(|r| {
            check(
                is_4xx(r.status),
                format!("PATCH with body \"garbage\" → {}", r.status),
                format!("PATCH with body \"garbage\" → {} (want 4xx)", r.brief()),
            )
        }),
    );

    // Trickle.
    let no_tag = run.patch(&c.url, TRICKLE, None, &frag).await;
    let stale = run
        .patch(&c.url, TRICKLE, Some("\"not-current\""), &frag)
        .await;
    let trickle = run.patch(&c.url, TRICKLE, tag, &frag).await;
    let trickle_ok = trickle.as_ref().is_ok_and(|r| r.status == 204);
    let trickle_status = trickle.as_ref().map(|r| r.status).unwrap_or(0);
    let unsupported = |s: u16| s == 422 || s == 405 || s == 501;
    if unsupported(trickle_status) {
        for (rest, sec) in [
            ("TRICKLE-204", "W§4.3.2"),
            ("PATCH-428", "W§4.3.1"),
            ("PATCH-412", "W§4.3.1"),
            ("TRICKLE-DISCARD", "W§4.3.2"),
        ] {
            run.skipped(
                ep,
                &id(rest),
                Level::Must,
                sec,
                format!("trickle ICE is not supported (PATCH → {trickle_status})"),
            );
        }
    } else {
        run.record(
            ep,
            &id("TRICKLE-204"),
            Level::Must,
            "W§4.3.2",
            trickle.clone().and_then(|r| {
                check(
                    r.status == 204 && r.body.is_empty() && !r.has("etag"),
                    "trickle PATCH with the 201's ETag → 204, no body, no ETag".into(),
                    format!(
                        "trickle PATCH with the 201's ETag → {}, {} bytes{} (want 204, empty, \
                         no ETag)",
                        r.brief(),
                        r.body.len(),
                        if r.has("etag") { ", an ETag" } else { "" }
                    ),
                )
            }),
        );
        run.record(
            ep,
            &id("PATCH-428"),
            Level::Must,
            "W§4.3.1; W§4.3.2; RFC 6585 §3",
            no_tag.clone().and_then(|r| {
                check(
                    r.status == 428,
                    "trickle PATCH without If-Match → 428".into(),
                    format!(
                        "trickle PATCH without If-Match → {} (want 428 Precondition Required)",
                        r.brief()
                    ),
                )
            }),
        );
        run.record(
            ep,
            &id("PATCH-412"),
            Level::Must,
            "W§4.3.1",
            stale.clone().and_then(|r| {
                check(
                    r.status == 412,
                    "trickle PATCH with If-Match \"not-current\" → 412".into(),
                    format!(
                        "trickle PATCH with If-Match \"not-current\" → {} (want 412)",
                        r.brief()
                    ),
                )
            }),
        );
        let odd = trickle_fragment(
            &c.creds,
            &[
                "2 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active",
                "3 1 udp 2122260223 abcd.local 5000 typ host",
            ],
        );
        let r = run.patch(&c.url, TRICKLE, tag, &odd).await;
        run.record(
            ep,
            &id("TRICKLE-DISCARD"),
            Level::Must,
            "W§4.3.2",
            r.and_then(|r| {
                check(
                    r.status == 204,
                    "TCP and .local candidates → 204 (discarded silently)".into(),
                    format!("TCP and .local candidates → {} (want 204)", r.brief()),
                )
            }),
        );
        let wide = format!(
            "{frag}m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=ice-ufrag:{}\r\n\
             a=ice-pwd:{}\r\na=x-unknown:1\r\n",
            c.creds.ufrag, c.creds.pwd
        );
        let r = run.patch(&c.url, TRICKLE, tag, &wide).await;
        run.record(
            ep,
            &id("TRICKLE-FRAG-SCOPE"),
            Level::Info,
            "W§4.3.2",
            r.and_then(|r| {
                check(
                    r.status == 204,
                    "a fragment with a second m= block and an unknown attribute → 204".into(),
                    format!(
                        "a fragment with a second m= block and an unknown attribute → {}",
                        r.brief()
                    ),
                )
            }),
        );
    }

    // ICE restart.
    let new = Credentials::random();
    let restart = run
        .patch(&c.url, TRICKLE, Some("*"), &restart_fragment(&new))
        .await;
    let restart_status = restart.as_ref().map(|r| r.status).unwrap_or(0);
    let restart_ok = restart_status == 200;
    let mut new_tag = None;
    if unsupported(restart_status) {
        for rest in ["RESTART-200", "RESTART-ATTRS", "RESTART-OLD-ETAG"] {
            run.skipped(
                ep,
                &id(rest),
                Level::Must,
                "W§4.3.3",
                format!("ICE restart is not supported (PATCH → {restart_status})"),
            );
        }
    } else {
        match &restart {
            Ok(r) => {
                let frag = Parsed::new(&r.body);
                let ufrag = frag.count("ice-ufrag") > 0;
                let (old_u, old_p) = c
                    .answer
                    .media
                    .first()
                    .map(|m| (c.answer.attr(m, "ice-ufrag"), c.answer.attr(m, "ice-pwd")))
                    .unwrap_or((None, None));
                let all: Vec<String> = frag
                    .session
                    .iter()
                    .chain(frag.media.iter().flatten())
                    .cloned()
                    .collect();
                let new_u = find_attr(&all, "ice-ufrag");
                let new_p = find_attr(&all, "ice-pwd");
                let tag2 = r.header("etag");
                new_tag = (!tag2.is_empty()).then(|| tag2.clone());
                run.record(
                    ep,
                    &id("RESTART-200"),
                    Level::Must,
                    "W§4.3.3",
                    check(
                        r.status == 200
                            && r.media_type() == TRICKLE
                            && ufrag
                            && new_u != old_u
                            && new_p != old_p
                            && !tag2.is_empty()
                            && tag2 != etag,
                        format!(
                            "restart PATCH (If-Match: *) → 200 {TRICKLE}, new ufrag {}, new \
                             ETag {tag2}",
                            new_u.unwrap_or("")
                        ),
                        format!(
                            "restart PATCH → {}, Content-Type {:?}, ufrag {:?} (was {:?}), ETag \
                             {tag2:?} (was {etag:?})",
                            r.status,
                            r.header("content-type"),
                            new_u,
                            old_u
                        ),
                    ),
                );
                let mut bad = Vec::new();
                for attr in ["ice-lite", "ice-options"] {
                    let before = c.answer.count(attr) > 0;
                    let after = all
                        .iter()
                        .any(|l| find_attr(std::slice::from_ref(l), attr).is_some());
                    if before != after {
                        bad.push(format!(
                            "a={attr} {} the answer but {} the restart's",
                            if before { "in" } else { "not in" },
                            if after { "in" } else { "not in" }
                        ));
                    }
                }
                run.record(
                    ep,
                    &id("RESTART-ATTRS"),
                    Level::Must,
                    "W§4.3.3",
                    check(
                        bad.is_empty(),
                        "ice-lite / ice-options as in the answer".into(),
                        bad.join("; "),
                    ),
                );
            }
            Err(e) => {
                let e = e.clone();
                run.record(ep, &id("RESTART-200"), Level::Must, "W§4.3.3", Err(e));
            }
        }
        if let Some(t2) = &new_tag {
            let frag2 = trickle_fragment(&new, &["1 1 udp 2122260223 192.0.2.1 61765 typ host"]);
            let old = run.patch(&c.url, TRICKLE, tag, &frag2).await;
            let cur = run.patch(&c.url, TRICKLE, Some(t2), &frag2).await;
            let (o, n) = (
                old.map(|r| r.status).unwrap_or(0),
                cur.map(|r| r.status).unwrap_or(0),
            );
            let trickle_expected = if trickle_ok { 204 } else { n };
            run.record(
                ep,
                &id("RESTART-OLD-ETAG"),
                Level::Must,
                "W§4.3.1; W§4.3.3",
                check(
                    o == 412 && n == trickle_expected,
                    format!("after the restart: the old ETag → 412, the new one → {n}"),
                    format!("after the restart: the old ETag → {o} (want 412), the new one → {n}"),
                ),
            );
        }
    }
    // One kind without the other: 422 for the missing one.
    let result = match (trickle_ok, restart_ok) {
        (true, false) => check(
            restart_status == 422,
            "trickle supported, restart → 422".into(),
            format!("trickle supported, restart → {restart_status} (want 422)"),
        ),
        (false, true) => check(
            trickle_status == 422,
            "restart supported, trickle → 422".into(),
            format!("restart supported, trickle → {trickle_status} (want 422)"),
        ),
        (t, r) => Ok(format!("trickle {t}, restart {r}: not applicable")),
    };
    run.record(ep, &id("PATCH-422"), Level::Must, "W§4.3.1", result);
    run.record(
        ep,
        &id("ICE-SUPPORT"),
        Level::Info,
        "W§4.3; W§4.4.5",
        Ok(format!(
            "trickle ICE: {} (PATCH → {trickle_status}); ICE restart: {} (PATCH → {restart_status})",
            if trickle_ok { "yes" } else { "no" },
            if restart_ok { "yes" } else { "no" }
        )),
    );
    let strong = etag.starts_with('"') && etag.ends_with('"') && etag.len() >= 2;
    run.record(
        ep,
        &id("ETAG-201"),
        if restart_ok { Level::Must } else { Level::May },
        "W§4.3.1",
        check(
            strong || (!restart_ok && etag.is_empty()),
            format!("ETag {etag} on the 201 (strong)"),
            format!("ETag {etag:?} on the 201 (want a strong entity-tag, \"...\")"),
        ),
    );

    // A restart that cannot be satisfied leaves the session as it was.
    let bad_pwd = Credentials {
        ufrag: random_token(8),
        pwd: "abc".into(),
    };
    let r = run
        .patch(&c.url, TRICKLE, Some("*"), &restart_fragment(&bad_pwd))
        .await;
    let status = r.map(|r| r.status).unwrap_or(0);
    let alive = run
        .send(Req::new(Method::GET, &c.url))
        .await
        .map(|r| r.status)
        .unwrap_or(0);
    run.record(
        ep,
        &id("RESTART-FAIL"),
        Level::Must,
        "W§4.3.3",
        check(
            is_4xx(status) && (200..300).contains(&alive),
            format!("restart with a 3-character ice-pwd → {status}; the session still answers GET {alive}"),
            format!(
                "restart with a 3-character ice-pwd → {status} (want 4xx), then GET of the \
                 session → {alive} (want 2xx: the session must stay)"
            ),
        ),
    );
}

/// POSTs of other offers: content types, malformed bodies, directions, shapes (items 6–8,
/// 10, 12–14, 19, 54, 56).
async fn post_variants(
    run: &mut Run,
    side: Side,
    ep: &'static str,
    url: &Url,
    locations: &mut Vec<Url>,
) {
    let p = side.name();
    let id = |rest: &str| format!("{p}-{rest}");
    let creds = Credentials::random();
    let good = browser_offer(side, &creds, "actpass");

    // Content type.
    let mut bad = Vec::new();
    let mut seen = Vec::new();
    for ct in [Some("text/plain"), None] {
        if let Ok(r) = run.post_offer(side, url, ct, &good, &[]).await {
            seen.push(format!(
                "{} → {}",
                ct.unwrap_or("no Content-Type"),
                r.status
            ));
            if !is_4xx(r.status) {
                bad.push(format!(
                    "{} → {} (want 4xx)",
                    ct.unwrap_or("no Content-Type"),
                    r.status
                ));
            }
            cleanup(run, url, &r).await;
        }
    }
    run.record(
        ep,
        &id("POST-CT"),
        Level::Must,
        match side {
            Side::Whip => "W§4.2",
            Side::Whep => "E§4.3.4",
        },
        check(bad.is_empty(), seen.join(", "), bad.join("; ")),
    );
    // Malformed.
    let mut bad = Vec::new();
    let mut seen = Vec::new();
    for body in ["hello", ""] {
        if let Ok(r) = run.post_offer(side, url, Some(SDP), body, &[]).await {
            seen.push(format!("{body:?} → {}", r.status));
            if !is_4xx(r.status) {
                bad.push(format!("body {body:?} → {} (want 4xx)", r.status));
            }
            cleanup(run, url, &r).await;
        }
    }
    run.record(
        ep,
        &id("POST-MALFORMED"),
        Level::Must,
        match side {
            Side::Whip => "W§4.2",
            Side::Whep => "E§4.3.4",
        },
        check(bad.is_empty(), seen.join(", "), bad.join("; ")),
    );
    if side == Side::Whip {
        let mut bad = Vec::new();
        let mut seen = Vec::new();
        for ct in ["application/sdp; charset=utf-8", "Application/SDP"] {
            if let Ok(r) = run.post_offer(side, url, Some(ct), &good, &[]).await {
                seen.push(format!("{ct} → {}", r.status));
                if r.status != 201 {
                    bad.push(format!("{ct} → {}", r.brief()));
                }
                cleanup(run, url, &r).await;
            }
        }
        run.record(
            ep,
            "WHIP-POST-CT-PARAM",
            Level::Info,
            "RFC 9110 §8.3.1",
            check(bad.is_empty(), seen.join(", "), bad.join("; ")),
        );
    }

    // sendrecv offers are allowed.
    let sendrecv = good.replace(&format!("a={}", side.offer_direction()), "a=sendrecv");
    if let Ok(r) = run.post_offer(side, url, Some(SDP), &sendrecv, &[]).await {
        let dirs: Vec<String> = Parsed::new(&r.body)
            .accepted()
            .map(|m| direction(m).unwrap_or("none").to_string())
            .collect();
        let result = check(
            r.status == 201 && dirs.iter().all(|d| d == side.answer_direction()),
            format!("a sendrecv offer → 201, answer {dirs:?}"),
            format!(
                "a sendrecv offer → {}, answer directions {dirs:?} (want 201, {})",
                r.brief(),
                side.answer_direction()
            ),
        );
        match side {
            Side::Whip => run.record(ep, "WHIP-DIR-OFFER", Level::Should, "W§4.2", result),
            Side::Whep => run.record(ep, "WHEP-DIR", Level::Must, "E§4.3.5", result),
        }
        if r.status == 201 {
            locations.extend(url.join(&r.header("location")).ok());
        }
        cleanup(run, url, &r).await;
    }

    if side == Side::Whip {
        // Two audio tracks: 422/400, or 201 if the server really takes them.
        let two_audio = good.replacen(
            "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103",
            1,
        );
        let two_audio = two_audio.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 2 1");
        let two_audio = two_audio.replacen(
            "a=rtpmap:111 opus/48000/2\r\nm=video",
            &format!(
                "c=IN IP4 0.0.0.0\r\na=mid:2\r\na=sendonly\r\na=msid:conformance-stream a2\r\n\
                 a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=fingerprint:sha-256 \
                 5C:3B:2E:8A:91:0F:44:7D:C2:19:E6:58:AB:03:7F:D1:6E:90:42:B8:15:CA:7E:33:D9:01:6B:F4:28:A5:8C:E7\r\n\
                 a=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\nm=video",
                creds.ufrag, creds.pwd
            ),
            1,
        );
        if let Ok(r) = run.post_offer(side, url, Some(SDP), &two_audio, &[]).await {
            let result = check(
                matches!(r.status, 400 | 422 | 201),
                format!("an offer with two audio tracks → {}", r.brief()),
                format!(
                    "an offer with two audio tracks → {} (want 422 or 400)",
                    r.brief()
                ),
            );
            run.record(ep, "WHIP-MSID", Level::Must, "W§4.4.2", result);
            cleanup(run, url, &r).await;
        }
        // Only an unknown video codec: the whole POST is refused.
        let unknown_codec = good
            .replace(
                "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103",
                "m=video 9 UDP/TLS/RTP/SAVPF 96",
            )
            .replace("a=rtpmap:96 VP8/90000", "a=rtpmap:96 FOO/90000");
        let unknown_codec: String = unknown_codec
            .lines()
            .filter(|l| {
                !(l.starts_with("a=rtpmap:97")
                    || l.starts_with("a=fmtp:97")
                    || l.contains(":102")
                    || l.contains(":103"))
            })
            .map(|l| format!("{l}\r\n"))
            .collect();
        if let Ok(r) = run
            .post_offer(side, url, Some(SDP), &unknown_codec, &[])
            .await
        {
            let result = check(
                r.status == 422 || r.status == 400,
                format!("video offering only FOO/90000 → {}", r.brief()),
                format!(
                    "video offering only FOO/90000 → {} (SHOULD refuse the whole offer, 422/400)",
                    r.brief()
                ),
            );
            run.record(ep, "WHIP-NO-PARTIAL", Level::Should, "W§4.4.3", result);
            cleanup(run, url, &r).await;
        }
        // DTLS roles.
        let mut bad = Vec::new();
        let mut seen = Vec::new();
        for (offered, want) in [("active", "passive"), ("passive", "active")] {
            let o = browser_offer(side, &Credentials::random(), offered);
            if let Ok(r) = run.post_offer(side, url, Some(SDP), &o, &[]).await {
                let got = Parsed::new(&r.body);
                let setup = got
                    .media
                    .first()
                    .and_then(|m| got.attr(m, "setup"))
                    .unwrap_or("")
                    .to_string();
                seen.push(format!("setup:{offered} → {} setup:{setup}", r.status));
                if !(r.status == 422 || r.status == 400 || (r.status == 201 && setup == want)) {
                    bad.push(format!(
                        "setup:{offered} → {} with setup:{setup} (want 201 with {want}, or 422/400)",
                        r.status
                    ));
                }
                cleanup(run, url, &r).await;
            }
        }
        run.record(
            ep,
            "WHIP-SETUP-ACTIVE",
            Level::Should,
            "W§4.4.4; J§5.3.1",
            check(bad.is_empty(), seen.join(", "), bad.join("; ")),
        );
        // Simulcast.
        let sim = good.replacen(
            "a=mid:1\r\n",
            "a=mid:1\r\na=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
             a=rid:h send\r\na=rid:l send\r\na=simulcast:send h;l\r\n",
            1,
        );
        if let Ok(r) = run.post_offer(side, url, Some(SDP), &sim, &[]).await {
            let body = &r.body;
            let declined = !body.contains("a=simulcast");
            let answered = body.contains("a=simulcast:recv h;l")
                && body.contains("a=rid:h recv")
                && body.contains("a=rid:l recv");
            let result = if r.status != 201 {
                Err(format!("a simulcast offer → {}", r.brief()))
            } else {
                check(
                    declined || answered,
                    if declined {
                        "simulcast declined (no a=simulcast in the answer)".into()
                    } else {
                        "a=simulcast:recv h;l with a=rid:h recv, a=rid:l recv".into()
                    },
                    "a=simulcast in the answer without the RFC 8853 recv form".into(),
                )
            };
            run.record(
                ep,
                "WHIP-SIMULCAST",
                Level::Must,
                "W§4.8; RFC 8853 §5.3.2",
                result,
            );
            cleanup(run, url, &r).await;
        }
    }
}

/// DELETEs what a POST created, if it did.
async fn cleanup(run: &mut Run, endpoint: &Url, r: &Resp) {
    if r.status == 201
        && let Ok(u) = endpoint.join(&r.header("location"))
    {
        run.delete(&u).await;
    }
}

/// Item 51: session URLs carry ≥ 122 bits of apparent randomness and no counter.
fn entropy_case(run: &mut Run, ep: &'static str, locations: &[Url]) {
    if locations.len() < 2 {
        run.skipped(
            ep,
            "WHxP-URL-ENTROPY",
            Level::Should,
            "W§5; RFC 4086",
            "fewer than two sessions were created".into(),
        );
        return;
    }
    let mut bits = f64::INFINITY;
    let mut worst = String::new();
    let prefix = shared_prefix(locations);
    for u in locations {
        let unique = u.path().get(prefix..).unwrap_or("").trim_end_matches('/');
        let alphabet = if unique.chars().all(|c| c.is_ascii_digit()) {
            10.0
        } else if unique.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            16.0
        } else {
            64.0
        };
        let hexish = unique.chars().filter(|c| *c != '-').count() as f64;
        let b = hexish * f64::log2(alphabet);
        if b < bits {
            bits = b;
            worst = u.to_string();
        }
    }
    let distinct = {
        let mut v: Vec<&str> = locations.iter().map(|u| u.path()).collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    run.record(
        ep,
        "WHxP-URL-ENTROPY",
        Level::Should,
        "W§5; RFC 4086",
        check(
            bits >= 122.0 && distinct == locations.len(),
            format!(
                "{} session URLs, all distinct; at least {bits:.0} bits of apparent randomness each",
                locations.len()
            ),
            format!("{worst}: about {bits:.0} bits of apparent randomness (want ≥ 122)"),
        ),
    );
}

/// How many leading bytes every resource path shares: whole path segments, and within the
/// first differing segment a fixed prefix only up to its last separator (`sess-` of
/// `sess-1f3a…`). Random ids may share a few leading characters by chance; those count as
/// randomness, not as prefix.
fn shared_prefix(locations: &[Url]) -> usize {
    let paths: Vec<&str> = locations.iter().map(|u| u.path()).collect();
    let Some(first) = paths.first() else {
        return 0;
    };
    let common = paths.iter().skip(1).fold(first.len(), |n, p| {
        first
            .bytes()
            .zip(p.bytes())
            .take(n)
            .take_while(|(a, b)| a == b)
            .count()
    });
    // Back to just after the last separator inside the shared part.
    first[..common]
        .rfind(|c: char| !c.is_ascii_alphanumeric())
        .map_or(0, |i| i + 1)
}

/// Item 50: a burst of POSTs from one client meets some 429/503 (informational).
async fn rate_case(run: &mut Run, side: Side, ep: &'static str, url: &Url) {
    let n = run.settings.burst;
    if n == 0 {
        run.skipped(
            ep,
            "WHxP-RATE",
            Level::Should,
            "W§5; E§5",
            "not run (it creates sessions on the server): give --burst N".into(),
        );
        return;
    }
    let mut statuses = std::collections::BTreeMap::new();
    let started = Instant::now();
    for _ in 0..n {
        let o = browser_offer(side, &Credentials::random(), "actpass");
        if let Ok(r) = run.post_offer(side, url, Some(SDP), &o, &[]).await {
            *statuses.entry(r.status).or_insert(0) += 1;
            cleanup(run, url, &r).await;
        }
    }
    let limited =
        statuses.get(&429).copied().unwrap_or(0) + statuses.get(&503).copied().unwrap_or(0);
    run.record(
        ep,
        "WHxP-RATE",
        Level::Should,
        "W§5; E§5",
        check(
            limited > 0,
            format!(
                "{n} POSTs in {:.1} s: statuses {statuses:?}",
                started.elapsed().as_secs_f64()
            ),
            format!(
                "{n} POSTs in {:.1} s, none limited: statuses {statuses:?}",
                started.elapsed().as_secs_f64()
            ),
        ),
    );
}

/// WHEP-only items: 406 counter-offers (55), 409 without publisher (57), and the media-level
/// case (a real peer: ICE, DTLS, media, DELETE).
async fn whep_only(run: &mut Run, ep: &'static str, url: &Url, main: Option<&Created>) {
    match main {
        Some(_) => run.skipped(
            ep,
            "WHEP-406-COUNTER",
            Level::May,
            "E§4.3.2",
            "the server answered the offer with 201 (no counter-offer to test)".into(),
        ),
        None => run.skipped(
            ep,
            "WHEP-406-COUNTER",
            Level::May,
            "E§4.3.2",
            "no POST succeeded".into(),
        ),
    }
    match run.settings.whep_no_publisher.clone() {
        Some(idle) => {
            let o = browser_offer(Side::Whep, &Credentials::random(), "actpass");
            let result = match run.post_offer(Side::Whep, &idle, Some(SDP), &o, &[]).await {
                Ok(r) => {
                    let ra = r.header("retry-after");
                    let result = check(
                        r.status == 201 || (r.status == 409 && ra.parse::<u64>().is_ok()),
                        format!("POST to {idle} → {} Retry-After {ra:?}", r.status),
                        format!(
                            "POST to {idle} → {}, Retry-After {ra:?} (want 409 with \
                             delay-seconds, or 201)",
                            r.brief()
                        ),
                    );
                    cleanup(run, &idle, &r).await;
                    result
                }
                Err(e) => Err(e),
            };
            run.record(ep, "WHEP-409-NO-PUBLISHER", Level::Must, "E§4.3.8", result);
        }
        None => run.skipped(
            ep,
            "WHEP-409-NO-PUBLISHER",
            Level::Must,
            "E§4.3.8",
            "give --whep-no-publisher URL (a stream without publisher) to run it".into(),
        ),
    }
    media_cases(run, ep, url).await;
}

/// What a DELETE did to the connection, in words, and whether consent was revoked at once
/// (RFC 7675 §5.2): the server closed the connection or stopped answering consent checks,
/// and sent no more media.
fn consent_verdict(
    delete_status: Option<u16>,
    closed_ms: Option<u64>,
    unanswered_ms: Option<u64>,
    late: u64,
    linger: Duration,
) -> Result<String, String> {
    let how = match (closed_ms, unanswered_ms) {
        (Some(ms), _) => {
            format!("the server closed the connection (DTLS close_notify) {ms} ms after the DELETE")
        }
        (None, Some(ms)) => format!(
            "the server sent no close_notify but stopped answering consent checks (ICE \
             failed {ms} ms after the DELETE)"
        ),
        (None, None) => format!(
            "the server neither closed the connection nor stopped answering consent checks \
             within {} s of the DELETE",
            linger.as_secs()
        ),
    };
    let detail = format!(
        "DELETE answered {}; {how}; {late} SRTP/SRTCP packets came from 250 ms after it",
        delete_status.map_or("nothing".into(), |c| c.to_string())
    );
    check(
        delete_status == Some(200) && late == 0 && (closed_ms.is_some() || unanswered_ms.is_some()),
        detail.clone(),
        detail,
    )
}

/// How long a peer watches its connection after its DELETE: long enough for ~6 unanswered
/// consent checks (whep-client checks every 500 ms after a DELETE).
const CONSENT_LINGER: Duration = Duration::from_secs(5);

/// The WHIP media-level cases [MEDIA]: a publisher peer (whep-client's probe: ICE and DTLS,
/// no media sent) that touches no extension URL, then DELETEs.
async fn whip_media_cases(run: &mut Run, ep: &'static str, url: &Url) {
    let cases = [
        ("WHIP-EXT-OPTIONAL", Level::Must, "W§4.9"),
        ("WHIP-CONSENT", Level::Must, "W§4.2; RFC 7675 §5.2"),
    ];
    if run.settings.no_media {
        for (id, level, section) in cases {
            run.skipped(ep, id, level, section, "--no-media".into());
        }
        return;
    }
    if !cases.iter().any(|(id, _, _)| run.wanted(id)) {
        return;
    }
    let token = run.http.token().map(str::to_string);
    let probe = whep_client::publish_probe(
        &whep_client::http_client(),
        url.as_str(),
        token.as_deref(),
        Duration::from_secs(1),
        CONSENT_LINGER,
        Duration::from_secs(20),
    )
    .await;
    let [
        (ext, ext_level, ext_section),
        (consent, consent_level, consent_section),
    ] = cases;
    match probe {
        Ok(p) => {
            run.record(
                ep,
                ext,
                ext_level,
                ext_section,
                check(
                    p.delete_status == Some(200),
                    format!(
                        "a publisher peer (sendonly audio+video, no extension URL touched) \
                         reached DTLS connected in {} ms; DELETE → 200",
                        p.connected_ms.unwrap_or(0)
                    ),
                    format!(
                        "the publisher connected, but its DELETE got {:?}",
                        p.delete_status
                    ),
                ),
            );
            let verdict = consent_verdict(
                p.delete_status,
                p.closed_after_delete_ms,
                p.unanswered_after_delete_ms,
                p.packets_after_delete,
                CONSENT_LINGER,
            );
            run.record(ep, consent, consent_level, consent_section, verdict);
        }
        Err(e) => {
            let why = format!("a publisher peer (whep-client's probe): {e}");
            run.record(ep, ext, ext_level, ext_section, Err(why.clone()));
            run.skipped(
                ep,
                consent,
                consent_level,
                consent_section,
                format!("no connection to revoke ({why})"),
            );
        }
    }
}

/// The media-level cases [MEDIA]: a real WebRTC peer (whep-client) against the endpoint.
const MEDIA_CASES: [(&str, Level, &str); 3] = [
    ("WHEP-EXT-OPTIONAL", Level::Must, "E§4.10; W§4.9"),
    ("WHEP-RESTART-MEDIA", Level::Must, "E§4.5.3"),
    ("WHEP-CONSENT", Level::Must, "E§4.4; RFC 7675 §5.2"),
];

async fn media_cases(run: &mut Run, ep: &'static str, url: &Url) {
    if run.settings.no_media {
        for (id, level, section) in MEDIA_CASES {
            run.skipped(ep, id, level, section, "--no-media".into());
        }
        return;
    }
    let token = run.http.token().map(str::to_string);
    let peer = |frames, restart_after, linger| whep_client::Options {
        url: url.to_string(),
        token: token.clone(),
        frames: Some(frames),
        timeout: Duration::from_secs(20),
        restart_after,
        linger,
        ..Default::default()
    };
    // whep-client's: it follows a 307 with the token (reqwest's own drops it on the way).
    let client = whep_client::http_client();
    let [
        (ext, ext_level, ext_section),
        (restart, restart_level, restart_section),
        (consent, consent_level, consent_section),
    ] = MEDIA_CASES;

    // A peer that touches no extension URL: ICE and DTLS complete, media arrives, DELETE.
    if run.wanted(ext) {
        let result = match whep_client::watch(&client, peer(30, None, None), |_| {}).await {
            Ok(s) => check(
                s.connected_ms.is_some() && s.video_frames >= 30,
                format!(
                    "a WebRTC peer (whep-client) connected in {} ms and decoded {} video frames \
                     ({}x{} {}), then DELETE",
                    s.connected_ms.unwrap_or(0),
                    s.video_frames,
                    s.width.unwrap_or(0),
                    s.height.unwrap_or(0),
                    s.codec.as_deref().unwrap_or("?")
                ),
                format!("connected {:?}, {} frames", s.connected_ms, s.video_frames),
            ),
            Err(e) => Err(format!("a WebRTC peer (whep-client): {e}")),
        };
        run.record(ep, ext, ext_level, ext_section, result);
    }

    // An ICE restart while media flows: the new credentials connect and frames keep coming.
    if run.wanted(restart) {
        let result = match whep_client::watch(&client, peer(90, Some(30), None), |_| {}).await {
            Ok(s) => check(
                s.restart_connected_ms.is_some() && s.frames_after_restart >= 30,
                format!(
                    "after 30 frames the peer restarted ICE (PATCH, If-Match: its ETag): 200 in \
                     {} ms, ICE connected on the new credentials after {} ms, then {} more \
                     frames",
                    s.restart_ms.unwrap_or(0),
                    s.restart_connected_ms.unwrap_or(0),
                    s.frames_after_restart
                ),
                format!(
                    "after the ICE restart (200 in {:?} ms): ICE connected again {:?}, {} frames \
                     followed",
                    s.restart_ms, s.restart_connected_ms, s.frames_after_restart
                ),
            ),
            Err(e) => Err(format!("a WebRTC peer (whep-client) restarting ICE: {e}")),
        };
        run.record(ep, restart, restart_level, restart_section, result);
    }

    // DELETE revokes consent at once (RFC 7675 §5.2).
    if run.wanted(consent) {
        let result =
            match whep_client::watch(&client, peer(30, None, Some(CONSENT_LINGER)), |_| {}).await {
                Ok(s) => consent_verdict(
                    s.delete_status,
                    s.closed_after_delete_ms,
                    s.unanswered_after_delete_ms,
                    s.packets_after_delete.unwrap_or(0),
                    CONSENT_LINGER,
                ),
                Err(e) => Err(format!("a WebRTC peer (whep-client): {e}")),
            };
        run.record(ep, consent, consent_level, consent_section, result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_share_leading_characters_by_chance_keep_their_full_length() {
        let urls = |ids: &[&str]| -> Vec<Url> {
            ids.iter()
                .map(|i| Url::parse(&format!("http://h.example/whip/x/{i}")).unwrap())
                .collect()
        };
        let a = "b871474151ce4b994018f463a5b878a8";
        let b = "b8a0c3f2e1d4b5a69788f9e0d1c2b3a4";
        let u = urls(&[a, b]);
        assert_eq!(&u[0].path()[shared_prefix(&u)..], a);
        let u = urls(&["sess-1f3a", "sess-9c0d", "sess-1e77"]);
        assert_eq!(&u[0].path()[shared_prefix(&u)..], "1f3a");
        let u = Vec::new();
        assert_eq!(shared_prefix(&u), 0);
    }

    #[test]
    fn link_values_split_on_commas_outside_brackets_and_quotes() {
        let v = "<turn:t.example:3478?transport=udp>; rel=\"ice-server\"; username=\"a,b\", \
                 <stun:s.example>; rel=\"ice-server\"";
        let l = split_links(v);
        assert_eq!(l.len(), 2, "{l:?}");
        assert!(l[0].contains("username=\"a,b\""));
        assert!(l[1].starts_with("<stun:"));
    }
}
