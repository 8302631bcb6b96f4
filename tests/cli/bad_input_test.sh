#!/usr/bin/env bash
# Bad input gets a one-line error that names the input and the problem, an exit code != 0, no crash, no hang.
# Usage: bad_input_test.sh KVLENS_BIN TINY_MODEL
set -u
bin=$1 model=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0

# expect NAME EXPECTED_SUBSTRING -- ARGS...
expect() {
    local name=$1 want=$2
    shift 3
    timeout 120 "$bin" "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    local lines
    lines=$(wc -l <"$tmp/err")
    if [ "$rc" -eq 0 ] || [ "$rc" -ge 124 ]; then
        echo "FAIL $name: exit code $rc (want 1..123: an error, not success, a crash or a timeout)"
        fails=$((fails + 1))
    elif [ "$lines" -ne 1 ]; then
        echo "FAIL $name: stderr has $lines lines, want 1:"; cat "$tmp/err"
        fails=$((fails + 1))
    elif ! grep -qF -- "$want" "$tmp/err"; then
        echo "FAIL $name: stderr lacks '$want':"; cat "$tmp/err"
        fails=$((fails + 1))
    else
        echo "ok   $name: $(cat "$tmp/err")"
    fi
}

head -c 2000 "$model" >"$tmp/truncated-header.gguf"
size=$(stat -c %s "$model")
head -c $((size * 2 / 3)) "$model" >"$tmp/truncated-data.gguf"
echo "this is not a model" >"$tmp/not-a-model.gguf"
long=$(for i in $(seq 1 400); do printf 'word%d ' "$i"; done)

expect missing-file "file not found" -- generate -m "$tmp/nope.gguf" -p hi
expect directory "is a directory" -- generate -m "$tmp" -p hi
expect truncated-header "$tmp/truncated-header.gguf" -- generate -m "$tmp/truncated-header.gguf" -p hi
expect truncated-data "truncated" -- generate -m "$tmp/truncated-data.gguf" -p hi
expect not-gguf "not a GGUF file" -- generate -m "$tmp/not-a-model.gguf" -p hi
expect prompt-too-long "do not fit the context" -- generate -m "$model" --ctx 64 -p "$long"
expect dump-too-long "do not fit the context" -- dump -m "$model" --ctx 64 -p "$long" -o "$tmp/x.npz"
expect unknown-template "unknown" -- generate -m "$model" --template nosuch -p hi
expect think-on-chatml "thinking" -- generate -m "$model" --template chatml --think on -p hi
expect bad-think "--think" -- generate -m "$model" --think maybe -p hi
expect temp-range "--temp" -- generate -m "$model" --temp -1 -p hi
expect ctx-range "--ctx" -- generate -m "$model" --ctx 0 -p hi
expect top-p-range "--top-p" -- generate -m "$model" --top-p 2 -p hi
expect max-tokens-range "--max-tokens" -- generate -m "$model" -n 0 -p hi
expect flash-attn-value "--flash-attn" -- generate -m "$model" --flash-attn maybe -p hi
expect pos-agg-value "--pos-agg" -- generate -m "$model" --pos-agg avg -p hi --features "$tmp/f.jsonl"
expect layers-range "--layers" -- generate -m "$model" --layers 99 -p hi --features "$tmp/f.jsonl"
expect token-id-range "--tokens" -- dump -m "$model" --tokens 1,999999999 -o "$tmp/x.npz"
expect token-id-syntax "--tokens" -- dump -m "$model" --tokens 1,abc -o "$tmp/x.npz"
expect unwritable-out "$tmp/no/such/dir/x.npz" -- dump -m "$model" --tokens 1,2 -o "$tmp/no/such/dir/x.npz"
expect unknown-flag "--nosuch" -- generate -m "$model" -p hi --nosuch
expect coe-layers-range "--coe-layers: layers: layer 7 out of range" -- generate -m "$model" -p hi --scores "$tmp/s.jsonl" --coe-layers 7
expect coe-layers-syntax "--coe-layers" -- generate -m "$model" -p hi --scores "$tmp/s.jsonl" --coe-layers last4
expect coe-kv-part "--coe-kv-part" -- generate -m "$model" -p hi --scores "$tmp/s.jsonl" --coe-kv-part kv
expect coe-positions "--coe-positions: positions: bad value 'prompt'" -- generate -m "$model" -p hi --scores "$tmp/s.jsonl" --coe-positions prompt
expect coe-head-agg "--coe-head-agg" -- eval coe -m "$model" --dataset arith --limit 1 -o "$tmp/e" --coe-head-agg sum
expect scores-unwritable "--scores '$tmp/no/such/dir/s.jsonl'" -- generate -m "$model" -p hi -n 2 --scores "$tmp/no/such/dir/s.jsonl"
expect decode-from-range "--decode-from: 9 is more than the 2 tokens" -- dump -m "$model" --tokens 1,2 --decode-from 9 -o "$tmp/x.npz"
expect batch-invariant-fa-off "--batch-invariant: needs flash attention" -- generate -m "$model" -p hi -n 2 --batch-invariant --flash-attn off

[ -e "$tmp/x.npz" ] && { echo "FAIL: a failed dump left a file behind"; fails=$((fails + 1)); }
# And --version answers (exit 0, one line naming the version).
v=$("$bin" --version) && [[ "$v" =~ ^kvlens\ [0-9]+\.[0-9]+\.[0-9]+$ ]] && echo "ok   version: $v" || { echo "FAIL version: '$v'"; fails=$((fails + 1)); }
echo "$fails failure(s)"
[ "$fails" -eq 0 ]
