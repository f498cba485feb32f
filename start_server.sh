#!/usr/bin/env bash
# start_server.sh: install and start pyworker on a Vast instance (a template's on-start script).
#
# Run it from a checkout (the code beside it is installed):
#     /workspace/vast-pyworker/start_server.sh
# or piped, on a fresh instance (it clones PYWORKER_REPO at PYWORKER_REF first):
#     curl -fsSL <URL of this file> | PYWORKER_REPO=<git URL> bash
#
# In order, it
#  1. reads its settings (below) and refuses, in one line, to start without BACKEND or MODEL_LOG;
#  2. appends the environment to PYWORKER_ENV_FILE, so later shells see the template's variables;
#  3. moves the model log's old lines to MODEL_LOG.old, unless a worker of this script is still
#     running (then this is a restart, not a boot, and the log is the running model server's);
#  4. finds the code: the checkout it sits in, else $WORKSPACE_DIR/vast-pyworker (cloned once);
#     when POST /pyworker/update has left its flag file, pulls PYWORKER_REF into it first;
#  5. installs it into the venv $WORKSPACE_DIR/worker-env, unless what is installed is the same
#     (a stamp of the commit, pyproject.toml and Python): a reboot starts in a second or two;
#  6. refuses an unknown BACKEND, or its settings, in the worker's own words (load_backend);
#  7. with USE_SSL true: makes a key and a certificate request, has Vast's console sign it, and
#     stores the pair where the worker reads it;
#  8. stops the worker it started before, if it still runs, and starts the new one in the
#     background (its output in pyworker.log, its PID in pyworker.pid), then waits until it
#     listens, or exits at once with the worker's own reason if it could not start.
# Everything it prints is also appended to $WORKSPACE_DIR/debug.log.
#
# Settings (environment variables, defaults in brackets):
#   BACKEND, MODEL_LOG     required: the backend to serve, the model server's log file
#   WORKSPACE_DIR          [/workspace] the venv, the clone, debug.log, pyworker.log, pyworker.pid
#   REPORT_ADDR            [https://run.vast.ai]   WORKER_PORT [3000]   USE_SSL [true]
#   PYWORKER_REPO          the git URL to clone when the script has no checkout beside it
#   PYWORKER_REF           [main] the branch, tag or commit to clone, and to pull on an update
#   PYWORKER_ENV_FILE      [/etc/environment]
#   PYWORKER_UPDATE_FLAG_FILE  [/.force_update] made by POST /pyworker/update (the worker is
#                          given the same path)
#   PYWORKER_SSL_CERTFILE, PYWORKER_SSL_KEYFILE  [/etc/instance.crt, /etc/instance.key]
#   PYWORKER_SIGN_CERT_URL [https://console.vast.ai/api/v0/sign_cert/] (?instance_id= added)
#   PYWORKER_SIGN_CERT_ATTEMPTS [3] tries at having it signed, 2 s apart
#   PYWORKER_PYTHON        the Python (>= 3.11) for the venv [the first of python3,
#                          python3.14 ... python3.11 that is recent enough]
#   PYWORKER_PIP_ARGS      extra arguments for pip install (e.g. --no-index --find-links DIR)
#   PYWORKER_START_TIMEOUT [60] seconds to wait for the worker to listen
#   PYWORKER_STOP_TIMEOUT  [45] seconds the previous worker may take to drain and exit
# Every other variable (MASTER_TOKEN, CONTAINER_ID, PUBLIC_IPADDR, UNSECURED, PYWORKER_*, the
# backend's own) reaches the worker as it is: see the README and python -m pyworker --help.
#
# Exit status: 0 the worker runs in the background; 2 refused: a setting is missing or wrong
# (one line on stderr says which); 1 failed: an install, the certificate, or the worker itself.

set -Eeuo pipefail

# Where this script lies, if it is a file (empty when piped to bash). Read here, at the top
# level: inside a function BASH_SOURCE names the function's caller instead.
SCRIPT_PATH="${BASH_SOURCE[0]:-}"

