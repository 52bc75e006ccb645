"""The shmring package's build: bundles libshmring.so into the package, next to __init__.py.

The library bundled is $SHMRING_LIB if set, else ../target/release/libshmring.so (build it with
`cargo build --release -p shmring-ffi` first), stripped when `strip` is there; the wheel is then
tagged for this platform (py3-none-linux_<arch>). With neither, the package is pure Python and
finds the library when imported ($SHMRING_LIB, or the system's: ffi/install.sh). Everything else
is in pyproject.toml.
"""
import os
import pathlib
import shutil
import subprocess

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
NAME = "libshmring.so"


def library():
    """The libshmring.so to bundle, or None."""
    path = os.environ.get("SHMRING_LIB")
    if path:
        if not os.path.isfile(path):
            raise SystemExit(f"SHMRING_LIB={path} is not a file")
        return pathlib.Path(path)
    built = HERE.parent / "target" / "release" / NAME
    return built if built.is_file() else None


class BuildPy(build_py):
    def run(self):
        super().run()
        dest = pathlib.Path(self.build_lib) / "shmring" / NAME
        dest.unlink(missing_ok=True)  # never a copy left by an earlier build
        lib = library()
        if lib is None:
            print(f"shmring: no {NAME} to bundle (cargo build --release -p shmring-ffi, or "
                  "SHMRING_LIB): the package will look for one when imported")
            return
        shutil.copyfile(lib, dest)
        if shutil.which("strip"):
            subprocess.run(["strip", "--strip-unneeded", str(dest)], check=True)
        dest.chmod(0o755)
        print(f"shmring: bundled {lib}")


class PlatformDistribution(Distribution):
    def has_ext_modules(self):
        return library() is not None  # a bundled library is for this platform only


class BdistWheel(bdist_wheel):
    def get_tag(self):
        python, abi, plat = super().get_tag()
        # Any Python 3 on this platform: the package loads the library with ctypes.
        return (python, abi, plat) if self.root_is_pure else ("py3", "none", plat)


setup(distclass=PlatformDistribution, cmdclass={"build_py": BuildPy, "bdist_wheel": BdistWheel})
