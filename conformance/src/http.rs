//! The suite's HTTP: one request at a time, and every error response remembered for the
//! problem-details case. A 307 or 308 (a load balancer's, W§4.5) is followed with the same
//! request, token included, as a client must; any other 3xx is a result. Every redirect is
//! remembered for WHxP-REDIRECT.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Client, Method, Url};

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    /// Where it was answered (the request's URL, or the last redirect's `Location`).
    pub at: Url,
}

impl Resp {
    /// The first value of header `name`, or "".
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    pub fn has(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }

    /// Every value of header `name` (each field line).
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    }

    /// The media type of `Content-Type`, lower-cased, without parameters.
    pub fn media_type(&self) -> String {
        self.header("content-type")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }

    /// "201 (application/sdp, 812 bytes)" or "400: <problem detail>".
    pub fn brief(&self) -> String {
        if self.status >= 400 {
            let detail = whep_client::problem_detail(&self.body);
            if detail.is_empty() {
                format!("{}", self.status)
            } else {
                format!("{} \"{}\"", self.status, cut(&detail, 160))
            }
        } else {
            format!(
                "{} ({}, {} bytes)",
                self.status,
                if self.media_type().is_empty() {
                    "no Content-Type".to_string()
                } else {
                    self.media_type()
                },
                self.body.len()
            )
        }
    }
}

pub fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// A request to make.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    /// Send the suite's token (if it has one).
    pub auth: bool,
}

impl Req {
    pub fn new(method: Method, url: &Url) -> Self {
        Self {
            method,
            url: url.clone(),
            headers: Vec::new(),
            body: None,
            auth: true,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, content_type: Option<&str>, body: &str) -> Self {
        if let Some(ct) = content_type {
            self = self.header("content-type", ct);
        }
        self.body = Some(body.to_string());
        self
    }

    pub fn no_auth(mut self) -> Self {
        self.auth = false;
        self
    }
}

/// The suite's HTTP client.
#[derive(Debug)]
pub struct Http {
    client: Client,
    token: Option<String>,
    /// Every 4xx/5xx response seen: (what was asked, the response).
    pub errors: Vec<(String, Resp)>,
    /// Every 3xx seen: (status, the URL asked, its `Location`).
    pub redirects: Vec<(u16, String, String)>,
}

/// Redirects followed for one request, at most.
const MAX_REDIRECTS: usize = 5;

impl Http {
    pub fn new(token: Option<String>) -> Self {
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .expect("a client without TLS builds");
        Self {
            client,
            token,
            errors: Vec::new(),
            redirects: Vec::new(),
        }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub async fn send(&mut self, req: Req) -> Result<Resp, String> {
        let mut url = req.url.clone();
        let mut hops = 0;
        loop {
            let resp = self.send_once(&req, &url).await?;
            if (300..400).contains(&resp.status) {
                let location = resp.header("location");
                self.redirects
                    .push((resp.status, url.to_string(), location.clone()));
                if matches!(resp.status, 307 | 308)
                    && hops < MAX_REDIRECTS
                    && let Ok(next) = url.join(&location)
                {
                    hops += 1;
                    url = next;
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    /// A long pull (a server-sent event stream): what arrives within `time`, then the
    /// connection is dropped. The body is the text read by then.
    pub async fn pull(&mut self, url: &Url, time: Duration) -> Result<Resp, String> {
        let what = format!("GET {url} (a long pull)");
        // The suite's token goes too: a server whose stream URL is a capability ignores it,
        // one that checks tokens wants it.
        let mut b = self
            .client
            .get(url.clone())
            .header("accept", "text/event-stream")
            .timeout(time + Duration::from_secs(5));
        if let Some(t) = &self.token {
            b = b.bearer_auth(t);
        }
        let mut r = b.send().await.map_err(|e| format!("{what}: {e}"))?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let mut body = Vec::new();
        let end = tokio::time::Instant::now() + time;
        loop {
            match tokio::time::timeout_at(end, r.chunk()).await {
                Ok(Ok(Some(c))) => body.extend_from_slice(&c),
                Ok(Ok(None)) | Err(_) => break,
                Ok(Err(e)) => return Err(format!("{what}: body: {e}")),
            }
        }
        let resp = Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            at: url.clone(),
        };
        if status >= 400 {
            self.errors.push((what, resp.clone()));
        }
        Ok(resp)
    }

    async fn send_once(&mut self, req: &Req, url: &Url) -> Result<Resp, String> {
        let what = format!("{} {}", req.method, url);
        let mut b = self.client.request(req.method.clone(), url.clone());
        if req.auth
            && let Some(t) = &self.token
            && !req
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        {
            b = b.bearer_auth(t);
        }
        for (n, v) in &req.headers {
            b = b.header(n.as_str(), v.as_str());
        }
        if let Some(body) = &req.body {
            b = b.body(body.clone());
        }
        let r = b.send().await.map_err(|e| format!("{what}: {e}"))?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.map_err(|e| format!("{what}: body: {e}"))?;
        let resp = Resp {
            status,
            headers,
            body,
            at: url.clone(),
        };
        if status >= 400 {
            self.errors.push((what, resp.clone()));
        }
        Ok(resp)
    }
}