say() { printf '%(%F %T)T start_server.sh: %s\n' -1 "$*"; }
warn() { printf '%(%F %T)T start_server.sh: warning: %s\n' -1 "$*" >&2; }
# A refusal or a failure is one line on stderr: what went wrong and what to do about it.
refuse() {
    printf 'start_server.sh: %s\n' "$*" >&2
    exit 2
}
fail() {
    printf 'start_server.sh: %s\n' "$*" >&2
    exit 1
}
on_error() {
    # set -e stops the script at the first unexpected failure; say where, so debug.log shows it.
    fail "unexpected failure (status $1) at line $2: $3"
}

is_true() {
    # The worker's own reading of a flag (pyworker/_config.py), so the two always agree.
    case "${1,,}" in
        1 | true | yes | on) return 0 ;;
        *) return 1 ;;
    esac
}

# -- settings ------------------------------------------------------------------------------------

settings() {
    WORKSPACE_DIR="${WORKSPACE_DIR:-/workspace}"
    REPORT_ADDR="${REPORT_ADDR:-https://run.vast.ai}"
    USE_SSL="${USE_SSL:-true}"
    WORKER_PORT="${WORKER_PORT:-3000}"

    PYWORKER_REPO="${PYWORKER_REPO:-}"
    PYWORKER_REF="${PYWORKER_REF:-main}"
    PYWORKER_ENV_FILE="${PYWORKER_ENV_FILE:-/etc/environment}"
    PYWORKER_UPDATE_FLAG_FILE="${PYWORKER_UPDATE_FLAG_FILE:-/.force_update}"
    PYWORKER_SSL_CERTFILE="${PYWORKER_SSL_CERTFILE:-/etc/instance.crt}"
    PYWORKER_SSL_KEYFILE="${PYWORKER_SSL_KEYFILE:-/etc/instance.key}"
    PYWORKER_SIGN_CERT_URL="${PYWORKER_SIGN_CERT_URL:-https://console.vast.ai/api/v0/sign_cert/}"
    PYWORKER_SIGN_CERT_ATTEMPTS="${PYWORKER_SIGN_CERT_ATTEMPTS:-3}"
    PYWORKER_PYTHON="${PYWORKER_PYTHON:-}"
    PYWORKER_PIP_ARGS="${PYWORKER_PIP_ARGS:-}"
    PYWORKER_START_TIMEOUT="${PYWORKER_START_TIMEOUT:-60}"
    PYWORKER_STOP_TIMEOUT="${PYWORKER_STOP_TIMEOUT:-45}"
}

workspace() {
    mkdir -p -- "$WORKSPACE_DIR"
    # Absolute, as the script works from inside it and the worker is handed these paths.
    WORKSPACE_DIR="$(cd -- "$WORKSPACE_DIR" && pwd -P)"
    cd -- "$WORKSPACE_DIR"
    ENV_PATH="$WORKSPACE_DIR/worker-env"
    SERVER_DIR="$WORKSPACE_DIR/vast-pyworker"
    DEBUG_LOG="$WORKSPACE_DIR/debug.log"
    PYWORKER_LOG="$WORKSPACE_DIR/pyworker.log"
    PID_FILE="$WORKSPACE_DIR/pyworker.pid"
    STAMP_FILE="$ENV_PATH/.pyworker-installed"
    LOCK_FILE="$WORKSPACE_DIR/.start_server.lock"
}

check_settings() {
    [[ -n "${BACKEND:-}" ]] ||
        refuse "BACKEND is not set: set it to the backend to serve (python -m pyworker --list-backends lists them)"
    # Only what can never name a backend (a path, spaces) is refused before the install; the
    # worker itself judges the rest (check_backend).
    [[ "$BACKEND" =~ ^[A-Za-z0-9_.-]+$ ]] ||
        refuse "BACKEND '$BACKEND' is not a backend name (letters, digits, _, - and . only)"
    [[ -n "${MODEL_LOG:-}" ]] ||
        refuse "MODEL_LOG is not set: set it to the model server's log file (its stdout and stderr)"
    [[ "$WORKER_PORT" =~ ^[0-9]+$ ]] ||
        refuse "WORKER_PORT must be a port number, not '$WORKER_PORT'"
    local name
    for name in PYWORKER_START_TIMEOUT PYWORKER_STOP_TIMEOUT PYWORKER_SIGN_CERT_ATTEMPTS; do
        [[ "${!name}" =~ ^[0-9]+$ ]] || refuse "$name must be a whole number, not '${!name}'"
    done
}

