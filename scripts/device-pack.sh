#!/usr/bin/env bash
# Packs what a GPU host without Node needs to run kvtier's GPU tests and benchmark: a Node binary
# and the built package (addon, dist, the node_modules the tests use). See docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device
[[ -s .device/node.xz ]] || xz -T2 -c "$(command -v node)" >.device/node.xz
# Formatters, linters, compilers and native build tools are not needed to run tests.
tar --exclude='node_modules/typescript' --exclude='node_modules/prettier' \
  --exclude='node_modules/eslint*' --exclude='node_modules/@eslint*' \
  --exclude='node_modules/@typescript-eslint' --exclude='node_modules/typescript-eslint' \
  --exclude='node_modules/node-gyp' --exclude='node_modules/cmake-js' \
  --exclude='node_modules/prebuildify' --exclude='node_modules/@types' \
  -cf - build/Release/kvtier.node dist node_modules | xz -T2 -3 >.device/kvtier.tar.xz
ls -l .device
