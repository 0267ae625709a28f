#!/usr/bin/env bash
# Runs vpncrypt on a router-like CPU under qemu-user emulation, as root:
#   scripts/cross-test.sh ARCH          (ARCH: armhf mipsel s390x arm64)
# Builds (once, cached in .cross/ARCH) a Debian 12 chroot of that architecture,
# builds the native extension inside it with the chroot's own gcc and OpenSSL,
# runs the portable core tests there (AES-SIV vectors on both crypto paths,
# packet vectors, the engine over loopback, the socket-filter program), then
# real tunnels over UDP and TCP: the emulated vpncryptd in one network namespace, the host's
# native one in another; ping both ways and a hash-checked transfer.
# By hand, not in CI: a first run downloads ~150 MB and takes ~10-20 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH=${1:-}
case "$ARCH" in
    armhf|mipsel|s390x|arm64) ;;
    *) echo "usage: scripts/cross-test.sh armhf|mipsel|s390x|arm64" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "cross-test: needs root (chroot, network namespaces)" >&2; exit 1; }

ROOT=.cross/$ARCH
# What the chroot needs: a compiler and OpenSSL headers to build the extension
# natively, the reference crypto and pytest for the tests, ip/ping for the tunnel.
# python3-cffi-backend is named because debootstrap cannot resolve the virtual
# package python3-cryptography depends on.
INCLUDE=python3,python3-dev,python3-venv,python3-setuptools,gcc,libc6-dev,libssl-dev,\
python3-cffi-backend,python3-cryptography,python3-pytest,python3-hypothesis,\
iproute2,iputils-ping,ca-certificates

bootstrap() {
    [ -f "$ROOT/.vpncrypt-ready" ] && return
    for tool in debootstrap qemu-"${QEMU[$ARCH]}"-static update-binfmts; do
        command -v "$tool" >/dev/null || { echo "cross-test: $tool missing; run: apt-get install qemu-user-static binfmt-support debootstrap" >&2; exit 1; }
    done
    update-binfmts --enable >/dev/null 2>&1 || true
    echo "cross-test: building the $ARCH chroot in $ROOT (cached afterwards)"
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    debootstrap --arch="$ARCH" --variant=minbase --include="$INCLUDE" bookworm "$ROOT" \
        http://deb.debian.org/debian >".cross/$ARCH.debootstrap.log" 2>&1 \
        || { echo "cross-test: debootstrap failed; see .cross/$ARCH.debootstrap.log" >&2; exit 1; }
    touch "$ROOT/.vpncrypt-ready"
}

declare -A QEMU=([armhf]=arm [mipsel]=mipsel [s390x]=s390x [arm64]=aarch64)
bootstrap
[ "${2:-}" = "--bootstrap-only" ] && exit 0

# The host generates the C (the chroot's Debian 12 has only Cython 0.29); the chroot
# compiles it with its own gcc and OpenSSL headers, through setup.py as a package does.
[ -x .venv/bin/python ] || { echo "cross-test: run scripts/setup.sh first" >&2; exit 1; }
.venv/bin/python setup.py -q build_ext --inplace >/dev/null 2>&1 \
    || { echo "cross-test: the host build of vpncrypt/_fast.c failed" >&2; exit 1; }
mkdir -p .cross/wheels
# setup.py needs setuptools >= 77 and packaging >= 24.2 (Debian 12 has 66 and 23);
# docopt-ng for the CLIs, pyroute2 for the Linux interface set-up. All pure Python.
.venv/bin/python -m pip download -q -q --no-deps -d .cross/wheels 'setuptools>=77' 'packaging>=24.2' 'docopt-ng>=0.9' 'pyroute2>=0.7' >/dev/null

rm -rf "$ROOT/src" "$ROOT/wheels"
mkdir -p "$ROOT/src"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$ROOT/src"
cp vpncrypt/_fast.c "$ROOT/src/vpncrypt/"
cp -r .cross/wheels "$ROOT/wheels"

mounts=()
cleanup() {
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
for m in proc sys dev dev/pts run/netns; do
    mkdir -p "/$m" "$ROOT/$m"
    mount --bind "/$m" "$ROOT/$m" && mounts+=("$ROOT/$m")
done
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true

start=$(date +%s)
in_chroot() { chroot "$ROOT" /usr/bin/env -i PATH=/opt/vpn/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 CI="${CI:-}" "$@"; }
echo "cross-test: $ARCH: building the extension under emulation"
in_chroot /bin/sh -ec '
    [ -x /opt/vpn/bin/python ] || python3 -m venv --system-site-packages /opt/vpn
    /opt/vpn/bin/pip install -q --no-index --find-links /wheels "setuptools>=77" "packaging>=24.2" "docopt-ng>=0.9" "pyroute2>=0.7"
    cd /src && VPNCRYPT_OPT=-O2 python setup.py -q build_ext --inplace >/build.log 2>&1 \
        || { tail -20 /build.log; exit 1; }
    python -c "import sys, vpncrypt._fast as f; print(\"cross-test: native core\", f.openssl_version(), sys.byteorder + \"-endian\", 8 * __import__(\"struct\").calcsize(\"P\"), \"bit\")"
'
built=$(date +%s)
# The portable core: AES-SIV vectors and packet vectors on both crypto paths, the
# replay window and engine over loopback, the socket-filter program, the session core,
# and the TUN ioctl numbers against this architecture's own kernel headers.
CORE_TESTS=(tests/test_aead.py tests/test_engine.py tests/test_sockfilter.py tests/test_session.py
            "tests/test_tun_linux.py::test_tun_ioctl_numbers_match_this_kernel_header")
core_rc=0
tunnel_rc=0
set +e  # a failing part is counted, and the others still run
echo "cross-test: $ARCH: core tests"
[ "${CROSS_NO_CORE:-}" = 1 ] || in_chroot /bin/sh -c "cd /src && python -m pytest -q -p no:cacheprovider ${CORE_TESTS[*]}" \
    | tee ".cross/$ARCH.core.log" | tail -5
core_rc=${PIPESTATUS[0]}
tested=$(date +%s)
if [ "${CROSS_NO_TUNNEL:-}" != 1 ]; then
    echo "cross-test: $ARCH: real tunnels (UDP, then TCP), emulated server and native client"
    .venv/bin/python scripts/cross_tunnel.py "$ROOT" | tee ".cross/$ARCH.tunnel.log"
    tunnel_rc=${PIPESTATUS[0]}
fi
end=$(date +%s)
echo "cross-test: $ARCH: build $((built - start)) s, core tests $((tested - built)) s (rc $core_rc), tunnel $((end - tested)) s (rc $tunnel_rc)"
[ "$core_rc" = 0 ] && [ "$tunnel_rc" = 0 ]