show_settings() {
    say "==== starting (pid $$)"
    local name
    for name in BACKEND MODEL_LOG REPORT_ADDR WORKER_PORT USE_SSL WORKSPACE_DIR ENV_PATH \
        DEBUG_LOG PYWORKER_LOG PYWORKER_ENV_FILE PYWORKER_UPDATE_FLAG_FILE; do
        say "$name: ${!name:-(not set)}"
    done
}

# -- the environment file ------------------------------------------------------------------------

append_environment() {
    # As the original script does (env | grep _ >> /etc/environment), so that a shell opened
    # later on the instance sees the template's variables; but each line only once, however
    # often the instance reboots, and never a value that would spill over several lines.
    local file="$PYWORKER_ENV_FILE" name line added=0
    if ! { [[ -e "$file" ]] || : >"$file"; } 2>/dev/null || [[ ! -w "$file" ]]; then
        warn "cannot write $file: later shells will not see the template's variables"
        return 0
    fi
    local -A present=()
    while IFS= read -r line || [[ -n "$line" ]]; do
        [[ -n "$line" ]] && present["$line"]=1
    done <"$file"
    while IFS= read -r name; do
        # Names with an underscore, as the original's filter kept: the template's variables
        # (MODEL_LOG, CONTAINER_ID, ...), not PATH, HOME or the shell's own.
        [[ "$name" == *_* && "$name" != "_" ]] || continue
        line="$name=${!name}"
        [[ "$line" != *$'\n'* ]] || continue
        [[ -z "${present["$line"]:-}" ]] || continue
        if ! printf '%s\n' "$line" >>"$file"; then
            warn "cannot write $file: later shells will not see all of the template's variables"
            return 0
        fi
        present["$line"]=1
        added=$((added + 1))
    done < <(compgen -e)
    say "environment: $added new line(s) appended to $file"
}

# -- the previous worker and the model log -------------------------------------------------------

running_worker() {
    # The PID in the PID file, if that process still runs and is a worker. After a reboot the
    # number may belong to anything else: only a process running pyworker counts.
    local pid cmdline
    [[ -f "$PID_FILE" ]] || return 1
    pid="$(<"$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    is_running "$pid" || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *"-m pyworker"* ]] || return 1
    printf '%s\n' "$pid"
}

is_running() {
    # kill -0 also succeeds on a zombie (a child that exited but was not waited for): read the
    # state from /proc instead.
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat="${stat##*) }"
    [[ "${stat%% *}" != [ZX] ]]
}

rotate_model_log() {
    # Lines from before a reboot must not be read as the new model server's (an old "ready"
    # line would make the worker serve a model that is still loading), so they go to
    # MODEL_LOG.old. Done first thing, before the install, so that a model server started
    # alongside this script has as little as possible of its new log moved away. But when a
    # worker of ours still runs, this is a restart, not a boot: the log then belongs to the
    # running model server, and moving its lines away would leave the new worker waiting for
    # a "ready" line that was already written.
    if [[ -n "$PREVIOUS_PID" ]]; then
        say "a worker is running (pid $PREVIOUS_PID): a restart, so $MODEL_LOG stays as it is"
    elif [[ -s "$MODEL_LOG" ]]; then
        cat -- "$MODEL_LOG" >>"$MODEL_LOG.old"
        : >"$MODEL_LOG"
        say "moved the lines of $MODEL_LOG to $MODEL_LOG.old"
    fi
}

# -- the code ------------------------------------------------------------------------------------

git_quiet() {
    # Never wait for a password prompt: a template has no one to answer it.
    GIT_TERMINAL_PROMPT=0 git -C "$SOURCE_DIR" "$@"
}

