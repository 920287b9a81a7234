//! The fuser adapter: the only code that touches fuser's types. Each handler asks the merged
//! view ([`Circle`]) and replies exactly once; every write-side operation answers EROFS.
//!
//! Slow network work never blocks the kernel's other requests: the session runs several
//! worker threads (`FUSE_THREADS`), each request is handled on one of them, and the merged
//! view's locks are never held across network calls.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow,
    WriteFlags,
};

use crate::circle::reader::{Served, SpliceSink};
use crate::circle::{Attr, Circle, FileKind};
use crate::error::Error;
use crate::page_store::{self, OUT_HEADER, Stores, Target};
use crate::splice::Pipe;

/// FUSE worker threads. A `cp` from a slow server can keep a few threads busy (the kernel sends
/// several reads of one file at once); 16 leaves plenty for `ls`, `stat` and other files.
pub const FUSE_THREADS: usize = 16;
/// Largest read the kernel may send (FUSE_MAX_PAGES) when its reply fits the FUSE threads'
/// pipes: a direct-I/O read of `cp`'s 1 MiB buffer then costs two or one round trips, not
/// eight as with the default 128 KiB. Set at init from the pipe size ([`request_bytes`]).
const MAX_REQUEST: u32 = 1024 * 1024;
/// Files at least this big are opened with direct I/O the first time ([`CircleFs::open`]).
const DIRECT_MIN: u64 = 4 << 20;
/// st_blksize: `cp` sizes its buffer from it (at least 128 KiB), so larger reads reach us.
const BLKSIZE: u32 = 1024 * 1024;

pub struct CircleFs {
    circle: Arc<Circle>,
    uid: u32,
    gid: u32,
    /// The session's /dev/fuse, for read replies spliced from a socket ([`DeviceReply`]); set
    /// once the session serves.
    device: Arc<OnceLock<OwnedFd>>,
    /// Whether the kernel lets files opened with direct I/O be mmapped (Linux >= 6.6): only
    /// then are big files opened that way.
    direct_io: bool,
    /// Open handles read with direct I/O, their inode and the bytes stored so far: every
    /// byte read through them is also stored in the kernel's page cache ([`page_store`]).
    direct: Mutex<HashMap<u64, Arc<Target>>>,
    stores: Stores,
}

/// A FUSE thread's pipes: one for each reply, and for a reply that is also stored in the page
/// cache, one for its bytes ([`DeviceReply`]).
struct Pipes {
    reply: Pipe,
    data: OnceCell<Option<Pipe>>,
}

thread_local! {
    /// Each FUSE thread's pipes for spliced read replies (None if the system gave none).
    static PIPES: OnceCell<Option<Pipes>> = const { OnceCell::new() };
}

/// Where the bytes of a read with direct I/O go besides the reply.
#[derive(Clone, Copy)]
struct StoreAt<'a> {
    target: &'a Arc<Target>,
    offset: u64,
    stores: &'a Stores,
}

/// A read reply written to /dev/fuse by splice: the reader fills a pipe with the bytes, one
/// splice hands the whole reply to the kernel. With `store`, the same bytes (duplicated by
/// `tee`, not copied) then go to the page cache in a FUSE_NOTIFY_STORE ([`page_store`]).
struct DeviceReply<'a> {
    device: BorrowedFd<'a>,
    pipes: &'a Pipes,
    unique: u64,
    len: usize,
    /// For a read with direct I/O: where to store the bytes, what counts them, and the queue
    /// to store them through.
    store: Option<StoreAt<'a>>,
}

impl DeviceReply<'_> {
    /// The pipe the bytes of a stored reply go to first (made on first use).
    fn data_pipe(&self) -> Option<&Pipe> {
        self.pipes.data.get_or_init(|| Pipe::new().ok()).as_ref()
    }

    /// Send the reply whose bytes are in `data`, then queue them for the page cache.
    fn send_stored(&self, data: &Pipe, at: StoreAt) -> std::io::Result<()> {
        let reply = &self.pipes.reply;
        let header = page_store::out_header(OUT_HEADER + self.len, 0, self.unique)
            .ok_or_else(|| std::io::Error::other("reply too long"))?;
        let sent = reply
            .put(&header)
            .and_then(|()| data.tee_to(reply, self.len))
            .and_then(|()| reply.send_to(self.device, OUT_HEADER + self.len));
        if sent.is_err() {
            reply.clear();
            data.clear();
            return sent;
        }
        at.stores.store_pipe(at.target, at.offset, data, self.len);
        Ok(())
    }
}

