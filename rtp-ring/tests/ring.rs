//! Behaviour of one ring inside one process: order, limits, overrun, keyframe resync, wakeups,
//! and threads hammering it at once.

mod common;

use std::time::{Duration, Instant};

use common::{check_packet, packet_for, record_for, write_n};
use rtp_ring::{Flags, MAX_PAYLOAD, Overrun, RecordRef, Ring, WriteError};

const SMALL: u64 = 256 + 64 * 1536; // 64 slots

#[test]
fn records_come_back_in_order_with_their_metadata() {
    let ring = Ring::create_memfd("t", SMALL).expect("ring");
    let mut writer = ring.writer();
    let mut reader = ring.reader();
    write_n(&mut writer, 0, 40);
    for i in 0..40 {
        let rec = reader.try_next().expect("no overrun").expect("a record");
        assert_eq!(rec.meta.index, i);
        assert_eq!(check_packet(&rec.packet), Ok(i));
        let want = record_for(i, &rec.packet);
        assert_eq!(
            (rec.meta.track, rec.meta.flags, rec.meta.capture_us),
            (want.track, want.flags, want.capture_us)
        );
    }
    assert_eq!(reader.try_next(), Ok(None), "caught up");
}

#[test]
fn a_reader_of_some_tracks_gets_theirs_in_order_and_passes_the_others() {
    let ring = Ring::create_memfd("t", SMALL).expect("ring");
    let mut writer = ring.writer();
    let mut reader = ring.reader();
    // Tracks alternate 0, 1, 0, 1, …
    write_n(&mut writer, 0, 40);
    let mut packet = Vec::new();
    let mut got = Vec::new();
    while let Some(meta) = reader.try_next_of(&mut packet, 1 << 1).expect("no overrun") {
        assert_eq!(meta.track, 1);
        assert_eq!(
            check_packet(&packet),
            Ok(meta.index),
            "the record's own bytes"
        );
        got.push(meta.index);
    }
    assert_eq!(got, (0..40).filter(|i| i % 2 == 1).collect::<Vec<_>>());
    assert!(packet.is_empty(), "caught up: no stale bytes");
    // Passed-over records count against a lap like any: an overrun is still one.
    write_n(&mut writer, 40, 200);
    assert!(matches!(
        reader.try_next_of(&mut packet, 1 << 1),
        Err(Overrun { .. })
    ));
    // No track wanted: everything is passed, nothing returned.
    write_n(&mut writer, 240, 10);
    let mut none = ring.reader_from_oldest();
    assert_eq!(none.try_next_of(&mut packet, 0), Ok(None));
    assert_eq!(none.lag(), 0);
}

#[test]
fn each_reader_has_its_own_cursor() {
    let ring = Ring::create_memfd("t", SMALL).expect("ring");
    let mut writer = ring.writer();
    let mut early = ring.reader();
    write_n(&mut writer, 0, 10);
    let mut late = ring.reader();
    write_n(&mut writer, 10, 5);
    let mut oldest = ring.reader_from_oldest();
    let drain = |r: &mut rtp_ring::Reader| {
        std::iter::from_fn(|| r.try_next().expect("no overrun"))
            .map(|r| r.meta.index)
            .collect::<Vec<_>>()
    };
    assert_eq!(drain(&mut early), (0..15).collect::<Vec<_>>());
    assert_eq!(drain(&mut late), (10..15).collect::<Vec<_>>());
    assert_eq!(drain(&mut oldest), (0..15).collect::<Vec<_>>());
}

#[test]
fn oversize_packet_is_an_error_not_a_truncation() {
    let ring = Ring::create_memfd("t", SMALL).expect("ring");
    let mut writer = ring.writer();
    let big = vec![0u8; MAX_PAYLOAD + 1];
    let err = writer
        .write(RecordRef {
            track: 0,
            flags: Flags::empty(),
            capture_us: 0,
            packet: &big,
        })
        .expect_err("too large");
    assert_eq!(
        err,
        WriteError::TooLarge {
            len: MAX_PAYLOAD + 1
        }
    );
    assert!(err.to_string().contains("1501 bytes"), "{err}");
    let exact = vec![7u8; MAX_PAYLOAD];
    writer
        .write(RecordRef {
            track: 0,
            flags: Flags::empty(),
            capture_us: 0,
            packet: &exact,
        })
        .expect("exactly MAX_PAYLOAD fits");
    let err = writer
        .write(RecordRef {
            track: 8,
            flags: Flags::empty(),
            capture_us: 0,
            packet: &exact,
        })
        .expect_err("track 8");
    assert_eq!(err, WriteError::BadTrack { track: 8 });
    let mut reader = ring.reader_from_oldest();
    let rec = reader.try_next().expect("no overrun").expect("one record");
    assert_eq!(rec.packet.len(), MAX_PAYLOAD);
    assert_eq!(
        reader.try_next(),
        Ok(None),
        "refused records were not written"
    );
}