find_source() {
    local dir=""
    if [[ -n "$SCRIPT_PATH" && -f "$SCRIPT_PATH" ]]; then
        dir="$(cd -- "$(dirname -- "$SCRIPT_PATH")" && pwd -P)"
    fi
    if [[ -n "$dir" && -f "$dir/pyproject.toml" ]]; then
        SOURCE_DIR="$dir"
        say "code: the checkout this script is in, $SOURCE_DIR"
        return 0
    fi
    SOURCE_DIR="$SERVER_DIR"
    if [[ -f "$SOURCE_DIR/pyproject.toml" ]]; then
        say "code: $SOURCE_DIR, cloned before"
        return 0
    fi
    [[ -n "$PYWORKER_REPO" ]] ||
        refuse "no checkout beside this script and none in $SERVER_DIR: set PYWORKER_REPO to pyworker's git URL (and PYWORKER_REF to a branch, tag or commit)"
    command -v git >/dev/null || refuse "git is needed to clone $PYWORKER_REPO: install it"
    if [[ -e "$SOURCE_DIR" ]]; then
        # Something else is in the way (another project's checkout, an interrupted clone):
        # keep it, out of the way.
        local aside
        aside="$SOURCE_DIR.moved-$(date +%Y%m%d%H%M%S)"
        warn "$SOURCE_DIR is not a pyworker checkout: moving it to $aside"
        mv -- "$SOURCE_DIR" "$aside"
    fi
    say "cloning $PYWORKER_REPO at $PYWORKER_REF into $SOURCE_DIR"
    # Into a temporary name first: an interrupted clone must not pass for a checkout next time.
    local partial="$SOURCE_DIR.partial"
    rm -rf -- "$partial"
    GIT_TERMINAL_PROMPT=0 git clone --quiet -- "$PYWORKER_REPO" "$partial" ||
        fail "cannot clone $PYWORKER_REPO (see above)"
    GIT_TERMINAL_PROMPT=0 git -C "$partial" -c advice.detachedHead=false checkout --quiet "$PYWORKER_REF" ||
        fail "$PYWORKER_REPO has no branch, tag or commit '$PYWORKER_REF' (PYWORKER_REF)"
    mv -- "$partial" "$SOURCE_DIR"
}

update_source() {
    # POST /pyworker/update asked for the newest code: fetch PYWORKER_REF and fast-forward to
    # it. Only a fast-forward: local commits or changes are never thrown away; if they are in
    # the way, the code stays as it is (and is reinstalled all the same).
    local before after
    if ! command -v git >/dev/null; then
        warn "update: git is not installed: reinstalling the code as it is"
        return 0
    fi
    if ! before="$(git_quiet rev-parse --verify --quiet HEAD 2>/dev/null)"; then
        warn "update: $SOURCE_DIR is not a git checkout: reinstalling the code as it is"
        return 0
    fi
    if ! git_quiet remote get-url origin >/dev/null 2>&1; then
        warn "update: $SOURCE_DIR has no origin remote: reinstalling the code as it is"
        return 0
    fi
    if ! git_quiet fetch --quiet origin "$PYWORKER_REF"; then
        warn "update: cannot fetch '$PYWORKER_REF' from origin: keeping ${before:0:12}"
        return 0
    fi
    # The commit, not FETCH_HEAD itself: merging an annotated tag never fast-forwards.
    if ! git_quiet merge --ff-only --quiet "$(git_quiet rev-parse 'FETCH_HEAD^{commit}')"; then
        warn "update: cannot fast-forward to origin's '$PYWORKER_REF' (local commits or changes?): keeping ${before:0:12}"
        return 0
    fi
    after="$(git_quiet rev-parse HEAD)"
    if [[ "$before" == "$after" ]]; then
        say "update: already at origin's '$PYWORKER_REF' (${after:0:12})"
    else
        say "update: ${before:0:12} -> ${after:0:12}"
    fi
}

# -- the venv ------------------------------------------------------------------------------------

recent_enough() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

find_python() {
    local candidate
    local -a candidates=(python3 python3.14 python3.13 python3.12 python3.11)
    [[ -z "$PYWORKER_PYTHON" ]] || candidates=("$PYWORKER_PYTHON")
    for candidate in "${candidates[@]}"; do
        if command -v -- "$candidate" >/dev/null && recent_enough "$candidate"; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    if [[ -n "$PYWORKER_PYTHON" ]]; then
        refuse "PYWORKER_PYTHON '$PYWORKER_PYTHON' is not a Python 3.11 or newer"
    fi
    refuse "no Python 3.11 or newer found (tried ${candidates[*]}): install one, or set PYWORKER_PYTHON to its path"
}

