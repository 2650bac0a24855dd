#!/usr/bin/env bash
# A cron job that grows an xpkit library from an inbox of new logs, safely.
#
#   XPKIT_STORE=/srv/xp/lib.duckdb INBOX=/srv/xp/inbox LOG_DIR=/srv/xp/log xpkit-nightly.sh
#   # crontab:  15 2 * * *  /path/to/xpkit-nightly.sh
#
# - One run at a time: a second run while one holds the lock exits 75 (EX_TEMPFAIL, "try
#   again later") without touching anything.
# - Everything goes to a dated log file (stderr of every step, with timestamps); stdout stays
#   empty unless something failed, so cron mails only failures.
# - Idempotent: an inbox file is moved to done/ only after its ingest committed; rerunning
#   after a crash re-ingests it, and the store adds nothing it already has (episode ids are
#   content hashes; distill merges; index adds only what is new).
# - Exit codes: 0 done (bad records are quarantined beside the store and counted in the log),
#   1 a step failed (or, with STRICT=1, a record was rejected), 2 misconfigured, 75 locked.
set -uo pipefail

XPKIT=${XPKIT:-xpkit}
STORE=${XPKIT_STORE:-}
INBOX=${INBOX:-}
if [ -z "$STORE" ] || [ -z "$INBOX" ]; then
    echo "xpkit-nightly: set XPKIT_STORE (the library, e.g. /srv/xp/lib.duckdb) and INBOX" \
         "(the directory new logs arrive in)" >&2
    exit 2
fi
LOG_DIR=${LOG_DIR:-$(dirname "$STORE")/log}
METHOD=${METHOD:-exemplar}
STRICT=${STRICT:-0}

mkdir -p "$LOG_DIR" "$INBOX/done" || exit 2
LOG="$LOG_DIR/xpkit-$(date -u +%Y%m%d).log"
log() { printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$LOG"; }

exec 9>"$STORE.lock" || exit 2
if ! flock -n 9; then
    log "another run holds $STORE.lock; exiting 75"
    exit 75
fi

fail() {
    log "FAILED: $*"
    echo "xpkit-nightly: $* (see $LOG)" >&2
    exit 1
}

run() {  # run one xpkit step, its stderr into the log
    log "+ $XPKIT $*"
    "$XPKIT" "$@" 2>>"$LOG"
}

strict=()
[ "$STRICT" = 1 ] && strict=(--strict)

shopt -s nullglob
files=("$INBOX"/*.jsonl "$INBOX"/*.jsonl.gz "$INBOX"/*.json "$INBOX"/*.parquet)
log "start: ${#files[@]} new file(s) in $INBOX"
if [ ${#files[@]} -gt 0 ]; then
    run ingest "${files[@]}" --store "$STORE" "${strict[@]}" || fail "ingest"
    mv -- "${files[@]}" "$INBOX/done/" || fail "moving ingested files to $INBOX/done"
fi
run distill --store "$STORE" --method "$METHOD" "${strict[@]}" </dev/null || fail "distill"
run index --store "$STORE" </dev/null || fail "index"
log "done"
exit 0
