#!/usr/bin/env bash
# Build QEMU's x86_64 system emulator from Debian's own source package with AddressSanitizer
# and UBSan, into the project cache, for fuzzing campaigns that want memory errors reported
# (conformance/qemu/fuzz_target.py reads sanitizer reports as crashes). Not part of the
# default set-up: it installs build dependencies and compiles for a long time (see README).
#
#   scripts/build_sanitized_qemu.sh 10.0     # or 7.2
#   MIGCONFORM_QEMU=10.0=<cache>/qemu-asan-10.0/tree/usr/bin/qemu-system-x86_64 \
#       .venv/bin/migconform fuzz --qemu 10.0 --findings DIR
#
# 10.0 is the bookworm-backports source (the same version scripts/setup.sh unpacks), 7.2
# bookworm's. The build is x86_64-softmmu only, modules built in; firmware comes from the
# matching packaged tree (the +ds source carries no prebuilt firmware). The +ds source also
# lacks QEMU's bundled Python wheels: configure runs under a Python of ours that has the meson
# the release asks for (pythondeps.toml) from PyPI.
set -euo pipefail

want=${1:?usage: $0 10.0|7.2}
cache=${MIGCONFORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/migconform}
qemu10_version=${MIGCONFORM_QEMU10_DEB:-1:10.0.2+ds-2+deb13u1~bpo12+1}
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
log() { printf 'build-sanitized: %s\n' "$*" >&2; }

case "$want" in
  10.0) suite=bookworm-backports; pkgver=$qemu10_version
        firmware="$cache/qemu-10.0/tree/usr/share/qemu"
        sanitizers=(--enable-asan --enable-ubsan) ;;
  7.2)  suite=bookworm  # the source version: the binary's without a binNMU suffix (+bN)
        pkgver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}' | sed 's/+b[0-9]*$//')
        firmware=/usr/share/qemu
        sanitizers=(--enable-sanitizers) ;;
  *) echo "build-sanitized: unknown version $want (7.2 or 10.0)" >&2; exit 2 ;;
esac
[ -d "$firmware" ] || { echo "build-sanitized: $firmware is missing: run scripts/setup.sh first" >&2; exit 2; }

out="$cache/qemu-asan-$want"
binary="$out/tree/usr/bin/qemu-system-x86_64"
if [ -x "$binary" ]; then
  log "already built: $binary"
  exit 0
fi

srcs=/etc/apt/sources.list.d/migconform-src.sources
if [ ! -f "$srcs" ]; then
  log "adding deb-src entries for bookworm and bookworm-backports"
  $sudo tee "$srcs" >/dev/null <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  $sudo apt-get update -qq
fi

log "installing build dependencies"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  build-essential ninja-build pkg-config flex bison meson python3-venv python3-distlib \
  libglib2.0-dev libpixman-1-dev libfdt-dev zlib1g-dev libaio-dev >/dev/null

mkdir -p "$out"
src=$(find "$out" -mindepth 1 -maxdepth 1 -type d -name 'qemu-*' | head -n1)
if [ -z "$src" ]; then
  log "fetching the source of qemu $pkgver ($suite)"
  if ! (cd "$out" && apt-get source -qq --only-source "qemu=$pkgver" >/dev/null 2>"$out/source.log"); then
    # some mirrors carry a backport's binaries and upstream tarball but not its Debian
    # packaging: build the upstream source of the same release then, and say so
    para=$(apt-cache showsrc qemu | awk -v v="$pkgver" 'BEGIN {RS=""} index($0, "\nVersion: " v "\n") {print; exit}')
    dir=$(awk '/^Directory:/ {print $2; exit}' <<<"$para")
    orig=$(awk '/orig\.tar/ {print $NF; exit}' <<<"$para")
    [ -n "$dir" ] && [ -n "$orig" ] || { echo "build-sanitized: no source for qemu $pkgver, see $out/source.log" >&2; exit 1; }
    log "Debian's packaging of $pkgver is not on the mirror: building its upstream tarball $orig"
    curl -fsS -o "$out/$orig" "http://deb.debian.org/debian/$dir/$orig"
    mkdir -p "$out/qemu-upstream" && tar -xf "$out/$orig" -C "$out/qemu-upstream" --strip-components=1
  fi
  src=$(find "$out" -mindepth 1 -maxdepth 1 -type d -name 'qemu-*' | head -n1)
fi

# the +ds tarball drops the compressed EDK2 images that pc-bios/meson.build unpacks for every
# x86/arm target; this build boots SeaBIOS only, so empty stand-ins let meson go on
for fd in $(grep -o "'edk2-[a-z0-9_-]*\.fd'" "$src/pc-bios/meson.build" 2>/dev/null | tr -d "'"); do
  [ -f "$src/pc-bios/$fd.bz2" ] || bzip2 -c </dev/null >"$src/pc-bios/$fd.bz2"
done

start=$(date +%s)
pyvenv="$out/python"
if [ ! -x "$pyvenv/bin/meson" ]; then
  # the packages of pythondeps.toml's [meson] group, each with the versions it accepts
  reqs=$(awk '/^\[/ {g = ($0 == "[meson]")} g && /accepted/ {
                match($0, /accepted = "[^"]*"/); print $1 substr($0, RSTART + 12, RLENGTH - 13)}' \
           "$src/pythondeps.toml" 2>/dev/null || true)
  log "a Python for configure with: ${reqs:-meson}"
  python3 -m venv "$pyvenv"
  # shellcheck disable=SC2086  # one requirement per word
  "$pyvenv/bin/pip" install -q ${reqs:-meson} 2>&1 | grep -v '^WARNING: Location' >&2 || true
  [ -x "$pyvenv/bin/meson" ] || { echo "build-sanitized: could not install meson into $pyvenv" >&2; exit 1; }
fi
log "configuring $src (x86_64-softmmu, ${sanitizers[*]})"
mkdir -p "$out/build"
(cd "$out/build" && "$src/configure" --python="$pyvenv/bin/python3" --target-list=x86_64-softmmu "${sanitizers[@]}" \
   --disable-werror --disable-docs --disable-modules --disable-user --disable-install-blobs \
   --enable-kvm --enable-tcg \
   >"$out/configure.log" 2>&1) || { echo "build-sanitized: configure failed, see $out/configure.log" >&2; exit 1; }
log "compiling (nice -n 10, $(nproc) jobs)"
nice -n 10 ninja -C "$out/build" -j "$(nproc)" qemu-system-x86_64 >"$out/build.log" 2>&1 \
  || { echo "build-sanitized: build failed, see $out/build.log" >&2; exit 1; }

mkdir -p "$out/tree/usr/bin" "$out/tree/usr/share"
cp "$out/build/qemu-system-x86_64" "$binary.tmp"
ln -sfn "$firmware" "$out/tree/usr/share/qemu"
# the option ROMs (efi-virtio.rom, …) come from Debian's ipxe-qemu, as for the packaged builds;
# conformance/qemu/binaries.py passes each of these folders with -L
[ -d /usr/share/seabios ] && ln -sfn /usr/share/seabios "$out/tree/usr/share/seabios"
if [ -d /usr/lib/ipxe/qemu ]; then
  mkdir -p "$out/tree/usr/lib/ipxe" && ln -sfn /usr/lib/ipxe/qemu "$out/tree/usr/lib/ipxe/qemu"
fi
mv "$binary.tmp" "$binary"
log "built $binary in $(( $(date +%s) - start )) s"
"$binary" --version | head -n1
