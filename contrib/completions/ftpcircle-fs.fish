# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_ftpcircle_fs_global_optspecs
    string join \n servers= ca-file= timeout= max-connections= max-total-connections= cache-ttl= cache-entries= no-prefetch no-segmented-reads max-streams-per-file= index= no-index offline-keep= control-dir= f/foreground o= log-file= v/verbose q/quiet h/help V/version
end

function __fish_ftpcircle_fs_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_ftpcircle_fs_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_ftpcircle_fs_using_subcommand
    set -l cmd (__fish_ftpcircle_fs_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -l servers -d 'serverlist.txt to use [default: ./serverlist.txt, then $XDG_CONFIG_HOME (or ~/.config)/ftpcircle/serverlist.txt]' -r -F
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -l ca-file -d 'Extra trusted CA certificate(s) (PEM) for FTPS servers with a private CA' -r -F
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -l timeout -d 'Timeout in seconds for every connect, login, command and data read' -r
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -l max-connections -d 'Connections per server at most' -r
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -l max-total-connections -d 'Sockets to servers at most, over all servers; a connection counts two (control and data). Idle connections of rarely used servers close first' -r
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -l cache-ttl -d 'How long directory listings are cached, in seconds' -r
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -l cache-entries -d 'How many directory entries the listing cache holds at most, over all listings' -r
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -l max-streams-per-file -d 'Most streams (connections, over all mirrors) one segmented read of a big file uses' -r
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -l index -d 'The listing index file [default: $XDG_CACHE_HOME (or ~/.cache)/ftpcircle/index-HASH.sqlite, one per serverlist]' -r -F
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -l offline-keep -d 'How long a server that stops answering keeps its last known entries in the tree (marked offline), in seconds' -r
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -l control-dir -d 'Name of the control directory at the mount root (status files, each server\'s own tree)' -r
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -s o -d 'Mount options, comma separated: FUSE options (allow_other, allow_root, auto_unmount, ...) and any long option as a key (cache_ttl=120)' -r
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -l log-file -d 'Append the log to this file (otherwise stderr in the foreground, syslog as a daemon)' -r -F
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -l no-prefetch -d 'Don\'t fetch directory listings and small files ahead of the walker'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -l no-segmented-reads -d 'Read big files with one stream from one server, not in pieces from all mirrors at once'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -l no-index -d 'Don\'t remember listings on disk (every mount starts cold; down servers show nothing)'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -s f -l foreground -d 'Stay in the foreground (either way, SIGINT and SIGTERM unmount cleanly)'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -s q -l quiet -d 'Only errors in the log'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -s h -l help -d 'Print help'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -s V -l version -d 'Print version'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -a "check" -d 'Connect to every server of the serverlist (in parallel, no mount) and say what works; exit 0 when every server is usable, 1 otherwise, 2 for a bad serverlist'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -a "locate" -d 'Search the listing index for paths, without mounting (exit 1 when nothing matches)'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -a "index" -d 'Crawl every server fully into the listing index, without mounting (resumes when interrupted)'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_needs_command" -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand check" -l servers -d 'serverlist.txt to check [default: as for mounting]' -r -F
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand check" -l ca-file -d 'Extra trusted CA certificate(s) (PEM) for FTPS servers with a private CA' -r -F
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand check" -l timeout -d 'Timeout in seconds for every connect, login and command (all servers in parallel)' -r
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand check" -l json -d 'Print JSON instead of a table'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand check" -s h -l help -d 'Print help'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand completions" -s h -l help -d 'Print help'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand locate" -l servers -d 'serverlist.txt whose index to use [default: as for mounting]' -r -F
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand locate" -l index -d 'The listing index file [default: the serverlist\'s, as for mounting]' -r -F
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand locate" -s i -l ignore-case -d 'Ignore case'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand locate" -l regex -d 'Patterns are regular expressions (matching any part of the path)'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand locate" -s l -l long -d 'Long output: the servers holding each path, its size and modification time'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand locate" -s h -l help -d 'Print help'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand index" -l servers -d 'serverlist.txt whose index to use [default: as for mounting]' -r -F
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand index" -l index -d 'The listing index file [default: the serverlist\'s, as for mounting]' -r -F
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand index" -l ca-file -d 'Extra trusted CA certificate(s) (PEM) for FTPS servers with a private CA' -r -F
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand index" -l timeout -d 'Timeout in seconds for every connect, login, command and data read' -r
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand index" -l max-connections -d 'Connections per server at most' -r
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand index" -l max-listings -d 'Fetch at most N listings in this run, then stop as if interrupted (the next run resumes)' -r
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand index" -l cache-ttl -d 'Listings fetched within this many seconds are not fetched again' -r
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand index" -s v -l verbose -d 'More log output (-v info, -vv debug)'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand index" -s h -l help -d 'Print help'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand help; and not __fish_seen_subcommand_from check completions locate index help" -f -a "check" -d 'Connect to every server of the serverlist (in parallel, no mount) and say what works; exit 0 when every server is usable, 1 otherwise, 2 for a bad serverlist'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand help; and not __fish_seen_subcommand_from check completions locate index help" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand help; and not __fish_seen_subcommand_from check completions locate index help" -f -a "locate" -d 'Search the listing index for paths, without mounting (exit 1 when nothing matches)'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand help; and not __fish_seen_subcommand_from check completions locate index help" -f -a "index" -d 'Crawl every server fully into the listing index, without mounting (resumes when interrupted)'
complete -c ftpcircle-fs -n "__fish_ftpcircle_fs_using_subcommand help; and not __fish_seen_subcommand_from check completions locate index help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
