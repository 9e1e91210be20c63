//! Records whose bytes prove their own integrity, shared by the ring's integration tests.
#![allow(dead_code)]

use rtp_ring::{Flags, MAX_PAYLOAD, RecordRef, Writer};

/// FNV-1a, enough to tell a torn or mixed-up record from a whole one.
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// The packet of record `index`: an RTP-shaped header, a body derived from the index, and a
/// trailing checksum. Lengths vary from 40 to MAX_PAYLOAD bytes.
pub fn packet_for(index: u64) -> Vec<u8> {
    let len = 40 + (index.wrapping_mul(7919) % (MAX_PAYLOAD as u64 - 40)) as usize;
    let mut p = vec![0u8; len];
    p[0] = 0x80;
    p[1] = 96;
    p[2..4].copy_from_slice(&(index as u16).to_be_bytes());
    p[4..12].copy_from_slice(&index.to_be_bytes());
    for (k, b) in p[12..len - 8].iter_mut().enumerate() {
        *b = (index as usize).wrapping_mul(31).wrapping_add(k) as u8;
    }
    let sum = fnv(&p[..len - 8]);
    p[len - 8..].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Checks a packet made by `packet_for` and returns the index it carries.
pub fn check_packet(p: &[u8]) -> Result<u64, String> {
    if p.len() < 40 {
        return Err(format!("packet of {} bytes is too short", p.len()));
    }
    let (body, sum) = p.split_at(p.len() - 8);
    if fnv(body).to_be_bytes() != sum {
        return Err("checksum mismatch: torn or corrupt record".into());
    }
    let index = u64::from_be_bytes(p[4..12].try_into().expect("8 bytes"));
    if p != packet_for(index) {
        return Err(format!("record {index} has the wrong bytes"));
    }
    Ok(index)
}

/// Track and flags record `index` carries: two tracks, a keyframe every 50 records of track 0.
pub fn record_for(index: u64, packet: &[u8]) -> RecordRef<'_> {
    let track = (index % 2) as u8;
    let mut flags = Flags::empty();
    if track == 0 && index % 50 == 0 {
        flags |= Flags::KEYFRAME;
    }
    if index % 5 == 4 {
        flags |= Flags::END_OF_FRAME;
    }
    RecordRef {
        track,
        flags,
        capture_us: index * 10,
        packet,
    }
}

pub fn write_n(writer: &mut Writer, from: u64, n: u64) {
    for i in from..from + n {
        let p = packet_for(i);
        assert_eq!(writer.write(record_for(i, &p)).expect("fits"), i);
    }
}