#[test]
fn a_lapped_reader_is_told_how_many_records_it_lost_and_resyncs_to_a_keyframe() {
    let ring = Ring::create_memfd("t", SMALL).expect("ring");
    let slots = ring.geometry().slot_count as u64;
    let mut writer = ring.writer();
    let mut reader = ring.reader();
    write_n(&mut writer, 0, 3 * slots + 7);
    let Err(Overrun { lost }) = reader.try_next() else {
        panic!("expected an overrun")
    };
    // Everything older than the ring's oldest record (plus one slot of slack) is gone.
    assert_eq!(lost, 3 * slots + 7 - slots + 1);
    assert_eq!(reader.cursor(), lost);
    let rec = reader
        .try_next()
        .expect("readable after the overrun")
        .expect("record");
    assert_eq!(rec.meta.index, lost);
    assert_eq!(check_packet(&rec.packet), Ok(lost));

    // Keyframes of track 0 are every 50 records: the newest one in the ring is 150.
    assert!(reader.resync_to_keyframe(0));
    let rec = reader.try_next().expect("no overrun").expect("record");
    assert_eq!(rec.meta.index, 150);
    assert!(rec.meta.flags.contains(Flags::KEYFRAME));
    assert_eq!(reader.newest_keyframe(0), Some(150));

    // Track 1 never had a keyframe: resync moves to the newest record and says so.
    assert!(!reader.resync_to_keyframe(1));
    assert_eq!(reader.try_next(), Ok(None));
}

#[test]
fn a_blocked_reader_wakes_when_the_writer_writes() {
    let ring = Ring::create_memfd("t", SMALL).expect("ring");
    let mut reader = ring.reader();
    let handle = {
        let ring = ring.clone();
        std::thread::spawn(move || {
            let mut writer = ring.writer();
            // Let the reader block first; then one record must wake it.
            std::thread::sleep(Duration::from_millis(50));
            write_n(&mut writer, 0, 1);
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let rec = loop {
        if let Some(rec) = reader.try_next().expect("no overrun") {
            break rec;
        }
        assert!(Instant::now() < deadline, "never woke");
        reader.wait(Duration::from_secs(10)).expect("wait");
    };
    assert_eq!(rec.meta.index, 0);
    handle.join().expect("writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_reader_is_woken_through_asyncfd() {
    let ring = Ring::create_memfd("t", SMALL).expect("ring");
    let mut reader = ring.reader().into_async().expect("async reader");
    let ring2 = ring.clone();
    let writer = std::thread::spawn(move || {
        let mut writer = ring2.writer();
        for i in 0..200u64 {
            let p = packet_for(i);
            writer.write(record_for(i, &p)).expect("fits");
            if i % 20 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    let mut packet = Vec::new();
    for i in 0..200u64 {
        let meta = tokio::time::timeout(Duration::from_secs(10), reader.next_into(&mut packet))
            .await
            .expect("woken before the deadline")
            .expect("io")
            .expect("no overrun in a 64-slot ring read this eagerly");
        assert_eq!(meta.index, i);
        assert_eq!(check_packet(&packet), Ok(i));
    }
    writer.join().expect("writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_async_waiter_sees_every_write_and_moves_past_it() {
    let ring = Ring::create_memfd("t", SMALL).expect("ring");
    let mut waiter = ring.reader().into_async().expect("async reader");
    // Readers kept elsewhere read on their own cursors when the waiter wakes.
    let mut kept = ring.reader();
    let ring2 = ring.clone();
    let writer = std::thread::spawn(move || {
        let mut writer = ring2.writer();
        for i in 0..100u64 {
            let p = packet_for(i);
            writer.write(record_for(i, &p)).expect("fits");
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let mut packet = Vec::new();
    let mut read = 0u64;
    let mut seen = 0u64;
    while read < 100 {
        let w = tokio::time::timeout(Duration::from_secs(10), waiter.written())
            .await
            .expect("woken before the deadline")
            .expect("io");
        // New to the waiter (the kept reader may already have read them: it reads on).
        assert!(w > seen, "woken only for new records: {w} after {seen}");
        seen = w;
        while let Some(meta) = kept.try_next_into(&mut packet).expect("no overrun") {
            assert_eq!(meta.index, read);
            read += 1;
        }
        assert!(
            read >= w,
            "everything up to the index it returned was written"
        );
    }
    writer.join().expect("writer");
}

/// One writer and four readers in threads, a small ring so that readers get lapped: every record
/// a reader returns must be whole and in increasing order, and overruns must account for every
/// record it did not see.
#[test]
fn stress_many_threads_never_see_a_torn_record() {
    const N: u64 = 200_000;
    let ring = Ring::create_memfd("t", SMALL).expect("ring");
    let readers: Vec<_> = (0..4)
        .map(|k| {
            let mut reader = ring.reader_from_oldest();
            std::thread::spawn(move || {
                let (mut seen, mut lost, mut next_expected) = (0u64, 0u64, 0u64);
                let mut packet = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                while next_expected < N {
                    assert!(
                        Instant::now() < deadline,
                        "reader {k} stalled at {next_expected}"
                    );
                    match reader.try_next_into(&mut packet) {
                        Ok(Some(meta)) => {
                            assert!(meta.index >= next_expected, "went backwards");
                            let index =
                                check_packet(&packet).unwrap_or_else(|e| panic!("reader {k}: {e}"));
                            assert_eq!(index, meta.index, "record landed in the wrong slot");
                            seen += 1;
                            next_expected = meta.index + 1;
                            // Reader 3 is slow on purpose, so it is lapped often.
                            if k == 3 && meta.index % 64 == 0 {
                                std::thread::yield_now();
                                std::hint::black_box((0..2000).sum::<u64>());
                            }
                        }
                        Ok(None) => reader.wait(Duration::from_millis(100)).expect("wait"),
                        Err(o) => {
                            lost += o.lost;
                            next_expected = reader.cursor();
                        }
                    }
                }
                (seen, lost)
            })
        })
        .collect();
    let mut writer = ring.writer();
    for i in 0..N {
        let p = packet_for(i);
        writer.write(record_for(i, &p)).expect("fits");
    }
    for r in readers {
        let (seen, lost) = r.join().expect("reader thread");
        assert_eq!(
            seen + lost,
            N,
            "every record is either read or reported lost"
        );
    }
}
