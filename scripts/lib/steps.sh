# shellcheck shell=bash
# Sourced by the set-up scripts: `step NAME` prints a heading, and the time the previous step took.
STEP_NAME=""
STEP_START=$SECONDS
SETUP_START=$SECONDS
STEP_OUT="${STEP_OUT:-1}" # file descriptor the headings go to

step_done() {
    [ -n "$STEP_NAME" ] || return 0
    printf '== %s: done in %ds (%ds since the start)\n' "$STEP_NAME" $((SECONDS - STEP_START)) $((SECONDS - SETUP_START)) >&"$STEP_OUT"
    STEP_NAME=""
}

step() {
    step_done
    STEP_NAME="$*"
    STEP_START=$SECONDS
    printf '\n== %s\n' "$*" >&"$STEP_OUT"
}