make_venv() {
    if [[ -e "$ENV_PATH" ]] && ! recent_enough "$ENV_PATH/bin/python"; then
        # Its Python was removed or upgraded underneath it, or it was made by an older
        # worker for an older Python: it cannot be repaired, only made anew.
        warn "the venv $ENV_PATH does not run Python 3.11 or newer: making it anew"
        rm -rf -- "$ENV_PATH"
    fi
    [[ -e "$ENV_PATH" ]] && return 0
    local python
    python="$(find_python)" || exit
    say "creating the venv $ENV_PATH with $python ($("$python" -c 'import sys; print(sys.version.split()[0])'))"
    if ! "$python" -m venv "$ENV_PATH"; then
        rm -rf -- "$ENV_PATH"
        fail "cannot create a venv with $python: on Debian or Ubuntu, install its venv package (apt-get install python3-venv, or python3.X-venv)"
    fi
}

install_stamp() {
    # What decides whether the installed worker is current: the code's commit, its
    # pyproject.toml (dependencies, entry points), where it is and the venv's Python. The
    # install is editable, so other changes to the code need no reinstall.
    local commit="none"
    if command -v git >/dev/null; then
        commit="$(git_quiet rev-parse --verify --quiet HEAD 2>/dev/null)" || commit="none"
    fi
    printf 'source %s\ncommit %s\npip-args %s\n' "$(cd -- "$SOURCE_DIR" && pwd -P)" "$commit" \
        "$PYWORKER_PIP_ARGS"
    "$ENV_PATH/bin/python" - "$SOURCE_DIR/pyproject.toml" <<'PY'
import hashlib
import sys

with open(sys.argv[1], "rb") as file:
    print("pyproject", hashlib.sha256(file.read()).hexdigest())
print("python", sys.version.split()[0], sys.executable)
PY
}

install_worker() {
    local wanted
    wanted="$(install_stamp)"
    if ! $UPDATE_REQUESTED && [[ -f "$STAMP_FILE" && "$(<"$STAMP_FILE")" == "$wanted" ]]; then
        say "pyworker is installed and unchanged ($(sed -n 's/^commit //p' <<<"$wanted" | cut -c1-12)): no install"
        return 0
    fi
    # No stamp while installing: an install that fails half-way must not pass for a current one.
    rm -f -- "$STAMP_FILE"
    if ! "$ENV_PATH/bin/python" -m pip --version >/dev/null 2>&1; then
        fail "the venv $ENV_PATH has no pip: remove it and run this script again"
    fi
    local -a pip_args=()
    read -r -a pip_args <<<"$PYWORKER_PIP_ARGS"
    say "installing pyworker from $SOURCE_DIR into $ENV_PATH"
    # Editable: the venv runs the checkout's code, so a pulled commit is what runs next.
    "$ENV_PATH/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
        ${pip_args[@]+"${pip_args[@]}"} --editable "$SOURCE_DIR" ||
        fail "installing pyworker failed (pip's messages are above, and in $DEBUG_LOG)"
    printf '%s\n' "$wanted" >"$STAMP_FILE.tmp"
    mv -f -- "$STAMP_FILE.tmp" "$STAMP_FILE"
    say "pyworker installed"
}

check_backend() {
    # The worker's own judgement, in its own words: the name (or an alias of one), and the
    # backend's settings in the environment. Before anything is stopped or started, so that a
    # mistake leaves a running worker alone.
    local problem status=0
    problem="$("$ENV_PATH/bin/python" - "$BACKEND" 2>&1 <<'PY'
import os
import sys

from pyworker import UnknownBackendError, load_backend

try:
    load_backend(sys.argv[1], dict(os.environ))
except (UnknownBackendError, ValueError) as exc:
    print(exc)
    sys.exit(2)
PY
)" || status=$?
    case "$status" in
        0) ;;
        2) refuse "BACKEND: $problem" ;;
        *) fail "the installed worker does not run (status $status): $(tail -n 1 <<<"$problem")" ;;
    esac
}

# -- TLS -----------------------------------------------------------------------------------------

key_matches_certificate() {
    # The certificate is a valid one for this very key, and has not expired.
    local from_certificate from_key
    from_certificate="$(openssl x509 -in "$1" -noout -pubkey 2>/dev/null)" || return 1
    from_key="$(openssl pkey -in "$2" -pubout 2>/dev/null)" || return 1
    [[ -n "$from_key" && "$from_certificate" == "$from_key" ]] &&
        openssl x509 -in "$1" -noout -checkend 0 >/dev/null 2>&1
}

