#!/usr/bin/env bash
# Runs on a GPU host without Node: unpacks what scripts/device-pack.sh made, finds libcufile (the
# nvidia-cufile wheel puts it under site-packages), then runs the command given, e.g.
#   bash scripts/device-run.sh npm run test:gpu
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p /tmp/kvtier-node
[[ -x /tmp/kvtier-node/node ]] || { xz -dc .device/node.xz >/tmp/kvtier-node/node && chmod +x /tmp/kvtier-node/node; }
[[ -d node_modules ]] || xz -dc .device/kvtier.tar.xz | tar -xf -
export PATH="/tmp/kvtier-node:$PATH"
if [[ -z "${KVTIER_CUFILE_PATH:-}" ]]; then
  found=$(find / -xdev -name 'libcufile.so.0' -not -path '*/proc/*' 2>/dev/null | head -1 || true)
  [[ -n "$found" ]] && export KVTIER_CUFILE_PATH="$found"
fi
# cuFile classifies a file's block device through udev's database; a VM without udev (the
# Firecracker GPU hosts) has none, and cuFileHandleRegister then fails (cuFile error 5027, "unable
# to get volume attributes"). Write the two properties cuFile reads for the disk under /tmp, once.
dev=$(mountpoint -d "$(findmnt -no TARGET -T /tmp)" 2>/dev/null || true)
fstype=$(findmnt -no FSTYPE -T /tmp 2>/dev/null || true)
if [[ -n "$dev" && ! -e "/run/udev/data/b$dev" && "${KVTIER_NO_UDEV_SHIM:-}" != 1 ]]; then
  mkdir -p /run/udev/data
  printf 'E:ID_FS_USAGE=filesystem\nE:ID_FS_TYPE=%s\n' "$fstype" >"/run/udev/data/b$dev"
  echo "wrote /run/udev/data/b$dev (ID_FS_TYPE=$fstype) for cuFile"
  export KVTIER_UDEV_SHIM="scripts/device-run.sh wrote /run/udev/data/b$dev (ID_FS_USAGE=filesystem, ID_FS_TYPE=$fstype): this VM has no udev database, without which cuFileHandleRegister fails"
fi
echo "node $(node --version); KVTIER_CUFILE_PATH=${KVTIER_CUFILE_PATH:-unset}"
"$@"
