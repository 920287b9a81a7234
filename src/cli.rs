//! The command line: every form ftpcircle-fs is started with, turned into one [`Args`].
//!
//! Owns: the clap definition (also the source of the man page and shell completions), the
//! mount(8)/fstab forms and the `-o` keys.
//!
//! The forms accepted:
//! - `ftpcircle-fs [OPTIONS] MOUNTPOINT` (the serverlist is looked up);
//! - `ftpcircle-fs [OPTIONS] SERVERLIST MOUNTPOINT` (what mount.fuse3 runs for an fstab line
//!   `SERVERLIST MOUNTPOINT fuse.ftpcircle-fs OPTIONS`);
//! - `mount.ftpcircle-fs SERVERLIST MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]`: the binary
//!   called through a symlink of that name, as mount(8) calls the helper of `-t ftpcircle-fs`;
//! - `ftpcircle-fs check [SERVERLIST]`: probe every server without mounting (see
//!   [`crate::check`]);
//! - `ftpcircle-fs locate [OPTIONS] PATTERN...`: search the listing index, without mounting;
//! - `ftpcircle-fs index [OPTIONS]`: crawl every server into the listing index;
//! - `ftpcircle-fs completions SHELL`: a completion script on stdout.
//!
//! Invariant: every long option is also accepted as an `-o` key (`-o cache_ttl=120` is
//! `--cache-ttl 120`); fstab-only words are ignored; any other key that is not a FUSE mount
//! option is an error before anything is mounted.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

/// The name mount(8) calls for `-t ftpcircle-fs` (`/sbin/mount.ftpcircle-fs`).
pub const HELPER_NAME: &str = "mount.ftpcircle-fs";

/// The version and, when built from a git checkout, the commit (set by build.rs).
pub const VERSION: &str = env!("FTPCIRCLE_VERSION");

#[derive(Parser, Debug, Default)]
#[command(
    name = "ftpcircle-fs",
    version = VERSION,
    about = "Mount every FTP/FTPS server in serverlist.txt as one merged, read-only tree",
    after_help = "Every long option is also accepted as an -o key: -o cache_ttl=120,no_prefetch.\n\
                  fstab: SERVERLIST MOUNTPOINT fuse.ftpcircle-fs ro,_netdev,allow_other 0 0",
    override_usage = "ftpcircle-fs [OPTIONS] [SERVERLIST] <MOUNTPOINT>\n       ftpcircle-fs check [--json] [--timeout SECS] [SERVERLIST]\n       ftpcircle-fs locate [OPTIONS] <PATTERN>...\n       ftpcircle-fs index [OPTIONS]\n       ftpcircle-fs completions <SHELL>",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Cmd>,
    /// serverlist.txt to use, if given before MOUNTPOINT (same as --servers)
    #[arg(value_name = "SERVERLIST")]
    pub serverlist: Option<PathBuf>,
    /// Where to mount (an existing directory)
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: Option<PathBuf>,
    /// serverlist.txt to use [default: ./serverlist.txt, then $XDG_CONFIG_HOME (or ~/.config)/ftpcircle/serverlist.txt]
    #[arg(long, value_name = "FILE")]
    pub servers: Option<PathBuf>,
    /// Extra trusted CA certificate(s) (PEM) for FTPS servers with a private CA
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Timeout in seconds for every connect, login, command and data read
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub timeout: f64,
    /// Connections per server at most
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub max_connections: usize,
    /// Sockets to servers at most, over all servers; a connection counts two (control and
    /// data). Idle connections of rarely used servers close first
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub max_total_connections: usize,
    /// How long directory listings are cached, in seconds
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub cache_ttl: f64,
    /// How many directory entries the listing cache holds at most, over all listings
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    pub cache_entries: usize,
    /// Don't fetch directory listings and small files ahead of the walker
    #[arg(long)]
    pub no_prefetch: bool,
    /// Read big files with one stream from one server, not in pieces from all mirrors at once
    #[arg(long)]
    pub no_segmented_reads: bool,
    /// Most streams (connections, over all mirrors) one segmented read of a big file uses
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub max_streams_per_file: usize,
    /// The listing index file [default: $XDG_CACHE_HOME (or ~/.cache)/ftpcircle/index-HASH.sqlite, one per serverlist]
    #[arg(long, value_name = "FILE", conflicts_with = "no_index")]
    pub index: Option<PathBuf>,
    /// Don't remember listings on disk (every mount starts cold; down servers show nothing)
    #[arg(long)]
    pub no_index: bool,
    /// How long a server that stops answering keeps its last known entries in the tree (marked offline), in seconds
    #[arg(long, default_value_t = 3600.0, value_name = "SECS")]
    pub offline_keep: f64,
    /// Name of the control directory at the mount root (status files, each server's own tree)
    #[arg(long, default_value = ".ftpcircle", value_name = "NAME")]
    pub control_dir: String,
    /// Stay in the foreground (either way, SIGINT and SIGTERM unmount cleanly)
    #[arg(short, long)]
    pub foreground: bool,
    /// Mount options, comma separated: FUSE options (allow_other, allow_root, auto_unmount, ...) and any long option as a key (cache_ttl=120)
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
    /// Append the log to this file (otherwise stderr in the foreground, syslog as a daemon)
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors in the log
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Connect to every server of the serverlist (in parallel, no mount) and say what works;
    /// exit 0 when every server is usable, 1 otherwise, 2 for a bad serverlist
    Check(CheckArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Search the listing index for paths, without mounting (exit 1 when nothing matches)
    Locate(LocateArgs),
    /// Crawl every server fully into the listing index, without mounting (resumes when
    /// interrupted)
    Index(CrawlArgs),
}