impl SpliceSink for DeviceReply<'_> {
    fn begin(&mut self, len: usize) -> Option<&Pipe> {
        self.len = len;
        if self.store.is_some() {
            // The bytes first go to a pipe of their own, from which both messages are made.
            let data = self.data_pipe()?;
            return (len <= data.max_reply()).then_some(data);
        }
        let reply = &self.pipes.reply;
        if len > reply.max_reply() {
            return None;
        }
        let header = page_store::out_header(OUT_HEADER + len, 0, self.unique)?;
        if reply.put(&header).is_err() {
            reply.clear();
            return None;
        }
        Some(reply)
    }

    fn commit(&mut self) -> std::io::Result<()> {
        // With `store`, begin() handed out the data pipe, so it exists.
        match self.store.and_then(|at| Some((at, self.data_pipe()?))) {
            Some((at, data)) => self.send_stored(data, at),
            None => self.pipes.reply.send_to(self.device, OUT_HEADER + self.len),
        }
    }

    fn take_back(&mut self) -> std::io::Result<Vec<u8>> {
        if self.store.is_some() {
            return match self.data_pipe() {
                Some(data) => data.take_back(),
                None => Ok(Vec::new()),
            };
        }
        let mut back = self.pipes.reply.take_back()?;
        back.drain(..OUT_HEADER.min(back.len()));
        Ok(back)
    }
}

fn errno(e: &Error) -> Errno {
    log::log!(e.log_level(), "{e}");
    Errno::from_i32(e.errno())
}

impl CircleFs {
    pub fn new(circle: Arc<Circle>) -> Self {
        // SAFETY: getuid/getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let device = Arc::new(OnceLock::new());
        CircleFs {
            circle,
            uid,
            gid,
            stores: Stores::new(Arc::clone(&device)),
            device,
            direct_io: false,
            direct: Mutex::new(HashMap::new()),
        }
    }

    fn fattr(&self, a: &Attr) -> FileAttr {
        let kind = match a.kind {
            FileKind::Dir => FileType::Directory,
            FileKind::File => FileType::RegularFile,
            FileKind::Symlink => FileType::Symlink,
        };
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: a.mtime,
            mtime: a.mtime,
            ctime: a.mtime,
            crtime: a.mtime,
            kind,
            perm: a.perm,
            nlink: a.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        }
    }

    fn ttl(&self) -> Duration {
        self.circle.ttl()
    }

    /// The size of `ino` if it is a file to read with direct I/O on its first open (big
    /// enough, and the kernel lets such files be mapped).
    fn direct_size(&self, ino: u64) -> Option<u64> {
        let a = self.circle.getattr(ino).ok()?;
        (self.direct_io && a.kind == FileKind::File && a.size >= DIRECT_MIN).then_some(a.size)
    }
}

impl Pipes {
    fn new() -> Option<Pipes> {
        Some(Pipes {
            reply: Pipe::new().ok()?,
            data: OnceCell::new(),
        })
    }
}

/// The largest read request to ask the kernel for: [`MAX_REQUEST`], or less if the FUSE
/// threads' pipes could not splice a reply that big ([`Pipe::max_reply`]).
fn request_bytes() -> u32 {
    let fits = Pipe::new().map_or(0, |p| p.max_reply());
    let fits = u32::try_from(fits).unwrap_or(MAX_REQUEST);
    // At least 128 KiB (the kernel's default), in whole pages.
    (fits.min(MAX_REQUEST) & !4095).max(128 << 10)
}