place_file() {
    # Copy next to the destination, then rename: a reader never sees half a file. Made
    # owner-only and opened up after, so that a key is never readable by others, even briefly.
    local source="$1" destination="$2" mode="$3"
    mkdir -p -- "$(dirname -- "$destination")"
    rm -f -- "$destination.tmp"
    (
        umask 077
        cp -- "$source" "$destination.tmp"
    )
    chmod "$mode" -- "$destination.tmp"
    mv -f -- "$destination.tmp" "$destination"
}

make_certificate() {
    # As the original: a new key and a request for IP 0.0.0.0, signed by Vast's console for
    # this instance. The new pair replaces the old one only once the console has signed it, so
    # a console that is down leaves a still valid pair in place.
    command -v openssl >/dev/null || refuse "USE_SSL is true but openssl is not installed: install it, or set USE_SSL=false"
    command -v curl >/dev/null || refuse "USE_SSL is true but curl is not installed: install it, or set USE_SSL=false"
    local dir url attempt error="PYWORKER_SIGN_CERT_ATTEMPTS is 0"
    dir="$(mktemp -d)"
    TEMPORARY+=("$dir")
    cat >"$dir/openssl-san.cnf" <<'EOF'
[req]
default_bits       = 2048
distinguished_name = req_distinguished_name
req_extensions     = v3_req

[req_distinguished_name]

[v3_req]
basicConstraints = CA:FALSE
keyUsage         = nonRepudiation, digitalSignature, keyEncipherment
subjectAltName   = IP:0.0.0.0
EOF
    (
        umask 077
        openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/C=US/ST=CA/CN=pyworker.vast.ai" \
            -keyout "$dir/instance.key" -out "$dir/instance.csr" \
            -config "$dir/openssl-san.cnf" 2>"$dir/openssl.err"
    ) || fail "openssl cannot make a key and certificate request: $(tr '\n' ' ' <"$dir/openssl.err")"
    url="$PYWORKER_SIGN_CERT_URL?instance_id=${CONTAINER_ID:-}"
    for ((attempt = 1; attempt <= PYWORKER_SIGN_CERT_ATTEMPTS; attempt++)); do
        if curl -fsS --max-time 30 -H 'Content-Type: application/octet-stream' \
            --data-binary "@$dir/instance.csr" -o "$dir/instance.crt" "$url" 2>"$dir/curl.err"; then
            if key_matches_certificate "$dir/instance.crt" "$dir/instance.key"; then
                place_file "$dir/instance.key" "$PYWORKER_SSL_KEYFILE" 600
                place_file "$dir/instance.crt" "$PYWORKER_SSL_CERTFILE" 644
                say "TLS: certificate signed by $PYWORKER_SIGN_CERT_URL, in $PYWORKER_SSL_CERTFILE"
                return 0
            fi
            error="the answer is not a valid certificate for the key"
        else
            error="$(tr '\n' ' ' <"$dir/curl.err")"
        fi
        warn "TLS: attempt $attempt to have the certificate signed failed: $error"
        if ((attempt < PYWORKER_SIGN_CERT_ATTEMPTS)); then
            sleep 2
        fi
    done
    if key_matches_certificate "$PYWORKER_SSL_CERTFILE" "$PYWORKER_SSL_KEYFILE"; then
        warn "TLS: keeping the certificate already in $PYWORKER_SSL_CERTFILE, still valid"
        return 0
    fi
    fail "USE_SSL is true but no certificate could be had from $url: $error"
}

# -- the worker ----------------------------------------------------------------------------------

stop_previous_worker() {
    local pid waited=0
    pid="$(running_worker)" || return 0
    say "stopping the previous worker (pid $pid): it finishes its requests first"
    kill -TERM "$pid" 2>/dev/null || return 0
    while is_running "$pid"; do
        if ((waited >= PYWORKER_STOP_TIMEOUT * 5)); then
            warn "the previous worker (pid $pid) is still running after ${PYWORKER_STOP_TIMEOUT}s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
}

