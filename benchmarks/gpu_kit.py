"""The GPU host kit: what a GPU host with Python 3.12, torch+CUDA, numpy, grpcio and msgpack, and no network,
needs beside this checkout to run `make gpu-bench`, as one archive under 64 MiB (build/gpu-kit.tar.xz).

    make gpu-kit     here: python -m benchmarks.gpu_kit build   (the dev venv and the package index)
    make gpu-bench   on the GPU host: python3 -m benchmarks.gpu_kit run -- [benchmarks.gpu_fleet flags]

The archive holds
  tritonserver/   the nvidia-pytriton wheel's tritonserver as installed here, laid out as `--tritonserver`
                  expects: bin/tritonserver, lib/ (the wheel's bundled libraries, libtritonserver and
                  libcudart 12 among them, without the libpython 3.13 only the 3.13 stub uses),
                  backends/python, python_backend_stubs/3.12, caches/local
  site-packages/  what the front, the load generator, the reference server, Triton's python models and the
                  plots import beyond what the host has, unpacked from cp312 wheels of the versions
                  installed here (tritonclient's without perf_analyzer)
  kit.json        what is inside, and for which Python

`install` needs only this module and the standard library: it unpacks the archive into .gpu-host/, and makes
a virtual environment on the host's Python that sees the host's packages (torch), the kit's and the
checkout, with neither pip nor network. `run` installs when needed, then runs benchmarks.gpu_fleet in it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import site as site_module
import struct
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = ROOT / "build" / "gpu-kit.tar.xz"
HOST_DIR = ROOT / ".gpu-host"
MAX_BYTES = 64 * 2**20
PYTHON = "3.12"  # the GPU host's; `build --python 3.11` makes a kit this machine can rehearse with
# The wheel's tritonserver needs glibc 2.35, so the host has it: wheels for it or any older glibc run there
# (pip takes only the platform tags it is given, so every one of them is listed).
GLIBC_MINOR = 35
PLATFORMS = (*(f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MINOR, 16, -1)),
             "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")
# What the GPU host has; never carried.
HOST_PACKAGES = ("numpy", "grpcio", "msgpack", "torch")
# What the GPU run imports (with the extras it uses), beyond HOST_PACKAGES; their dependencies follow.
ROOTS = ("starlette", "uvicorn", "websockets", "prometheus-client", "tritonclient[grpc]", "pillow",
         "openpi-client", "openpi-server", "typing-extensions", "matplotlib")
# Dependencies declared but not imported on the GPU run: openpi-client's dm-tree (its action-chunk broker
# only) and what dm-tree pulls in.
NOT_CARRIED = ("dm-tree", "absl-py", "attrs", "wrapt")
# Libraries every Linux host has, or the host's Python brings (the 3.12 stub links its libpython).
SYSTEM_LIBRARIES = re.compile(r"^(libc|libm|libdl|libpthread|librt|libresolv|libgcc_s|libstdc\+\+|libz|ld-linux-"
                              r"x86-64|libpython3\.12)\.so")


# --- both sides ---

def needed_libraries(path: Path) -> list[str]:
    """The DT_NEEDED entries of a 64-bit little-endian ELF file (what `readelf -d` lists as NEEDED)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
    shoff, shentsize, shnum = struct.unpack_from("<Q", data, 0x28)[0], *struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    needed = []
    for _, kind, _, _, offset, size, link, *_ in sections:
        if kind != 6:  # SHT_DYNAMIC
            continue
        strings = sections[link][4]
        for entry in range(offset, offset + size, 16):
            tag, value = struct.unpack_from("<qQ", data, entry)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", strings + value)
                needed.append(data[strings + value:end].decode())
    return needed


# --- here: the build ---

def tritonserver_files(install_root: Path, python: str = PYTHON) -> dict[str, Path]:
    """Archive path -> file, for the wheel's tritonserver at `install_root` (pytriton/tritonserver), with
    the python-backend stub of `python`."""
    root = Path(install_root)
    libs = root.parent.parent / "nvidia_pytriton.libs"
    files = {"tritonserver/bin/tritonserver": root / "bin" / "tritonserver",
             f"tritonserver/python_backend_stubs/{python}/triton_python_backend_stub":
                 root / "python_backend_stubs" / python / "triton_python_backend_stub",
             "tritonserver/caches/local/libtritoncache_local.so": root / "caches" / "local" / "libtritoncache_local.so"}
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        files[f"tritonserver/backends/python/{name}"] = root / "backends" / "python" / name
    for library in sorted(libs.iterdir()):
        if not library.name.startswith("libpython3"):
            files[f"tritonserver/lib/{library.name}"] = library
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"the nvidia-pytriton wheel lacks {missing}")
    return files


