//! Where a ring lives: a sealed memfd or a file, mapped shared, plus the eventfd that wakes readers.
//!
//! Owns creating, opening and validating mappings, handing descriptors to a child process, and
//! finding the writer's eventfd from another process. It does not move records (`writer.rs`,
//! `reader.rs`) or define the byte layout (`layout.rs`).
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};
use rustix::event::{EventfdFlags, eventfd};
use rustix::fs::{MemfdFlags, SealFlags, fcntl_add_seals, ftruncate, memfd_create};

use crate::layout::{self, Geometry, HEADER_SIZE, Header, HeaderError, SlotHeader};
use crate::reader::Reader;
use crate::writer::Writer;

/// Why a ring could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The operating system refused (missing file, permissions, no memory, ...).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The mapping is not a ring this build understands.
    #[error(transparent)]
    Header(#[from] HeaderError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OpenError {
    let what = what.into();
    move |source| OpenError::Io { what, source }
}

/// The mapped memory of a ring, shared by its handles in this process.
#[derive(Debug)]
pub(crate) struct Mapping {
    map: MmapRaw,
    geometry: Geometry,
}

// SAFETY: the mapping is only accessed through atomics (header fields, slot stamps) and through
// the slot protocol (`protocol.rs`), which tolerates concurrent writers by detecting them.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(crate) fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the mapping is at least HEADER_SIZE bytes (validated or created so), page
        // aligned, and `Header` is repr(C) with only integers and atomics, so every bit pattern
        // is valid. Fields that other processes change are atomics.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    /// Pointer to the start of slot `index % slot_count`.
    pub(crate) fn slot_ptr(&self, index: u64) -> *mut u8 {
        let slot = (index % self.geometry.slot_count as u64) as usize;
        // SAFETY: slot < slot_count, and the mapping holds HEADER_SIZE + slot_count * slot_size
        // bytes (checked by `validate_header` or set by `create`).
        unsafe {
            self.map
                .as_mut_ptr()
                .add(HEADER_SIZE + slot * self.geometry.slot_size)
        }
    }

    pub(crate) fn slot_header(&self, index: u64) -> &SlotHeader {
        // SAFETY: the slot is in bounds (see `slot_ptr`), 64-byte aligned within a page-aligned
        // mapping, and `SlotHeader` is repr(C) integers and an atomic: any bits are valid. Its
        // plain fields are only read between two stamp loads that detect concurrent writes.
        unsafe { &*(self.slot_ptr(index) as *const SlotHeader) }
    }
}

/// A ring: its mapping, the descriptor behind it, and the eventfd that wakes its readers.
///
/// Cheap to clone; every clone shares the mapping. Make one [`Writer`] per ring (the format
/// assumes a single writer) and any number of [`Reader`]s, here or in other processes.
#[derive(Debug, Clone)]
pub struct Ring {
    mapping: Arc<Mapping>,
    fd: Arc<OwnedFd>,
    eventfd: Option<Arc<OwnedFd>>,
}