launch_worker() {
    export BACKEND MODEL_LOG REPORT_ADDR WORKER_PORT USE_SSL PYWORKER_UPDATE_FLAG_FILE \
        PYWORKER_SSL_CERTFILE PYWORKER_SSL_KEYFILE
    local offset=0 pid status=0 waited=0 output reason
    [[ ! -f "$PYWORKER_LOG" ]] || offset="$(wc -c <"$PYWORKER_LOG")"
    local -a detach=()
    # In a session of its own, so that a terminal that closes (a manual run over SSH) sends it
    # no SIGHUP, which the worker takes as a request to stop. setsid does not fork here (a
    # background child is no process group leader), so $! is the worker's own PID.
    command -v setsid >/dev/null && detach=(setsid)
    say "launching the worker: python -m pyworker (backend $BACKEND, port $WORKER_PORT)"
    # Its output goes to pyworker.log only, and it keeps none of this script's descriptors
    # (the lock, debug.log's pipes): they would outlive the script.
    ${detach[@]+"${detach[@]}"} "$ENV_PATH/bin/python" -m pyworker \
        </dev/null >>"$PYWORKER_LOG" 2>&1 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$PID_FILE.tmp"
    mv -f -- "$PID_FILE.tmp" "$PID_FILE"
    # Wait until it listens, or exits: a worker that refuses its configuration says why in one
    # line, which is better shown here than found later in pyworker.log.
    while :; do
        output="$(tail -c "+$((offset + 1))" -- "$PYWORKER_LOG" 2>/dev/null || true)"
        [[ "$output" != *" listening on "* ]] || break
        if ! is_running "$pid"; then
            wait "$pid" || status=$?
            reason="$(grep -v '^[[:space:]]*$' <<<"$output" | tail -n 1 || true)"
            if ((status == 2)); then
                refuse "the worker refused to start: ${reason:-no reason given (see $PYWORKER_LOG)}"
            fi
            fail "the worker exited at once (status $status): ${reason:-see $PYWORKER_LOG}"
        fi
        if ((waited >= PYWORKER_START_TIMEOUT * 5)); then
            warn "the worker (pid $pid) does not listen after ${PYWORKER_START_TIMEOUT}s: leaving it starting (see $PYWORKER_LOG)"
            return 0
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
    reason="$(grep ' listening on ' <<<"$output" | tail -n 1 | sed 's/^.*: //')"
    say "the worker runs (pid $pid; its output in $PYWORKER_LOG): $reason"
}

# -- main ----------------------------------------------------------------------------------------

cleanup() {
    local dir
    for dir in ${TEMPORARY[@]+"${TEMPORARY[@]}"}; do
        rm -rf -- "$dir"
    done
}

# Everything runs inside main, called on the last line: bash has then read the whole script
# before any of it runs, so neither a command reading stdin (when the script is piped to bash)
# nor an update pulling a new version of this file can change what runs.
main() {
    TEMPORARY=()
    trap cleanup EXIT
    trap 'on_error "$?" "$LINENO" "$BASH_COMMAND"' ERR
    settings
    workspace
    # Everything printed also goes to debug.log; stdin is closed, so that no command can read
    # the rest of this script when it is piped to bash.
    exec > >(tee -a -- "$DEBUG_LOG") 2> >(tee -a -- "$DEBUG_LOG" >&2) </dev/null
    show_settings
    check_settings
    # One run at a time: two installs into one venv, or two workers on one port, go wrong.
    exec 9>"$LOCK_FILE"
    if command -v flock >/dev/null && ! flock -n 9; then
        fail "another start_server.sh is running in $WORKSPACE_DIR"
    fi

    append_environment
    PREVIOUS_PID="$(running_worker || true)"
    rotate_model_log

    find_source
    UPDATE_REQUESTED=false
    if [[ -e "$PYWORKER_UPDATE_FLAG_FILE" ]]; then
        UPDATE_REQUESTED=true
        say "update requested ($PYWORKER_UPDATE_FLAG_FILE, made by POST /pyworker/update)"
        update_source
    fi
    make_venv
    install_worker
    if $UPDATE_REQUESTED; then
        # Done with: the code was pulled (or could not be) and reinstalled. A flag left behind
        # would make every later boot reinstall.
        rm -f -- "$PYWORKER_UPDATE_FLAG_FILE" ||
            warn "cannot remove $PYWORKER_UPDATE_FLAG_FILE: the next start will update again"
    fi
    check_backend

    if is_true "$USE_SSL"; then
        make_certificate
    fi
    stop_previous_worker
    launch_worker
}

main "$@"
