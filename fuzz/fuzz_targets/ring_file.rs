//! A ring file as `ring-dump` reads it: any bytes, including a header that lies about the
//! ring's geometry, opened and read from the oldest record to the newest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtp_ring::{Ring, RtpHeaderView};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("wisp-fuzz-ring-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(ring) = Ring::open(&path) {
        let _ = ring.geometry();
        let _ = ring.write_index();
        let _ = ring.writer_pid();
        let mut reader = ring.reader_from_oldest();
        let mut packet = Vec::new();
        // A ring holds at most its slot count; a reader must end (or skip) well within that.
        let bound = ring.geometry().slot_count * 2 + 16;
        for _ in 0..bound {
            match reader.try_next_into(&mut packet) {
                Ok(Some(_)) => {
                    let _ = RtpHeaderView::parse(&packet);
                }
                Ok(None) => break,
                Err(_) => continue,
            }
        }
    }
    let _ = std::fs::remove_file(&path);
});
