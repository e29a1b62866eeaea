#!/usr/bin/env bash
# usage: packaging/stage-rootfs.sh [BINARY] [ROOTFS_DIR]   (the Containerfile reads the default dir)
#
# Stages everything the scopegate container image holds into ROOTFS_DIR (default
# target/container-rootfs), for the Containerfile at the repository root to COPY as is:
#
#   usr/local/bin/scopegate      the prebuilt binary (BINARY, default target/release/scopegate),
#                                debug info stripped when `strip` exists (STRIP=0 keeps it)
#   <lib paths from ldd>         the exact shared libraries the binary loads, at the paths the
#                                dynamic loader looks for them (symlinks resolved to files)
#   <the dynamic loader>         e.g. /lib64/ld-linux-x86-64.so.2, the binary's PT_INTERP
#   etc/passwd, etc/group        root and nonroot (65532), so tools show names
#   etc/scopegate/, var/lib/scopegate/, tmp/
#                                mount points (the chart mounts volumes there)
#
# Nothing is compiled and nothing is downloaded: the binary must already exist (`cargo build
# --release`). The image then runs on any Linux host whose kernel runs the binary; it carries
# its own glibc, so the host's libraries do not matter.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/scopegate}
ROOTFS=${2:-target/container-rootfs}

[ -x "$BIN" ] || { echo "stage-rootfs: $BIN is not an executable (build it first: cargo build --release)" >&2; exit 1; }
command -v ldd >/dev/null || { echo "stage-rootfs: ldd is missing" >&2; exit 1; }

rm -rf "$ROOTFS"
mkdir -p "$ROOTFS/usr/local/bin" "$ROOTFS/etc/scopegate" "$ROOTFS/var/lib/scopegate" "$ROOTFS/tmp"
chmod 1777 "$ROOTFS/tmp"

install -m 0755 "$BIN" "$ROOTFS/usr/local/bin/scopegate"
if [ "${STRIP:-1}" = 1 ] && command -v strip >/dev/null; then
    strip --strip-debug "$ROOTFS/usr/local/bin/scopegate"
fi

# The libraries and the loader, as ldd resolves them. Lines look like
#   libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)
#   /lib64/ld-linux-x86-64.so.2 (0x...)
#   linux-vdso.so.1 (0x...)            <- provided by the kernel, nothing to copy
ldd_out=$(ldd "$BIN") || { echo "stage-rootfs: ldd failed on $BIN (a static binary needs no libraries: set LIBS=none)" >&2; exit 1; }
if printf '%s\n' "$ldd_out" | grep -q 'not found'; then
    echo "stage-rootfs: unresolved libraries:" >&2
    printf '%s\n' "$ldd_out" | grep 'not found' >&2
    exit 1
fi
libs=$(printf '%s\n' "$ldd_out" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
for lib in $libs; do
    mkdir -p "$ROOTFS$(dirname "$lib")"
    # -L: copy the file a symlink (/lib64/ld-linux-x86-64.so.2 -> ...) points to, under the
    # name the binary asks for.
    cp -L "$lib" "$ROOTFS$lib"
    echo "stage-rootfs: $lib"
done

# Debian merges /lib into /usr/lib; the loader also searches /usr/lib/<triplet>. Keeping the
# ldd paths (/lib/..., /lib64/...) as real directories is enough for the loader.

cat > "$ROOTFS/etc/passwd" <<P
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
P
cat > "$ROOTFS/etc/group" <<G
root:x:0:
nonroot:x:65532:
G
chown -R 65532:65532 "$ROOTFS/var/lib/scopegate" 2>/dev/null || true
chmod 0700 "$ROOTFS/var/lib/scopegate"

echo "stage-rootfs: staged $BIN ($("$BIN" --version)) into $ROOTFS"