/// Where the index is: shared by `locate` and `index`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct IndexFile {
    /// serverlist.txt whose index to use [default: as for mounting]
    #[arg(long, value_name = "FILE")]
    pub servers: Option<PathBuf>,
    /// The listing index file [default: the serverlist's, as for mounting]
    #[arg(long, value_name = "FILE")]
    pub index: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Default, Clone)]
pub struct LocateArgs {
    /// Without *, ? or [...]: any part of the path; with them: a glob over the whole path.
    /// A path matching any pattern is printed
    #[arg(value_name = "PATTERN", required = true)]
    pub patterns: Vec<String>,
    /// Ignore case
    #[arg(short, long)]
    pub ignore_case: bool,
    /// Patterns are regular expressions (matching any part of the path)
    #[arg(long)]
    pub regex: bool,
    /// Long output: the servers holding each path, its size and modification time
    #[arg(short = 'l', long)]
    pub long: bool,
    #[command(flatten)]
    pub file: IndexFile,
}

#[derive(clap::Args, Debug, Default, Clone)]
pub struct CrawlArgs {
    #[command(flatten)]
    pub file: IndexFile,
    /// Extra trusted CA certificate(s) (PEM) for FTPS servers with a private CA
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Timeout in seconds for every connect, login, command and data read
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub timeout: f64,
    /// Connections per server at most
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub max_connections: usize,
    /// Fetch at most N listings in this run, then stop as if interrupted (the next run resumes)
    #[arg(long, value_name = "N")]
    pub max_listings: Option<u64>,
    /// Listings fetched within this many seconds are not fetched again
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub cache_ttl: f64,
    /// More log output (-v info, -vv debug)
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `ftpcircle-fs check [OPTIONS] [SERVERLIST]`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// serverlist.txt to check (same as --servers)
    #[arg(value_name = "SERVERLIST")]
    pub serverlist: Option<PathBuf>,
    /// serverlist.txt to check [default: as for mounting]
    #[arg(long, value_name = "FILE")]
    pub servers: Option<PathBuf>,
    /// Extra trusted CA certificate(s) (PEM) for FTPS servers with a private CA
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Timeout in seconds for every connect, login and command (all servers in parallel)
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub timeout: f64,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// What `main` should do.
#[derive(Debug)]
pub enum Parsed {
    /// Mount (or, for `mount -f`, only check) with these arguments.
    Mount { args: Box<Args>, fake: bool },
    /// Print this text on stdout and exit 0 (help, version, completions).
    Print(String),
    /// `ftpcircle-fs locate`.
    Locate(LocateArgs),
    /// `ftpcircle-fs index`.
    Crawl(CrawlArgs),
    /// `ftpcircle-fs check`.
    Check(CheckArgs),
}

/// A command-line error: the message and whether it is bad usage (status 2).
#[derive(Debug)]
pub struct Usage(pub String);

/// The mount options the kernel or fusermount3 understand, passed through as `-o` options.
const FUSE_OPTIONS: &[&str] = &[
    "ro",
    "rw",
    "allow_other",
    "allow_root",
    "auto_unmount",
    "default_permissions",
    "noexec",
    "exec",
    "noatime",
    "atime",
    "relatime",
    "strictatime",
    "nodiratime",
    "nosuid",
    "suid",
    "nodev",
    "dev",
    "sync",
    "async",
    "dirsync",
    // Ours, not the kernel's: mount on a directory that is not empty or is a mount point
    // (src/preflight.rs).
    "nonempty",
];
/// FUSE options with a value (`fsname=NAME`).
const FUSE_VALUE_OPTIONS: &[&str] = &["fsname", "subtype", "max_read", "blksize"];
/// Words that only mean something to mount(8), fstab or systemd: ignored.
const FSTAB_ONLY: &[&str] = &[
    "defaults",
    "_netdev",
    "nofail",
    "noauto",
    "auto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "comment",
    "nobootwait",
    "bg",
    "fg",
];

/// Parse the process's own command line.
pub fn parse_env() -> Result<Parsed, Usage> {
    parse(std::env::args_os().collect())
}

/// Parse `argv` (with `argv[0]`) in any of the forms in the module docs.
pub fn parse(argv: Vec<OsString>) -> Result<Parsed, Usage> {
    let argv0 = argv
        .first()
        .cloned()
        .unwrap_or_else(|| "ftpcircle-fs".into());
    let as_helper = std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == HELPER_NAME);
    let (argv, fake) = if as_helper {
        helper_argv(argv)?
    } else {
        (argv, false)
    };
    let argv = expand_o_keys(argv)?;
    let mut args = match Args::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) => {
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    Ok(Parsed::Print(e.render().to_string()))
                }
                _ => Err(Usage(e.render().to_string().trim_end().to_string())),
            };
        }
    };
    match args.command.take() {
        Some(Cmd::Completions { shell }) => return Ok(Parsed::Print(completions(shell))),
        Some(Cmd::Locate(l)) => return Ok(Parsed::Locate(l)),
        Some(Cmd::Index(c)) => return Ok(Parsed::Crawl(c)),
        Some(Cmd::Check(mut check)) => {
            if let Some(list) = check.serverlist.take() {
                if check.servers.is_some() {
                    return Err(Usage(
                        "the serverlist is given twice (as SERVERLIST and as --servers); give it once"
                            .into(),
                    ));
                }
                check.servers = Some(list);
            }
            if !(check.timeout > 0.0 && check.timeout <= 3600.0) {
                return Err(Usage("--timeout must be between 0 and 3600 seconds".into()));
            }
            return Ok(Parsed::Check(check));
        }
        None => {}
    }
    // Two positionals: SERVERLIST MOUNTPOINT; one: MOUNTPOINT (clap fills the first slot).
    if args.mountpoint.is_none() {
        args.mountpoint = args.serverlist.take();
    }
    if args.mountpoint.is_none() {
        let e = Args::command().error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "the mount point is missing: ftpcircle-fs [OPTIONS] [SERVERLIST] <MOUNTPOINT>",
        );
        return Err(Usage(e.render().to_string().trim_end().to_string()));
    }
    if let Some(list) = args.serverlist.take() {
        if args.servers.is_some() {
            return Err(Usage(
                "the serverlist is given twice (as SERVERLIST and as --servers/-o servers=); give it once"
                    .into(),
            ));
        }
        args.servers = Some(list);
    }
    Ok(Parsed::Mount {
        args: Box::new(args),
        fake,
    })
}

