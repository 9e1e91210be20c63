//! Identifiers: resource ids, entity-tags, egress ids. Random, from the kernel.

/// 128 random bits as 32 hex digits (resource URLs, entity-tags: RFC 9725 §5 wants them
/// unguessable).
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    let mut filled = 0;
    while filled < b.len() {
        match rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("the kernel's random source failed: {e}"),
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
