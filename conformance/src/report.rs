//! Case results and the three report formats (text, JSON, JUnit XML).

use serde::Serialize;

/// How strongly the spec asks for what a case checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Level {
    #[serde(rename = "MUST")]
    Must,
    #[serde(rename = "SHOULD")]
    Should,
    #[serde(rename = "MAY")]
    May,
    /// Recorded for the reader; the spec asks nothing testable (or is ambiguous).
    #[serde(rename = "INFO")]
    Info,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
            Level::May => "MAY",
            Level::Info => "INFO",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

/// One case's result.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub id: String,
    /// `whip` or `whep`: which endpoint the case ran against.
    pub endpoint: &'static str,
    pub level: Level,
    pub section: &'static str,
    pub result: Verdict,
    /// What was sent and what came back.
    pub detail: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub cases: usize,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub must_failed: usize,
    pub should_failed: usize,
}

impl Summary {
    pub fn of(cases: &[Case]) -> Self {
        let mut s = Summary {
            cases: cases.len(),
            ..Summary::default()
        };
        for c in cases {
            match c.result {
                Verdict::Pass => s.passed += 1,
                Verdict::Skip => s.skipped += 1,
                Verdict::Fail => {
                    s.failed += 1;
                    match c.level {
                        Level::Must => s.must_failed += 1,
                        Level::Should => s.should_failed += 1,
                        _ => {}
                    }
                }
            }
        }
        s
    }
}

#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub server: serde_json::Value,
    pub cases: &'a [Case],
    pub summary: Summary,
}

pub fn text(report: &Report) -> String {
    let mut out = String::new();
    for c in report.cases {
        let mark = match c.result {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        };
        out.push_str(&format!(
            "{mark:4}  {:6} [{}] {:28} {}\n      {}\n",
            c.level.name(),
            c.endpoint,
            c.id,
            c.section,
            c.detail
        ));
    }
    let s = &report.summary;
    out.push_str(&format!(
        "\n{} cases: {} passed, {} failed ({} MUST, {} SHOULD), {} skipped\n",
        s.cases, s.passed, s.failed, s.must_failed, s.should_failed, s.skipped
    ));
    out
}

pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("plain data serializes")
}

/// JUnit XML: one testcase per case; MUST and SHOULD failures are failures, skips and INFO
/// results are marked skipped or pass.
pub fn junit(report: &Report) -> String {
    let s = &report.summary;
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"wisp-conformance\" \
         tests=\"{}\" failures=\"{}\" skipped=\"{}\">\n",
        s.cases, s.failed, s.skipped
    );
    for c in report.cases {
        out.push_str(&format!(
            "  <testcase classname=\"{}.{}\" name=\"{} {}\">",
            c.endpoint,
            c.level.name(),
            xml(&c.id),
            xml(c.section)
        ));
        match c.result {
            Verdict::Pass => out.push_str(&format!("<system-out>{}</system-out>", xml(&c.detail))),
            Verdict::Skip => out.push_str(&format!("<skipped message=\"{}\"/>", xml(&c.detail))),
            Verdict::Fail => out.push_str(&format!(
                "<failure message=\"{} {}\">{}</failure>",
                c.level.name(),
                xml(&c.id),
                xml(&c.detail)
            )),
        }
        out.push_str("</testcase>\n");
    }
    out.push_str("</testsuite>\n");
    out
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(id: &str, level: Level, result: Verdict) -> Case {
        Case {
            id: id.into(),
            endpoint: "whep",
            level,
            section: "E§4.3",
            result,
            detail: "sent <x> & got \"y\"".into(),
        }
    }

    #[test]
    fn the_summary_counts_must_failures_apart_and_junit_escapes() {
        let cases = [
            case("A", Level::Must, Verdict::Fail),
            case("B", Level::Should, Verdict::Fail),
            case("C", Level::Info, Verdict::Fail),
            case("D", Level::Must, Verdict::Pass),
            case("E", Level::May, Verdict::Skip),
        ];
        let r = Report {
            server: serde_json::json!({}),
            summary: Summary::of(&cases),
            cases: &cases,
        };
        assert_eq!(
            (
                r.summary.failed,
                r.summary.must_failed,
                r.summary.should_failed
            ),
            (3, 1, 1)
        );
        let x = junit(&r);
        assert!(x.contains("sent &lt;x&gt; &amp; got &quot;y&quot;"), "{x}");
        assert!(
            x.contains("tests=\"5\" failures=\"3\" skipped=\"1\""),
            "{x}"
        );
        let j: serde_json::Value = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(j["cases"][0]["level"], "MUST");
        assert_eq!(j["cases"][0]["result"], "fail");
        assert_eq!(j["summary"]["must_failed"], 1);
    }
}
