#!/usr/bin/env bash
# Installs what lowrank needs to build and test on Debian 12 (run as root, or with sudo
# available), then configures and builds a Release tree in build/.
#
# Usage: bash scripts/setup.sh
#   LOWRANK_SKIP_BUILD=1   only install packages
#   LOWRANK_BUILD_DIR=DIR  build somewhere other than build/
# Idempotent: packages already present are not downloaded again and the build is incremental.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${LOWRANK_BUILD_DIR:-$ROOT/build}"
JOBS="${LOWRANK_JOBS:-2}"

log() { echo "setup: $*" >&2; }

SUDO=""
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { log "error: run as root (or install sudo)"; exit 1; }
  SUDO="sudo"
fi

# Build: compilers and build tools. Libraries: BLAS, JSON, command line, regex, tests, PNG.
# clang + libclang-rt-14-dev + libomp-dev: libFuzzer/ASan/UBSan builds (fuzz/) with OpenMP.
# python3: seed generators and dev/ scripts; nodejs/npm: model and data downloads (npm registry).
PACKAGES=(
  cmake ninja-build g++ pkg-config make git ca-certificates xz-utils
  libopenblas-dev nlohmann-json3-dev libcli11-dev libpcre2-dev libgtest-dev
  clang libclang-rt-14-dev libomp-dev
  python3
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js may come from another source than Debian (its npm is then bundled): only install
# Debian's nodejs/npm when the commands are absent, so an existing Node.js is not replaced.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  log "all packages present"
fi

if [[ "${LOWRANK_SKIP_BUILD:-0}" == 1 ]]; then
  exit 0
fi

log "configuring $BUILD_DIR (Release)"
cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
log "building with $JOBS jobs"
cmake --build "$BUILD_DIR" -j"$JOBS"
log "done: $BUILD_DIR/lowrank"