fn xattr_reply(value: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

fn ftype(k: FileKind) -> FileType {
    match k {
        FileKind::Dir => FileType::Directory,
        FileKind::File => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
    }
}

impl Filesystem for CircleFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        // Drop cached pages of a file whose size or mtime changed at the next getattr.
        let _ = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA);
        let request = request_bytes();
        let _ = config.set_max_readahead(request);
        let _ = config.set_max_write(request);
        // Big files are read with direct I/O on their first open, which only keeps mmap
        // working where the kernel allows it for such files.
        self.direct_io = config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.circle.lookup(parent.0, name.as_bytes()) {
            Ok(a) => reply.entry(&self.ttl(), &self.fattr(&a), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.circle.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl(), &self.fattr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.circle.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    // BATCH_FORGET: fuser's default calls this for each inode (its batch type is private).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.circle.forget(ino.0, nlookup);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.circle.open(ino.0, flags.0) {
            // A status file: generated at open, its size is not known ahead.
            Ok((fh, _)) if self.circle.is_generated(ino.0) => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
            }
            // Opened before with the same size and mtime: what the kernel cached from that open
            // is still right, so keep it (reading the same file again is free).
            Ok((fh, true)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            // A big file opened the first time: with direct I/O each read of the caller's
            // buffer comes to us whole (up to MAX_REQUEST per request) instead of in the
            // kernel's 128-256 KiB read-ahead pieces, a third of the round trips of a cold
            // `cp`; every byte read is also stored in the page cache, so the next open
            // (KEEP_CACHE) reads from memory as before.
            Ok((fh, false)) if let Some(size) = self.direct_size(ino.0) => {
                if let Ok(mut d) = self.direct.lock() {
                    d.insert(fh, Target::new(ino.0, size));
                }
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
            }
            Ok((fh, false)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let direct = match self.direct.lock() {
            Ok(d) => d.get(&fh.0).cloned(),
            Err(_) => None,
        };
        let served = PIPES.with(|pipes| {
            let pipes = pipes.get_or_init(Pipes::new).as_ref();
            let mut sink = match (self.device.get(), pipes) {
                (Some(dev), Some(pipes)) => Some(DeviceReply {
                    device: dev.as_fd(),
                    pipes,
                    unique: req.unique().0,
                    len: 0,
                    store: direct.as_ref().map(|target| StoreAt {
                        target,
                        offset,
                        stores: &self.stores,
                    }),
                }),
                _ => None,
            };
            let sink = sink.as_mut().map(|s| s as &mut dyn SpliceSink);
            self.circle.read_into(fh.0, offset, size as usize, sink)
        });
        match served {
            Ok(Served::Data(data)) => {
                reply.data(data.as_slice());
                if let Some(target) = direct {
                    self.stores.store_bytes(&target, offset, data);
                }
            }
            // Replied through /dev/fuse already. fuser would answer a reply object dropped
            // unanswered with EIO (and a warning), so it is forgotten instead: all it holds is
            // the request number and a reference to the session's device (a count, no memory).
            Ok(Served::Sent) => std::mem::forget(reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.circle.release(fh.0);
        let direct = self.direct.lock().ok().and_then(|mut d| d.remove(&fh.0));
        if let Some(t) = direct {
            log::debug!(
                "inode {}: read with direct I/O, {} bytes stored in the page cache so far",
                t.ino(),
                t.stored()
            );
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.circle.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let res = self.circle.readdir_at(fh.0, offset, false, |next, e| {
            reply.add(
                INodeNo(e.attr.ino),
                next,
                ftype(e.attr.kind),
                OsStr::from_bytes(&e.name),
            )
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.ttl();
        let res = self.circle.readdir_at(fh.0, offset, true, |next, e| {
            reply.add(
                INodeNo(e.attr.ino),
                next,
                OsStr::from_bytes(&e.name),
                &ttl,
                &self.fattr(&e.attr),
                Generation(0),
            )
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.circle.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // What is known of the merged tree so far: `df -h` shows the size of the files listed
        // (as used, none free: nothing can be written), `df -i` the number of entries.
        let (entries, bytes) = self.circle.tree_totals();
        let blocks = bytes.div_ceil(u64::from(BLKSIZE));
        reply.statfs(blocks, 0, 0, entries, 0, BLKSIZE, 255, BLKSIZE);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            reply.error(Errno::EROFS);
        } else {
            reply.ok();
        }
    }

    // The provenance xattrs (`user.ftpcircle.*`, see `circle::provenance`), from memory.
    // Size 0 asks for the length; a buffer too small is ERANGE, as xattr(7) says.
    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.circle.getxattr(ino.0, name.as_bytes()) {
            Ok(v) => xattr_reply(&v, size, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.circle.listxattr(ino.0) {
            Ok(v) => xattr_reply(&v, size, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    // ---- every write-side operation: read-only filesystem ----

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}

/// `-o nonempty`: mount over a directory that has entries (they stay hidden while mounted).
pub fn nonempty_allowed(user_opts: &[String]) -> bool {
    user_opts
        .iter()
        .flat_map(|o| o.split(','))
        .any(|o| o.trim() == "nonempty")
}

/// Start the thread that invalidates, in the kernel, names that left their directory on the
/// servers while the kernel held them (see [`Circle::watch_gone`]), so the kernel forgets
/// them and the inode table can drop them. A separate thread: the kernel takes the directory's
/// lock for it, which a request handler of that directory may be holding. Ends when the
/// merged view is dropped.
pub fn start_invalidator(circle: &Circle, notifier: fuser::Notifier) {
    let gone = circle.watch_gone();
    let spawned = std::thread::Builder::new()
        .name("ftpc-inval".into())
        .spawn(move || {
            for (dir, name) in gone {
                // ENOENT: the kernel had already dropped it.
                if let Err(e) = notifier.inval_entry(INodeNo(dir), OsStr::from_bytes(&name)) {
                    log::debug!("invalidating a gone name: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the invalidation thread: {e}");
    }
}

/// Mount options: read-only always, our name, the user's `-o` options on top.
pub fn config(user_opts: &[String]) -> Result<Config, String> {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("ftpcircle".into()),
        MountOption::Subtype("ftpcircle-fs".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    for opt in user_opts.iter().flat_map(|o| o.split(',')) {
        let opt = opt.trim();
        match opt {
            // nonempty: ours (see `nonempty_allowed`), not the kernel's.
            "" | "ro" | "nonempty" => {}
            // mount(8) and mount.fuse3 add `rw` (no `ro` in fstab), `dev` and `suid` on their
            // own: the mount stays read-only, nodev and nosuid whatever they say.
            "rw" | "dev" | "suid" => log::debug!("-o {opt}: ignored (always ro,nodev,nosuid)"),
            "allow_other" => cfg.acl = SessionACL::All,
            "allow_root" => cfg.acl = SessionACL::RootAndOwner,
            "auto_unmount" => cfg.mount_options.push(MountOption::AutoUnmount),
            "default_permissions" => cfg.mount_options.push(MountOption::DefaultPermissions),
            "noexec" => cfg.mount_options.push(MountOption::NoExec),
            "exec" => cfg.mount_options.push(MountOption::Exec),
            "noatime" => cfg.mount_options.push(MountOption::NoAtime),
            o if o.starts_with("fsname=") => {
                cfg.mount_options
                    .retain(|m| !matches!(m, MountOption::FSName(_)));
                cfg.mount_options.push(MountOption::FSName(o[7..].into()));
            }
            o => cfg.mount_options.push(MountOption::CUSTOM(o.into())),
        }
    }
    if cfg.mount_options.contains(&MountOption::AutoUnmount) && cfg.acl == SessionACL::Owner {
        return Err("-o auto_unmount needs -o allow_other or -o allow_root as well".into());
    }
    // fuser adds `allow_other` itself for any ACL but the default.
    cfg.n_threads = Some(FUSE_THREADS);
    // One /dev/fuse descriptor for all threads: a reply may then be written to the session's
    // descriptor by any of them (spliced read replies; with a clone per thread the kernel
    // only takes a reply on the clone the request was read from).
    cfg.clone_fd = false;
    Ok(cfg)
}

/// A mounted filesystem whose session is not serving yet.
pub struct Mounted {
    session: fuser::Session<CircleFs>,
    /// The filesystem's slot for the session's device (see [`CircleFs::device`]).
    device: Arc<OnceLock<OwnedFd>>,
}

/// Mount `fs` on `mountpoint` and do the FUSE handshake.
pub fn mount(fs: CircleFs, mountpoint: &Path, cfg: &Config) -> std::io::Result<Mounted> {
    let device = Arc::clone(&fs.device);
    Ok(Mounted {
        session: fuser::Session::new(fs, mountpoint, cfg)?,
        device,
    })
}

/// The kernel side of a serving session, as seen from outside the FUSE threads.
pub struct Connection {
    /// A duplicate of the session's /dev/fuse descriptor, only ever polled.
    device: std::os::fd::OwnedFd,
}

impl Mounted {
    /// Start the kernel invalidator (see [`start_invalidator`]) for this session.
    pub fn start_invalidator(&self, circle: &Circle) {
        start_invalidator(circle, self.session.notifier());
    }

    /// Serve requests on [`FUSE_THREADS`] threads in the background; `ended` gets the
    /// session's result once the kernel ends the connection (after an unmount that leaves no
    /// copy of the mount anywhere). Until then the threads block on /dev/fuse; ending the
    /// process is the other way out (closing /dev/fuse aborts the connection).
    pub fn serve(
        self,
        ended: impl FnOnce(std::io::Result<()>) + Send + 'static,
    ) -> std::io::Result<(Connection, Unmounter)> {
        let device = self.session.as_fd().try_clone_to_owned()?;
        let _ = self.device.set(device.try_clone()?);
        let mut session = self.session;
        let unmounter = Unmounter(session.unmount_callable());
        std::thread::Builder::new()
            .name("fuse-session".into())
            .spawn(move || ended(session.run()))?;
        Ok((Connection { device }, unmounter))
    }
}

/// Unmounts through fuser, which then no longer tries to unmount when the session ends.
pub struct Unmounter(fuser::SessionUnmounter);

impl Unmounter {
    /// A plain unmount (EBUSY while files are open; EINVAL if the mount is gone from here);
    /// a no-op once the kernel has ended the connection.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.0.unmount()
    }
}

impl Connection {
    /// True once the kernel has aborted the connection (unmounted with no copy left, or
    /// aborted through fusectl): /dev/fuse then polls as POLLERR.
    pub fn aborted(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.device.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: pfd is a valid pollfd for an fd we own; timeout 0 never blocks.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & libc::POLLERR != 0
    }
}