def unresolved_libraries(files: dict[str, Path]) -> dict[str, list[str]]:
    """Libraries a kit ELF file needs that neither the kit's lib/ nor every host has: should be empty."""
    carried = {Path(name).name for name in files if name.startswith("tritonserver/lib/")}
    unresolved = {}
    for name, path in files.items():
        if path.suffix == ".py":
            continue
        missing = [lib for lib in needed_libraries(path) if lib not in carried and not SYSTEM_LIBRARIES.match(lib)]
        if missing:
            unresolved[name] = missing
    return unresolved


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def carried_packages(roots: Iterable[str] = ROOTS, python: str = PYTHON) -> dict[str, str]:
    """Distribution -> version (as installed here) of what the kit carries: the roots and their dependencies
    on CPython `python` on Linux, without HOST_PACKAGES and NOT_CARRIED."""
    from importlib import metadata

    from packaging.requirements import Requirement

    environment = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    skip = {_canonical(name) for name in (*HOST_PACKAGES, *NOT_CARRIED)}
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(root) for root in roots]
    while todo:
        requirement = todo.pop()
        name = _canonical(requirement.name)
        if name in skip or (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        distribution = metadata.distribution(name)
        found[name] = distribution.version
        for text in distribution.requires or []:
            dependency = Requirement(text)
            extras = ("", *requirement.extras)
            if dependency.marker is None or any(dependency.marker.evaluate({**environment, "extra": e})
                                                for e in extras):
                todo.append(dependency)
    return dict(sorted(found.items()))


def download_wheels(packages: dict[str, str], cache: Path, python: str = PYTHON) -> list[Path]:
    """Each package's wheel for CPython `python` on Linux x86_64, into the empty directory `cache` (pip's own
    HTTP cache keeps a second build from downloading again)."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python, "--implementation", "cp",
               *(option for platform in PLATFORMS for option in ("--platform", platform)),
               "--dest", str(cache), *(f"{name}=={version}" for name, version in packages.items())]
    subprocess.run(command, check=True)
    wheels = []
    for name, version in packages.items():
        pattern = re.compile(rf"^{name.replace('-', '[-_.]')}-{re.escape(version)}-.*\.whl$", re.I)
        matches = [wheel for wheel in cache.iterdir() if pattern.match(wheel.name)]
        if len(matches) != 1:
            raise FileNotFoundError(f"expected one wheel of {name} {version} in {cache}, found {matches}")
        wheels.append(matches[0])
    return wheels


def wheel_members(wheel: zipfile.ZipFile) -> Iterable[tuple[str, zipfile.ZipInfo]]:
    """(path under site-packages, member) for what an install puts in site-packages: purelib/platlib data
    moved to the top; scripts (perf_analyzer), headers and data files left out."""
    for member in wheel.infolist():
        if member.is_dir():
            continue
        parts = member.filename.split("/")
        if parts[0].endswith(".data"):
            if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                continue
            parts = parts[2:]
        yield "/".join(parts), member


def build(output: Path = ARCHIVE, python: str = PYTHON, preset: int = 9) -> dict[str, Any]:
    """Write the archive for CPython `python`; returns its manifest (kit.json). Fails when it would not be
    carried (64 MiB)."""
    from openpi_triton.triton.embedded import find_triton

    output = Path(output)
    files = tritonserver_files(find_triton().root, python)
    unresolved = unresolved_libraries(files)
    if unresolved:
        raise RuntimeError(f"kit files need libraries neither carried nor on every host: {unresolved}")
    packages = carried_packages(python=python)
    manifest = {"python": python, "platform": PLATFORMS[0], "packages": packages, "host_packages": list(HOST_PACKAGES),
                "tritonserver": sorted(files), "built_by": f"Python {sys.version.split()[0]}"}
    with tempfile.TemporaryDirectory(prefix="gpu-kit-wheels-") as cache:
        return _write(output, files, download_wheels(packages, Path(cache), python), manifest, preset)


def _write(output: Path, files: dict[str, Path], wheels: list[Path], manifest: dict[str, Any],
           preset: int) -> dict[str, Any]:
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with tarfile.open(partial, "w:xz", preset=preset) as tar:
        for name, path in files.items():
            tar.add(path, name)
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                for name, member in wheel_members(archive):
                    info = tarfile.TarInfo(f"site-packages/{name}")
                    info.size, info.mode = member.file_size, 0o644
                    with archive.open(member) as data:
                        tar.addfile(info, data)
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo("kit.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    size = partial.stat().st_size
    if size >= MAX_BYTES:
        partial.unlink()
        raise RuntimeError(f"the kit is {size / 2**20:.1f} MiB; a GPU host takes 64 MiB")
    partial.replace(output)
    return {**manifest, "bytes": size}


# --- on the GPU host: the install, standard library only ---

def _digest(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _libpython_present(version: str) -> bool:
    """The python-backend stub links libpython<version>.so.1.0: in this Python's LIBDIR (embedded.py puts
    that on LD_LIBRARY_PATH) or where the dynamic linker looks."""
    name = f"libpython{version}.so.1.0"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if (Path(libdir) / name).exists():
        return True
    try:
        listed = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return name in listed


def install(archive: Path = ARCHIVE, into: Path = HOST_DIR) -> Path:
    """Unpack the kit into `into`/kit and make `into`/venv; returns the venv's python. Idempotent: an
    archive already installed is not unpacked again."""
    archive, into = Path(archive).resolve(), Path(into).resolve()
    if not archive.is_file():
        raise SystemExit(f"{archive} is missing: build it with `make gpu-kit` where the package index is "
                         "reachable and carry it here")
    venv_python = into / "venv" / "bin" / "python"
    stamp = into / "installed.json"
    digest = _digest(archive)
    if stamp.is_file() and json.loads(stamp.read_text()).get("sha256") == digest and venv_python.exists():
        return venv_python
    kit = into / "kit"
    shutil.rmtree(kit, ignore_errors=True)
    kit.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(kit, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    manifest = json.loads((kit / "kit.json").read_text())
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if running != manifest["python"]:
        raise SystemExit(f"the kit is for Python {manifest['python']} (its packages and python-backend stub); "
                         f"this is Python {running}: run it with python{manifest['python']}")
    if not _libpython_present(manifest["python"]):
        print(f"warning: libpython{manifest['python']}.so.1.0 not found (LIBDIR {sysconfig.get_config_var('LIBDIR')}); "
              "Triton's python-backend stub needs it: install this Python's shared library", file=sys.stderr)
    shutil.rmtree(into / "venv", ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(into / "venv")],
                   check=True)
    site = subprocess.run([str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The kit's packages first (its versions win over older ones the host may have), the checkout, then
    # this interpreter's own site-packages: when the host's torch lives in a virtual environment, a venv
    # made from it sees only the base interpreter's.
    lines = [str(kit / "site-packages"), str(ROOT), *site_module.getsitepackages()]
    Path(site, "openpi_gpu_kit.pth").write_text("\n".join(lines) + "\n")
    stamp.write_text(json.dumps({"sha256": digest, "archive": str(archive), "python": manifest["python"]}))
    return venv_python


def run(archive: Path, into: Path, fleet_args: list[str]) -> None:
    """Install when needed, then benchmarks.gpu_fleet in the kit's environment, on the kit's tritonserver."""
    python = install(archive, into)
    command = [str(python), "-m", "benchmarks.gpu_fleet", "--tritonserver",
               str(Path(into).resolve() / "kit" / "tritonserver"), *fleet_args]
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    os.chdir(ROOT)
    os.execv(command[0], command)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser = sub.add_parser("build", help="build the archive (here: the dev venv and the package index)")
    build_parser.add_argument("--output", type=Path, default=ARCHIVE)
    build_parser.add_argument("--python", default=PYTHON, help="the GPU host's Python (MAJOR.MINOR)")
    for name, text in (("install", "unpack the kit and make its venv (on the GPU host)"),
                       ("run", "install when needed, then benchmarks.gpu_fleet (arguments after --)")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--archive", type=Path, default=ARCHIVE)
        command.add_argument("--into", type=Path, default=HOST_DIR)
        if name == "run":
            command.add_argument("fleet_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "build":
        manifest = build(args.output, args.python)
        print(f"{args.output}: {manifest['bytes'] / 2**20:.1f} MiB, {len(manifest['packages'])} packages: "
              + ", ".join(f"{name} {version}" for name, version in manifest["packages"].items()))
    elif args.command == "install":
        print(install(args.archive, args.into))
    else:
        run(args.archive, args.into, [a for a in args.fleet_args if a != "--"])


if __name__ == "__main__":
    main()
