# Shared shell helpers for scripts/test, scripts/pg-cluster and scripts/mariadb-server.
# shellcheck shell=bash
# Sourced, never executed. Everything here writes diagnostics to stderr only, so a helper's
# stdout stays reserved for the one line (a URL) that callers capture.

# log MSG...: a progress line on stderr, prefixed with the calling script's name.
log() {
    printf '%s: %s\n' "${LEAKLESS_LOG_PREFIX:-${0##*/}}" "$*" >&2
}

# die MSG...: log MSG and exit 1.
die() {
    log "error: $*"
    exit 1
}

# abs_path PATH: PATH made absolute (need not exist yet), without resolving symlinks.
abs_path() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$PWD" "$1" ;;
    esac
}

# port_is_listening PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_is_listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_port: print a TCP port on 127.0.0.1 that is free right now. The OS picks it (bind to
# port 0) when python3 is there; otherwise a random high port that nothing listens on. A
# race with another process remains possible, so callers retry their start on a bind failure.
free_port() {
    local port
    if command -v python3 >/dev/null 2>&1 &&
        port=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()' 2>/dev/null) && [[ -n "$port" ]]; then
        printf '%s\n' "$port"
        return 0
    fi
    local _i
    for _i in $(seq 1 200); do
        port=$((20000 + RANDOM % 40000))
        if ! port_is_listening "$port"; then
            printf '%s\n' "$port"
            return 0
        fi
    done
    die "could not find a free TCP port on 127.0.0.1"
}

# random_hex BYTES: BYTES random bytes from /dev/urandom as lowercase hex (URL-safe, no quoting).
random_hex() {
    od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'
}

# socket_dir_for DIR: the directory to hold the server's unix socket. DIR itself unless its path
# is too long for a unix socket (sun_path is 108 bytes), then a fresh short directory under /tmp
# whose path is recorded in DIR/socket-dir so that `stop` removes it too.
socket_dir_for() {
    local dir=$1
    if ((${#dir} <= 80)); then
        printf '%s\n' "$dir"
        return 0
    fi
    local short
    short=$(mktemp -d /tmp/leakless-sock.XXXXXX) || die "mktemp for a socket directory failed"
    printf '%s\n' "$short" >"$dir/socket-dir"
    printf '%s\n' "$short"
}

# remove_owned_dir DIR MARKER: remove DIR, but only when it holds MARKER (a file written by our
# own `start`), so that a wrong argument can never make `stop` delete somebody else's folder.
# Also removes the out-of-tree socket directory recorded by socket_dir_for.
remove_owned_dir() {
    local dir=$1 marker=$2
    [[ -d "$dir" ]] || return 0
    if [[ ! -f "$dir/$marker" ]]; then
        die "refusing to remove $dir: it has no $marker marker, so it was not made by this script"
    fi
    if [[ -f "$dir/socket-dir" ]]; then
        local short
        short=$(<"$dir/socket-dir")
        case "$short" in
            /tmp/leakless-sock.*) rm -rf -- "$short" ;;
        esac
    fi
    rm -rf -- "$dir"
}

# start_watchdog OWNER_PID DIR CMD...: start a detached process (own session, no inherited
# stdio) that runs CMD... once OWNER_PID has exited, or quits quietly once DIR is gone (the
# server was stopped normally). Its pid is written to DIR/watchdog.pid.
start_watchdog() {
    local owner=$1 dir=$2
    shift 2
    [[ "$owner" =~ ^[0-9]+$ ]] || die "--owner-pid wants a numeric pid, got '$owner'"
    kill -0 "$owner" 2>/dev/null || die "--owner-pid $owner: no such process"
    local cmd
    printf -v cmd '%q ' "$@"
    # The watchdog's output goes to DIR/watchdog.log while DIR exists; never to our caller's
    # pipes, or a caller reading our stdout to EOF would wait for the watchdog to exit.
    # shellcheck disable=SC2016 # the script is expanded by the watchdog shell, not here
    setsid nohup bash -c '
        owner=$1 dir=$2 cmd=$3
        alive() {
            local stat
            kill -0 "$1" 2>/dev/null || return 1
            # An exited but not yet reaped owner (a zombie) counts as gone.
            stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
            stat=${stat##*) }
            [[ "${stat%% *}" != Z ]]
        }
        while alive "$owner"; do
            [[ -d "$dir" ]] || exit 0
            sleep 1
        done
        [[ -d "$dir" ]] || exit 0
        echo "owner pid $owner is gone: stopping the server in $dir"
        export LEAKLESS_IN_WATCHDOG=1
        eval "$cmd"
    ' leakless-watchdog "$owner" "$dir" "$cmd" </dev/null >>"$dir/watchdog.log" 2>&1 &
    printf '%s\n' "$!" >"$dir/watchdog.pid"
}

# stop_watchdog DIR: end the watchdog recorded in DIR/watchdog.pid, if it still runs (it would
# also notice DIR being removed and leave within a second).
stop_watchdog() {
    local dir=$1 pid
    # The watchdog itself runs `stop`: it must not kill itself halfway.
    [[ -z "${LEAKLESS_IN_WATCHDOG:-}" ]] || return 0
    [[ -f "$dir/watchdog.pid" ]] || return 0
    pid=$(<"$dir/watchdog.pid")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    # Only if that pid is still our watchdog (pids get reused).
    if [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *leakless-watchdog* ]]; then
        kill "$pid" 2>/dev/null || true
    fi
}