impl Args {
    /// The mount point (always set after [`parse`] returned `Mount`).
    pub fn mountpoint(&self) -> &std::path::Path {
        self.mountpoint
            .as_deref()
            .unwrap_or(std::path::Path::new(""))
    }
}

/// `mount.ftpcircle-fs SPEC DIR [-sfnv] [-o OPTS] [-t TYPE]` (mount(8)'s helper convention)
/// into the normal form. Returns the argv and whether `-f` (fake: check, don't mount) was
/// given.
fn helper_argv(argv: Vec<OsString>) -> Result<(Vec<OsString>, bool), Usage> {
    let mut out = vec![OsString::from("ftpcircle-fs")];
    let mut fake = false;
    let mut it = argv.into_iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        match s.as_ref() {
            "-o" => {
                let v = it.next().ok_or_else(|| Usage("-o needs a value".into()))?;
                out.push("-o".into());
                out.push(v);
            }
            "-t" => {
                it.next();
            }
            "-N" => {
                return Err(Usage(
                    "mount -N (another mount namespace) is not supported".into(),
                ));
            }
            _ if s.starts_with("-o") && s.len() > 2 => out.push(a),
            _ if s.starts_with('-') && s.len() > 1 && !s.starts_with("--") => {
                for c in s[1..].chars() {
                    match c {
                        // sloppy, don't write mtab: nothing to do for a FUSE mount.
                        's' | 'n' => {}
                        'f' => fake = true,
                        'v' => out.push("-v".into()),
                        'h' => out.push("--help".into()),
                        'V' => out.push("--version".into()),
                        _ => {
                            return Err(Usage(format!(
                                "{HELPER_NAME}: unknown option -{c} (accepted: -s -f -n -v -o OPTS -t TYPE)"
                            )));
                        }
                    }
                }
            }
            _ => out.push(a),
        }
    }
    Ok((out, fake))
}

