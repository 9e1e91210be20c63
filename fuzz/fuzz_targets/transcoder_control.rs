//! The JSON lines between the gateway and a transcoder: a command line as the transcoder reads
//! it (`wisp_control::parse_request`), and an event line as the gateway reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wisp_control::{Event, parse_request, request_line};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((id, command)) = parse_request(line) {
        // What parses must write back as a line that parses to the same.
        let again = parse_request(&request_line(id, &command)).expect("a written line parses");
        assert_eq!(again, (id, command));
    }
    let _ = serde_json::from_str::<Event>(line);
});
