#!/usr/bin/env bash
# Builds libshmring (shared and static) and installs it with its headers and a pkg-config file:
#
#   ffi/install.sh [PREFIX]              (default: /usr/local)
#   ffi/install.sh ~/.local && export PKG_CONFIG_PATH=~/.local/lib/pkgconfig
#   cc app.c $(pkg-config --cflags --libs shmring)
#
# --no-build --lib-dir DIR installs the libraries already built in DIR instead of running
# `cargo build --release -p shmring-ffi` (the tests use it).
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
lib_dir=target/release
prefix=/usr/local
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --lib-dir) lib_dir=$2; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
        *) prefix=$1 ;;
    esac
    shift
done

if [ "$build" = 1 ]; then
    cargo build --release -p shmring-ffi
fi
for f in libshmring.so libshmring.a; do
    [ -f "$lib_dir/$f" ] || { echo "install.sh: $lib_dir/$f is missing (build it first)" >&2; exit 1; }
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# What a program linking libshmring.a needs besides it (rustc --print native-static-libs).
native_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"

install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$lib_dir/libshmring.so" "$prefix/lib/"
install -m 0644 "$lib_dir/libshmring.a" "$prefix/lib/"
install -m 0644 include/shmring.h include/shmring.hpp "$prefix/include/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" -e "s|@NATIVE_LIBS@|$native_libs|" \
    ffi/shmring.pc.in > "$prefix/lib/pkgconfig/shmring.pc"
echo "installed libshmring $version in $prefix"
echo "use: PKG_CONFIG_PATH=$prefix/lib/pkgconfig cc app.c \$(pkg-config --cflags --libs shmring)"
