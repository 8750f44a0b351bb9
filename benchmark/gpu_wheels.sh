#!/usr/bin/env bash
# Wheels for a machine without a package registry that has its own jax (the lent GPU machines: Python 3.12, jax
# 0.11 with CUDA 13, flax, optax, chex, orbax-checkpoint, numpy, scipy, matplotlib, pillow): the packages of
# benchmark/gpu_wheels.txt at requirements.txt's pins, downloaded here, on a machine with PyPI. About 11 MiB.
#
#   bash benchmark/gpu_wheels.sh              # into benchmark/wheels/ (git ignores it), for CPython 3.12, Linux x86_64
#   bash benchmark/gpu_wheels.sh DIR          # into DIR
#   GPU_WHEELS_PYTHON=3.11 bash benchmark/gpu_wheels.sh DIR   # for another Python (dm-tree is the one compiled wheel)
#   bash benchmark/gpu_wheels.sh --list       # print NAME==VERSION, one a line, and download nothing
#
# Then, on that machine: `bash benchmark/gpu_check.sh OUT` installs them with `pip install --no-index --no-deps
# --target` and checks every one's requirements against what is importable there (docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
pyver="${GPU_WHEELS_PYTHON:-3.12}"

# NAME==VERSION for each name of gpu_wheels.txt, the version pinned in requirements.txt (names compared as pip does).
mapfile -t pins < <("$python" - <<'EOF'
import re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
pins = {}
for line in open("requirements.txt"):
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.split("#", 1)[0].strip())
    if match:
        pins[norm(match.group(1))] = match.group(2)
for line in open("benchmark/gpu_wheels.txt"):
    name = line.split("#", 1)[0].strip()
    if not name:
        continue
    if norm(name) not in pins:
        sys.exit(f"gpu_wheels: {name} (benchmark/gpu_wheels.txt) has no exact pin in requirements.txt")
    print(f"{norm(name)}=={pins[norm(name)]}")
EOF
)
if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${pins[@]}"
  exit 0
fi
dir="${1:-benchmark/wheels}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# One wheel per package and nothing else (--no-deps): two versions of one package in the folder would stop the
# whole offline install, so the folder is replaced, not added to.
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$tmp/wheels" "${pins[@]}" 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
count=$(find "$tmp/wheels" -name '*.whl' | wc -l)
if [ "$count" -ne "${#pins[@]}" ]; then
  echo "gpu_wheels: got $count wheels for ${#pins[@]} packages" >&2
  exit 1
fi
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
mv "$tmp/wheels" "$dir"
echo "gpu_wheels: $count wheels for CPython $pyver in $dir, $(du -sh "$dir" | cut -f1) ($(du -sb "$dir" | cut -f1) bytes)"
