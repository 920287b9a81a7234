// TEMPORARY stub until the real parser lands (same API).
use std::time::SystemTime;
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind { File, Dir, Symlink(Vec<u8>) }
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry { pub name: Vec<u8>, pub kind: EntryKind, pub size: u64, pub mtime: Option<SystemTime> }
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format { Mlsd, List }
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped { pub line: Vec<u8>, pub reason: &'static str }
pub struct Listing { pub entries: Vec<RawEntry>, pub skipped: Vec<Skipped> }
pub fn parse_listing<L: AsRef<[u8]>>(_lines: &[L], _format: Format, _now: SystemTime) -> Listing { Listing { entries: vec![], skipped: vec![] } }
