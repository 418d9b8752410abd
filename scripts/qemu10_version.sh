#!/usr/bin/env bash
# Which qemu-system-x86 10.0 package version scripts/setup.sh downloads: the pinned one ($1)
# while the archive still lists it, else the newest 10.0.x the archive lists (said on stderr:
# any 10.0.x is the 10.0 migconform models). Exit 1 with one line when it lists no 10.0.
# Reads `apt-cache madison` (after apt-get update).
set -euo pipefail

pinned=${1:?usage: qemu10_version.sh PINNED_VERSION}
listed=$(apt-cache madison qemu-system-x86 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}')
if grep -qxF -- "$pinned" <<<"$listed"; then
  printf '%s\n' "$pinned"
  exit 0
fi
# versions look like [EPOCH:]10.0.N+ds-R...: keep the 10.0 ones, newest first
newest=$(grep -E '^([0-9]+:)?10\.0([.+~-]|$)' <<<"$listed" | sort -V -r | head -n 1 || true)
if [ -n "$newest" ]; then
  printf 'setup: QEMU %s is no longer in the archive; using %s (the same 10.0 release line)\n' "$pinned" "$newest" >&2
  printf '%s\n' "$newest"
  exit 0
fi
printf 'setup: no QEMU 10.0 package in the archive (pinned %s; apt-cache madison qemu-system-x86 lists: %s); set MIGCONFORM_QEMU10_DEB to a listed 10.0 version, or point MIGCONFORM_QEMU at a 10.0 binary (10.0=PATH)\n' \
  "$pinned" "$(tr '\n' ' ' <<<"$listed" | sed 's/ *$//')" >&2
exit 1