impl Ring {
    /// Creates a ring of `bytes` in a new memfd whose size is sealed, with a new eventfd. Both
    /// descriptors are close-on-exec; pass them to a child with [`Ring::pass_to_child`].
    pub fn create_memfd(name: &str, bytes: u64) -> Result<Self, OpenError> {
        let geometry = Geometry::for_size(bytes)?;
        let fd =
            memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).map_err(|e| {
                OpenError::Io {
                    what: "memfd_create".into(),
                    source: e.into(),
                }
            })?;
        ftruncate(&fd, geometry.total_bytes() as u64).map_err(|e| OpenError::Io {
            what: "sizing the memfd".into(),
            source: e.into(),
        })?;
        // The size can never change under a reader's mapping (no SIGBUS from a shrink).
        fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL).map_err(
            |e| OpenError::Io {
                what: "sealing the memfd".into(),
                source: e.into(),
            },
        )?;
        Self::init(fd, geometry)
    }

    /// Creates a file-backed ring of `bytes` at `path`, e.g. under `/dev/shm`. An existing file
    /// there is replaced, not truncated: processes still mapping the old one keep their (old)
    /// memory instead of faulting on a shrunk file.
    pub fn create_file(path: &Path, bytes: u64) -> Result<Self, OpenError> {
        let geometry = Geometry::for_size(bytes)?;
        let shown = path.display();
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(OpenError::Io {
                    what: format!("replacing ring file {shown}"),
                    source: e,
                });
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io(format!("creating ring file {shown}")))?;
        file.set_len(geometry.total_bytes() as u64)
            .map_err(io(format!("sizing ring file {shown}")))?;
        Self::init(file.into(), geometry)
    }

    fn init(fd: OwnedFd, geometry: Geometry) -> Result<Self, OpenError> {
        let map = MmapOptions::new()
            .len(geometry.total_bytes())
            .map_raw(fd.as_raw_fd())
            .map_err(io("mapping the ring"))?;
        // SAFETY: the memory is freshly truncated (zero) and nobody else maps it yet; the header
        // is written before any handle exists.
        let header = unsafe { &mut *(map.as_mut_ptr() as *mut Header) };
        layout::init_header(header, geometry);
        let eventfd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(|e| {
            OpenError::Io {
                what: "eventfd".into(),
                source: e.into(),
            }
        })?;
        Ok(Self {
            mapping: Arc::new(Mapping { map, geometry }),
            fd: Arc::new(fd),
            eventfd: Some(Arc::new(eventfd)),
        })
    }

    /// Opens an existing ring from descriptors, as a child process does with inherited ones.
    /// Without `eventfd`, readers look for the writer's (see [`Ring::open`]).
    pub fn from_fds(fd: OwnedFd, eventfd: Option<OwnedFd>) -> Result<Self, OpenError> {
        let len = File::from(
            fd.try_clone()
                .map_err(io("duplicating the ring descriptor"))?,
        )
        .metadata()
        .map_err(io("reading the ring's size"))?
        .len() as usize;
        if len < HEADER_SIZE {
            return Err(HeaderError::TooShort { len }.into());
        }
        let map = MmapOptions::new()
            .len(len)
            .map_raw(fd.as_raw_fd())
            .map_err(io("mapping the ring"))?;
        // SAFETY: the mapping is `len` bytes long and readable; the slice only lives for the
        // validation below, and validation reads plain bytes whatever they hold.
        let bytes = unsafe { std::slice::from_raw_parts(map.as_ptr(), len) };
        let geometry = layout::validate_header(bytes)?;
        let mut ring = Self {
            mapping: Arc::new(Mapping { map, geometry }),
            fd: Arc::new(fd),
            eventfd: eventfd.map(Arc::new),
        };
        if ring.eventfd.is_none() {
            ring.eventfd = ring.borrow_writers_eventfd().map(Arc::new);
        }
        Ok(ring)
    }

    /// Opens a ring from descriptor numbers this process inherited (as `wisp-transcoder
    /// --ring-fd N --ring-eventfd M` does) and takes ownership of them.
    ///
    /// Each number must be open (checked) and not owned by anything else in this process: pass
    /// only numbers your parent handed you and use them nowhere else.
    pub fn from_inherited_fds(ring_fd: RawFd, eventfd: Option<RawFd>) -> Result<Self, OpenError> {
        let adopt = |fd: RawFd, what: &str| -> Result<OwnedFd, OpenError> {
            if fd < 3 {
                return Err(OpenError::Io {
                    what: format!("{what} {fd}"),
                    source: std::io::Error::other("standard streams are not ring descriptors"),
                });
            }
            // SAFETY (of borrow_raw): only used for this fcntl, which fails cleanly on a closed
            // or invalid number instead of touching another object.
            let flags = rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(fd) });
            flags.map_err(|e| OpenError::Io {
                what: format!("{what} {fd} is not an open descriptor"),
                source: e.into(),
            })?;
            // SAFETY: the number is open (checked above) and, by this function's contract,
            // owned by nothing else in this process, so the OwnedFd is its only owner.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        };
        let ring = adopt(ring_fd, "ring descriptor")?;
        let event = eventfd.map(|fd| adopt(fd, "ring eventfd")).transpose()?;
        Self::from_fds(ring, event)
    }

    /// Opens an existing ring by path: a ring file, or a live process's memfd through
    /// `/proc/<pid>/fd/<n>`. Wakeups come from the writer's eventfd, duplicated from the writer
    /// process with `pidfd_getfd` when the caller may (same user or root); otherwise readers
    /// fall back to polling and [`Ring::has_wakeup`] says so.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(format!("opening ring {}", path.display())))?;
        Self::from_fds(file.into(), None)
    }

    /// The writer's eventfd, copied out of the writer's process, if it lives and lets us.
    fn borrow_writers_eventfd(&self) -> Option<OwnedFd> {
        let header = self.mapping.header();
        let pid = header.writer_pid.load(std::sync::atomic::Ordering::Acquire);
        let fd = header
            .writer_eventfd
            .load(std::sync::atomic::Ordering::Acquire);
        if fd < 0 {
            return None;
        }
        let pid = rustix::process::Pid::from_raw(pid as i32)?;
        if pid == rustix::process::getpid() {
            return None;
        }
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
        rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty()).ok()
    }

    /// Arranges for `cmd`'s child to inherit the ring's descriptor and its eventfd under the
    /// same numbers, and returns those numbers (to pass as arguments). Other close-on-exec
    /// descriptors stay closed in the child.
    pub fn pass_to_child(&self, cmd: &mut Command) -> (RawFd, Option<RawFd>) {
        let ring_fd = self.fd.as_raw_fd();
        let event_fd = self.eventfd.as_ref().map(|fd| fd.as_raw_fd());
        // SAFETY: the closure runs in the forked child before exec and only calls fcntl, which
        // is async-signal-safe; it allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(move || {
                let keep = |fd: RawFd| {
                    let fd = BorrowedFd::borrow_raw(fd);
                    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())
                };
                keep(ring_fd)?;
                if let Some(fd) = event_fd {
                    keep(fd)?;
                }
                Ok(())
            });
        }
        (ring_fd, event_fd)
    }

    /// The ring's shape.
    pub fn geometry(&self) -> Geometry {
        self.mapping.geometry()
    }

    /// The descriptor of the ring's memory (memfd or file).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The eventfd readers wait on, if this handle has one.
    pub fn eventfd(&self) -> Option<BorrowedFd<'_>> {
        self.eventfd.as_deref().map(|fd| fd.as_fd())
    }

    /// Whether readers of this handle are woken by the writer (else they poll every 1 ms).
    pub fn has_wakeup(&self) -> bool {
        self.eventfd.is_some()
    }

    /// Records published so far.
    pub fn write_index(&self) -> u64 {
        self.mapping
            .header()
            .write_index
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The process that writes (or last wrote) this ring, if any.
    pub fn writer_pid(&self) -> Option<u32> {
        match self
            .mapping
            .header()
            .writer_pid
            .load(std::sync::atomic::Ordering::Acquire)
        {
            0 => None,
            pid => Some(pid),
        }
    }

    /// The writer for this ring. It resumes after the last complete record, so a restarted
    /// writer (say, a respawned transcoder) continues the same ring. Call once per ring.
    pub fn writer(&self) -> Writer {
        Writer::new(self.mapping.clone(), self.eventfd.clone())
    }

    /// A reader positioned at the newest record: it sees what is written from now on.
    pub fn reader(&self) -> Reader {
        Reader::new(
            self.mapping.clone(),
            self.eventfd.clone(),
            self.write_index(),
        )
    }

    /// A reader positioned at the oldest record still in the ring.
    pub fn reader_from_oldest(&self) -> Reader {
        let w = self.write_index();
        let oldest = w.saturating_sub(self.geometry().slot_count as u64);
        Reader::new(self.mapping.clone(), self.eventfd.clone(), oldest)
    }
}
