#!/usr/bin/env bash
# Builds libshmring (shared and static) and installs it with its headers, a pkg-config file and
# a CMake package:
#
#   ffi/install.sh [PREFIX]              (default: /usr/local)
#   ffi/install.sh ~/.local && export PKG_CONFIG_PATH=~/.local/lib/pkgconfig
#   cc app.c $(pkg-config --cflags --libs shmring)
#
# --no-build --lib-dir DIR installs the libraries already built in DIR instead of running
# `cargo build --release -p shmring-ffi` (the tests use it). Needs `strip` (binutils) and
# `patchelf`, which gives the installed library its SONAME.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
lib_dir=target/release
prefix=/usr/local
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --lib-dir) lib_dir=$2; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
        *) prefix=$1 ;;
    esac
    shift
done

for tool in strip:binutils patchelf:patchelf; do
    command -v "${tool%%:*}" >/dev/null || {
        echo "install.sh: ${tool%%:*} is missing: install the ${tool#*:} package" \
            "(apt-get install ${tool#*:}, dnf install ${tool#*:})" >&2
        exit 1
    }
done
if [ "$build" = 1 ]; then
    cargo build --release -p shmring-ffi
fi
for f in libshmring.so libshmring.a; do
    [ -f "$lib_dir/$f" ] || { echo "install.sh: $lib_dir/$f is missing (build it first)" >&2; exit 1; }
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# The SONAME names the major version: a program linked against it (NEEDED libshmring.so.0)
# runs with any later library of that major version. The library in target/ has none, so that
# programs linked there in place find it by its file name.
soname=libshmring.so.${version%%.*}
real=libshmring.so.$version
# What a program linking libshmring.a needs besides it: rustc --print native-static-libs says
# "-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc". The unwinder (libgcc_s) is left out: the
# compiler driver links it by itself, libgcc_s when linking dynamically and libgcc_eh with
# -static, where naming -lgcc_s fails ("cannot find -lgcc_s").
native_libs="-lutil -lrt -lpthread -lm -ldl -lc"

install -d "$prefix/lib/pkgconfig" "$prefix/lib/cmake/shmring" "$prefix/include"
# Stripped and named in a scratch directory next to the destination, then moved into place, so
# that a program running with the old library keeps its (unlinked) file.
stage=$(mktemp -d "$prefix/lib/.shmring-install.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cp "$lib_dir/libshmring.so" "$stage/$real"
strip --strip-unneeded "$stage/$real"
patchelf --set-soname "$soname" "$stage/$real"
chmod 0755 "$stage/$real"
cp "$lib_dir/libshmring.a" "$stage/libshmring.a"
strip --strip-debug "$stage/libshmring.a"
chmod 0644 "$stage/libshmring.a"
mv -f "$stage/$real" "$stage/libshmring.a" "$prefix/lib/"
ln -sfn "$real" "$prefix/lib/$soname"
ln -sfn "$soname" "$prefix/lib/libshmring.so"

install -m 0644 include/shmring.h include/shmring.hpp "$prefix/include/"
subst=(-e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" -e "s|@NATIVE_LIBS@|$native_libs|"
    -e "s|@SONAME@|$soname|" -e "s|@REAL@|$real|")
sed "${subst[@]}" ffi/shmring.pc.in > "$prefix/lib/pkgconfig/shmring.pc"
for f in shmringConfig.cmake shmringConfigVersion.cmake; do
    sed "${subst[@]}" "ffi/cmake/$f.in" > "$prefix/lib/cmake/shmring/$f"
done
echo "installed libshmring $version in $prefix"
echo "use: PKG_CONFIG_PATH=$prefix/lib/pkgconfig cc app.c \$(pkg-config --cflags --libs shmring)"
echo " or: find_package(shmring) in CMake, with -DCMAKE_PREFIX_PATH=$prefix"
