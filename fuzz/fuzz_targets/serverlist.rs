//! Fuzz the server-list parser: any bytes must parse or be rejected with an
//! error, never panic; every accepted server must be usable (a port, a host,
//! an absolute base path) and no error message may echo a literal password.

#![no_main]

use std::path::Path;

use ftpcircle_fs::serverlist::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(Path::new("fuzz.txt"), data) {
        Ok(specs) => {
            assert!(!specs.is_empty(), "Ok with no servers");
            let mut last_line = 0;
            for spec in &specs {
                assert_ne!(spec.port, 0, "{spec:?}");
                assert!(!spec.host.is_empty(), "{spec:?}");
                assert!(spec.base.starts_with('/'), "{spec:?}");
                assert!(!spec.user.is_empty(), "{spec:?}");
                assert!(
                    !spec.user.chars().any(char::is_control),
                    "control character in user: {spec:?}"
                );
                // File order is kept and line numbers point into the input.
                assert!(spec.line > last_line, "{spec:?}");
                last_line = spec.line;
                // The label and address are built from validated parts.
                let label = spec.label();
                assert!(label.contains(&spec.port.to_string()), "{label}");
                assert!(!format!("{spec:?}").is_empty());
            }
        }
        Err(e) => {
            assert_eq!(e.file, Path::new("fuzz.txt"));
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.txt"), "{shown}");
        }
    }
});
