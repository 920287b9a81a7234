//! Fuzz the FTP directory-listing parsers: any bytes, split into lines on
//! `\n`, parsed as MLSD and as LIST, must never panic, and every entry that
//! comes back must be a valid, unique name with a sane size and target.

#![no_main]

use std::collections::HashSet;
use std::time::{Duration, UNIX_EPOCH};

use ftpcircle_fs::ftp::listing::{EntryKind, Format, parse_listing, valid_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let nows = [
        // 2025-01-03 12:00:00 UTC: just after New Year.
        UNIX_EPOCH + Duration::from_secs(1_735_905_600),
        // 2024-02-29 12:00:00 UTC: a leap day.
        UNIX_EPOCH + Duration::from_secs(1_709_208_000),
        UNIX_EPOCH,
    ];
    for now in nows {
        for format in [Format::Mlsd, Format::List] {
            let listing = parse_listing(&lines, format, now);
            let mut names = HashSet::new();
            for entry in &listing.entries {
                assert_eq!(valid_name(&entry.name), Ok(()), "{entry:?}");
                assert!(names.insert(entry.name.as_slice()), "duplicate {entry:?}");
                assert!(entry.size <= 1 << 62, "{entry:?}");
                if let EntryKind::Symlink(target) = &entry.kind {
                    assert!(
                        !target.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n'),
                        "{entry:?}"
                    );
                }
            }
            assert!(listing.entries.len() + listing.skipped.len() <= lines.len());
            for skipped in &listing.skipped {
                assert!(skipped.line.len() <= 200);
            }
        }
    }
});