/// Split every `-o` value into keys: long options become `--long[=value]`, FUSE options stay
/// `-o` options, fstab-only words are dropped, and anything else is an error.
fn expand_o_keys(argv: Vec<OsString>) -> Result<Vec<OsString>, Usage> {
    let cmd = Args::command();
    let mut out = Vec::with_capacity(argv.len());
    let mut it = argv.into_iter();
    if let Some(a0) = it.next() {
        out.push(a0);
    }
    let mut fuse_opts: Vec<String> = Vec::new();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy().into_owned();
        let value = if s == "-o" {
            match it.next() {
                Some(v) => v.to_string_lossy().into_owned(),
                None => return Err(Usage("-o needs a value".into())),
            }
        } else if let Some(v) = s
            .strip_prefix("-o")
            .filter(|v| !v.is_empty() && !s.starts_with("--"))
        {
            v.to_string()
        } else {
            if s == "--" {
                out.push(a);
                out.extend(it);
                break;
            }
            out.push(a);
            continue;
        };
        for key in value.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            let (name, val) = match key.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (key, None),
            };
            if FSTAB_ONLY.contains(&name) || name.starts_with("x-") {
                continue;
            }
            if (val.is_none() && FUSE_OPTIONS.contains(&name))
                || (val.is_some() && FUSE_VALUE_OPTIONS.contains(&name))
            {
                fuse_opts.push(key.to_string());
                continue;
            }
            let long = name.replace('_', "-");
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()))
                .filter(|_| !matches!(long.as_str(), "help" | "version"));
            let Some(arg) = arg else {
                return Err(Usage(format!(
                    "-o {key}: unknown option (neither an ftpcircle-fs option such as cache_ttl=SECS nor a FUSE mount option such as allow_other; see ftpcircle-fs --help)"
                )));
            };
            let takes_value = arg.get_action().takes_values();
            match (takes_value, val) {
                (true, Some(v)) => out.push(format!("--{long}={v}").into()),
                (true, None) => {
                    return Err(Usage(format!("-o {name}: needs a value ({name}=...)")));
                }
                (false, None) => out.push(format!("--{long}").into()),
                (false, Some(_)) => {
                    return Err(Usage(format!("-o {key}: {name} takes no value")));
                }
            }
        }
    }
    if !fuse_opts.is_empty() {
        out.push("-o".into());
        out.push(fuse_opts.join(",").into());
    }
    Ok(out)
}

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> String {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "ftpcircle-fs", &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The man page (roff), as committed in `man/ftpcircle-fs.1`.
pub fn man_page() -> Vec<u8> {
    // The version line would make the committed page change with every commit.
    let cmd = Args::command().version(env!("CARGO_PKG_VERSION"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .expect("rendering to a Vec cannot fail");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, Usage> {
        parse(args.iter().map(OsString::from).collect())
    }

    fn mount(args: &[&str]) -> Args {
        match p(args) {
            Ok(Parsed::Mount { args, fake: false }) => *args,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn one_positional_is_the_mountpoint() {
        let a = mount(&["ftpcircle-fs", "mnt"]);
        assert_eq!(a.mountpoint(), std::path::Path::new("mnt"));
        assert_eq!(a.servers, None);
    }

    #[test]
    fn two_positionals_are_serverlist_and_mountpoint() {
        let a = mount(&["ftpcircle-fs", "/etc/ftpcircle/serverlist.txt", "/mnt/ftp"]);
        assert_eq!(a.mountpoint(), std::path::Path::new("/mnt/ftp"));
        assert_eq!(
            a.servers.as_deref(),
            Some(std::path::Path::new("/etc/ftpcircle/serverlist.txt"))
        );
    }

    #[test]
    fn serverlist_twice_is_an_error() {
        let e = p(&["ftpcircle-fs", "a.txt", "mnt", "--servers", "b.txt"]).unwrap_err();
        assert!(e.0.contains("given twice"), "{}", e.0);
    }

    #[test]
    fn o_keys_map_to_long_options() {
        let a = mount(&[
            "ftpcircle-fs",
            "list.txt",
            "mnt",
            "-o",
            "ro,_netdev,allow_other,cache_ttl=120,max_connections=2,no_prefetch,x-systemd.automount,timeout=10",
        ]);
        assert_eq!(a.cache_ttl, 120.0);
        assert_eq!(a.max_connections, 2);
        assert_eq!(a.timeout, 10.0);
        assert!(a.no_prefetch);
        assert_eq!(a.options, vec!["ro,allow_other".to_string()]);
    }

    #[test]
    fn servers_key_sets_the_serverlist() {
        let a = mount(&["ftpcircle-fs", "mnt", "-oservers=/x/list.txt,defaults"]);
        assert_eq!(
            a.servers.as_deref(),
            Some(std::path::Path::new("/x/list.txt"))
        );
        assert!(a.options.is_empty());
    }

    #[test]
    fn unknown_o_key_is_an_error_naming_it() {
        let e = p(&["ftpcircle-fs", "mnt", "-o", "allow_other,cache_tll=5"]).unwrap_err();
        assert!(e.0.contains("cache_tll=5"), "{}", e.0);
        assert!(e.0.contains("unknown option"), "{}", e.0);
        let e = p(&["ftpcircle-fs", "mnt", "-o", "timeout"]).unwrap_err();
        assert!(e.0.contains("needs a value"), "{}", e.0);
        let e = p(&["ftpcircle-fs", "mnt", "-o", "no_prefetch=1"]).unwrap_err();
        assert!(e.0.contains("takes no value"), "{}", e.0);
        let e = p(&["ftpcircle-fs", "mnt", "-o", "help"]).unwrap_err();
        assert!(e.0.contains("unknown option"), "{}", e.0);
    }

    #[test]
    fn helper_form_from_mount8() {
        let argv = [
            "/sbin/mount.ftpcircle-fs",
            "/etc/list.txt",
            "/mnt/ftp",
            "-n",
            "-o",
            "rw,allow_other,cache_ttl=5",
        ];
        let a = mount(&argv);
        assert_eq!(a.mountpoint(), std::path::Path::new("/mnt/ftp"));
        assert_eq!(
            a.servers.as_deref(),
            Some(std::path::Path::new("/etc/list.txt"))
        );
        assert_eq!(a.cache_ttl, 5.0);
        assert_eq!(a.options, vec!["rw,allow_other".to_string()]);
        match p(&["mount.ftpcircle-fs", "l.txt", "m", "-fv"]) {
            Ok(Parsed::Mount { args, fake: true }) => assert_eq!(args.verbose, 1),
            other => panic!("{other:?}"),
        }
        assert!(p(&["mount.ftpcircle-fs", "l.txt", "m", "-x"]).is_err());
    }

    #[test]
    fn completions_subcommand_prints_a_script() {
        match p(&["ftpcircle-fs", "completions", "bash"]) {
            Ok(Parsed::Print(s)) => assert!(s.contains("complete -F _ftpcircle__fs"), "{s}"),
            other => panic!("{other:?}"),
        }
        assert!(p(&["ftpcircle-fs", "completions", "tcsh"]).is_err());
    }

    #[test]
    fn version_names_the_package_version() {
        match p(&["ftpcircle-fs", "--version"]) {
            Ok(Parsed::Print(s)) => assert!(s.contains(env!("CARGO_PKG_VERSION")), "{s}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_mountpoint_is_a_usage_error() {
        let e = p(&["ftpcircle-fs"]).unwrap_err();
        assert!(e.0.contains("MOUNTPOINT"), "{}", e.0);
    }

    /// The committed man page and completion scripts are what the current command line
    /// generates. `FTPCIRCLE_REGENERATE=1 cargo test --lib cli::` rewrites them.
    #[test]
    fn committed_man_page_and_completions_are_current() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let files: Vec<(PathBuf, Vec<u8>)> = vec![
            (root.join("man/ftpcircle-fs.1"), man_page()),
            (
                root.join("contrib/completions/ftpcircle-fs.bash"),
                completions(clap_complete::Shell::Bash).into_bytes(),
            ),
            (
                root.join("contrib/completions/_ftpcircle-fs"),
                completions(clap_complete::Shell::Zsh).into_bytes(),
            ),
            (
                root.join("contrib/completions/ftpcircle-fs.fish"),
                completions(clap_complete::Shell::Fish).into_bytes(),
            ),
        ];
        let regenerate = std::env::var_os("FTPCIRCLE_REGENERATE").is_some();
        for (path, want) in files {
            if regenerate {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &want).unwrap();
                continue;
            }
            let have = std::fs::read(&path).unwrap_or_default();
            assert!(
                have == want,
                "{} is out of date: run `FTPCIRCLE_REGENERATE=1 cargo test --lib cli::` and commit it",
                path.display()
            );
        }
    }
}
