#!/usr/bin/env bash
# The paper's protocol, one command per data set, for users who have the data (and a GPU):
#
#   benchmarks/paper.sh mvtec /data/mvtec_ad [--preset fast] [--out runs/paper]
#   benchmarks/paper.sh visa /data/visa_pytorch
#   benchmarks/paper.sh cifar10 /data/cifar-10-batches-py      # the four UniAD 5-vs-5 splits
#
# One unified model for all classes (reference preset: ConvNeXtV2-B via timm when installed,
# 384 px, 60 epochs; --preset fast: EfficientNet-Lite0, 256 px), then `vqflow test`, then the
# paper's table form beside the published figures. Last-epoch figures only: no epoch, threshold
# or hyperparameter is chosen on test labels. Extra arguments go to `vqflow fit`
# (e.g. --device cuda:1, --epochs 10, --set train.batch_size=16).
set -euo pipefail

usage() { echo "usage: benchmarks/paper.sh mvtec|visa|cifar10 PATH [--preset fast|reference] [--out DIR] [fit options]" >&2; exit 2; }
[ $# -ge 2 ] || usage
dataset=$1; data=$2; shift 2
case "$dataset" in mvtec|visa|cifar10) ;; *) usage ;; esac
[ -e "$data" ] || { echo "error: $data does not exist; give the $dataset folder" >&2; exit 2; }

preset=reference; out=runs/paper; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) preset=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done

here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python}

run_one() {  # run_one FOLDER FIT-OPTIONS...
  local folder=$1; shift
  if [ ! -f "$folder/checkpoints/final.pt" ]; then
    local resume=()
    [ -f "$folder/checkpoints/last.pt" ] && resume=(--resume)
    "$python" -m vqflow fit "$@" --preset "$preset" --out "$folder" "${resume[@]}" "${extra[@]}"
  fi
  "$python" -m vqflow test --run "$folder"
}

if [ "$dataset" = cifar10 ]; then
  runs=()
  for normal in 0,1,2,3,4 5,6,7,8,9 0,2,4,6,8 1,3,5,7,9; do
    folder="$out/cifar10_${preset}_${normal//,/}"
    run_one "$folder" --data "cifar10:$data" --normal "$normal"
    runs+=("$folder")
  done
  "$python" "$here/paper_table.py" cifar10 "${runs[@]}"
else
  folder="$out/${dataset}_${preset}"
  run_one "$folder" --data "$dataset:$data" --classes all
  "$python" "$here/paper_table.py" "$dataset" "$folder"
fi
