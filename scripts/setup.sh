#!/usr/bin/env bash
# Install everything migconform needs on a Debian bookworm machine, idempotently:
#   - QEMU 7.2 from bookworm (system package),
#   - QEMU 10.0 from bookworm-backports, unpacked beside it into the project's cache
#     (it must not replace 7.2: both versions are needed for cross-version tests); the
#     pinned package version, or the newest 10.0.x the archive lists once it has moved on
#     (scripts/qemu10_version.sh),
#   - chromium (headless: tests/test_matrix.py renders `matrix --html` reports in it and
#     checks what a browser shows; nothing else uses it),
#   - redis-server (tests share a fuzzing corpus through it on loopback),
#   - openssh-server (the 2-host pytest-xdist test starts an sshd of its own on loopback;
#     the package's service itself is not used),
#   - a virtualenv (.venv) with migconform and its test dependencies,
#   - the Linux guest (--guest linux): Debian's kernel package and busybox-static, unpacked
#     under the cache's linux-guest/tree, and the initramfs built from them by
#     conformance/qemu/linux_guest.py.
# Downloads are cached under ${MIGCONFORM_CACHE:-~/.cache/migconform}.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${MIGCONFORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/migconform}
qemu10_version=${MIGCONFORM_QEMU10_DEB:-1:10.0.2+ds-2+deb13u1~bpo12+1}
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo

log() { printf 'setup: %s\n' "$*" >&2; }

# every package, and why it is here (said when it is installed)
declare -A why=(
  [qemu-system-x86]="QEMU 7.2, the system's"
  [qemu-utils]="QEMU's tools (qemu-img) beside the system QEMU"
  [python3-venv]="the .venv"
  [zstd]="to compress captures by hand: check and dump read .zst"
  [xz-utils]="to compress captures by hand: check and dump read .xz"
  [chromium]="headless, renders matrix --html reports in tests/test_matrix.py"
  [redis-server]="the shared fuzzing corpus test, on loopback"
  [openssh-server]="the two-host pytest-xdist test's own sshd, on loopback"
)
need_pkgs=()
for p in qemu-system-x86 qemu-utils python3-venv zstd xz-utils chromium redis-server openssh-server; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done

backports=/etc/apt/sources.list.d/migconform-bookworm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "enabling bookworm-backports (priority stays below bookworm: 7.2 is kept)"
  $sudo tee "$backports" >/dev/null <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

q10="$cache/qemu-10.0"
if [ ${#need_pkgs[@]} -gt 0 ] || [ ! -x "$q10/tree/usr/bin/qemu-system-x86_64" ]; then
  log "apt-get update"
  $sudo apt-get update -qq
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  for p in "${need_pkgs[@]}"; do log "installing $p (${why[$p]})"; done
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if [ ! -x "$q10/tree/usr/bin/qemu-system-x86_64" ]; then
  qemu10_version=$("$here/scripts/qemu10_version.sh" "$qemu10_version")
  log "fetching QEMU $qemu10_version from bookworm-backports into $q10"
  mkdir -p "$q10/debs"
  rm -rf "$q10/tree.tmp"
  (cd "$q10/debs" && for pkg in qemu-system-x86 qemu-system-common qemu-system-data; do
     ls "${pkg}_"*.deb >/dev/null 2>&1 || apt-get download -qq -o APT::Sandbox::User=root "$pkg=$qemu10_version"
   done)
  for deb in "$q10"/debs/*.deb; do dpkg -x "$deb" "$q10/tree.tmp"; done
  mv "$q10/tree.tmp" "$q10/tree"
fi

if [ ! -x "$here/.venv/bin/python" ]; then
  log "creating .venv"
  python3 -m venv "$here/.venv"
fi
stamp="$here/.venv/.migconform-installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  log "installing Python dependencies"
  "$here/.venv/bin/pip" install -q --upgrade pip
  "$here/.venv/bin/pip" install -q -e "$here[dev]"
  touch "$stamp"
fi
lg="$cache/linux-guest"
if [ ! -d "$lg/tree/lib/modules" ] || [ ! -x "$lg/tree/bin/busybox" ]; then
  # the versioned package linux-image-amd64 depends on (linux-image-<abi>-amd64)
  kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$kpkg" ]; then
    log "apt-get update (for the Linux guest's kernel package)"
    $sudo apt-get update -qq
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  fi
  log "fetching $kpkg and busybox-static into $lg"
  mkdir -p "$lg/debs"
  rm -rf "$lg/tree.tmp"
  (cd "$lg/debs" && for pkg in "$kpkg" busybox-static; do
     ls "${pkg}_"*.deb >/dev/null 2>&1 || apt-get download -qq -o APT::Sandbox::User=root "$pkg"
   done)
  for deb in "$lg"/debs/"$kpkg"_*.deb "$lg"/debs/busybox-static_*.deb; do dpkg -x "$deb" "$lg/tree.tmp"; done
  rm -rf "$lg/tree" "$lg/vmlinuz" "$lg/initrd.gz"
  mv "$lg/tree.tmp" "$lg/tree"
fi
MIGCONFORM_CACHE="$cache" "$here/.venv/bin/python" -m conformance.qemu.linux_guest "$lg" >&2

"$here/.venv/bin/migconform" qemu list >&2 || true
