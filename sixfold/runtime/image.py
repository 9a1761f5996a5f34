"""`sixfold image build`: the container image, built without any registry.

Two layers, each reused when it exists:

1. the base image `sixfold-base:bookworm-<hash>`: a Debian root filesystem made by
   `debootstrap --variant=minbase` (Debian's packages are reachable where no image
   registry is), imported with `docker import`. The hash covers the package list, so a
   changed list makes a new base;
2. the project image `sixfold:<version>-<hash>` (also tagged `sixfold:latest`): the
   project and its dependencies as wheels built on this machine (`pip wheel`), installed
   into a virtualenv at /opt/sixfold in a container of the base image, committed. The
   hash covers the base and the project's source, so an unchanged tree builds nothing.

The `Dockerfile` at the top of the repository makes the same image where a registry is
available (`docker build -t sixfold:latest .`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import sixfold

Progress = Callable[[str], None]

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# what the nodes need: Python with venv (the wheels go into a virtualenv), and tools chaos
# and debugging use inside a container
BASE_PACKAGES = ("python3", "python3-venv", "iproute2", "procps", "iptables")
BASE_REPOSITORY = "sixfold-base"
IMAGE_REPOSITORY = "sixfold"
VENV = "/opt/sixfold"
IMAGE_PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SOURCE_LABEL = "org.sixfold.source-hash"
DEBOOTSTRAP_TIMEOUT_S = 900
WHEEL_TIMEOUT_S = 900
INSTALL_TIMEOUT_S = 600


class ImageError(Exception):
    """The image could not be built; the message says why and what to do."""


@dataclass
class BuildResult:
    image: str
    base_image: str
    base_built: bool
    image_built: bool
    elapsed_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def _quiet(_: str) -> None:
    pass


def project_root() -> Path:
    """The source tree this package was installed from (an editable install or a checkout)."""
    root = Path(sixfold.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():
        raise ImageError(f"no pyproject.toml next to {root / 'sixfold'}: `sixfold image build` needs a source "
                         "checkout (pip install -e .)")
    return root


def base_tag(packages: tuple[str, ...] = BASE_PACKAGES, suite: str = SUITE) -> str:
    digest = hashlib.sha256(" ".join((suite, *sorted(packages))).encode()).hexdigest()[:10]
    return f"{BASE_REPOSITORY}:{suite}-{digest}"


def source_hash(root: Path, base: str) -> str:
    """A hash of everything that goes into the project image: the base tag and the source files."""
    h = hashlib.sha256(base.encode())
    files = [root / "pyproject.toml", *sorted((root / "sixfold").rglob("*")), *sorted((root / "proto").rglob("*"))]
    for path in files:
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def image_tag(root: Path, base: str) -> str:
    return f"{IMAGE_REPOSITORY}:{sixfold.__version__}-{source_hash(root, base)}"


def docker_available() -> str | None:
    """None when the Docker engine answers, else why not (for messages and test skips)."""
    if shutil.which("docker") is None:
        return "the docker command is not installed (Debian: apt-get install docker.io)"
    try:
        run = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                             text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "`docker version` did not answer within 20 s"
    if run.returncode != 0:
        return f"the Docker engine does not answer ({run.stderr.strip()[:200]}); start dockerd"
    return None


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def _run(cmd: list[str], what: str, timeout_s: float, **kwargs) -> subprocess.CompletedProcess:
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kwargs)
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what} took longer than {timeout_s:.0f} s") from None
    except FileNotFoundError:
        raise ImageError(f"{what}: {cmd[0]} is not installed") from None
    if run.returncode != 0:
        tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-15:])
        raise ImageError(f"{what} failed (exit code {run.returncode}):\n{tail}")
    return run


def build_base(tag: str, progress: Progress, mirror: str = MIRROR) -> None:
    """debootstrap a minimal Debian with BASE_PACKAGES and `docker import` it as `tag`."""
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed (Debian: apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise ImageError("debootstrap needs root to build the base image; run `sixfold image build` as root "
                         "(or build with the Dockerfile where a registry is reachable)")
    with tempfile.TemporaryDirectory(prefix="sixfold-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        progress(f"debootstrap {SUITE} ({', '.join(BASE_PACKAGES)}) from {mirror}")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs),
              mirror], "debootstrap", DEBOOTSTRAP_TIMEOUT_S)
        shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        progress(f"docker import as {tag}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            _run(["docker", "import", "-c", "ENV LANG=C.UTF-8", "-", tag], "docker import", DEBOOTSTRAP_TIMEOUT_S,
                 stdin=tar.stdout)
        finally:
            tar.stdout.close()
            tar.wait()


def build_wheels(root: Path, wheel_dir: Path, progress: Progress) -> None:
    progress(f"pip wheel: the project and its dependencies from {root}")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet",
          "--disable-pip-version-check", "--wheel-dir", str(wheel_dir), str(root)], "pip wheel", WHEEL_TIMEOUT_S)


def install_project(base: str, tag: str, wheel_dir: Path, source: str, progress: Progress) -> None:
    """A container of the base installs the wheels into VENV; committed as `tag`."""
    container = f"sixfold-image-build-{os.getpid()}"
    progress(f"installing the wheels into {VENV} in a container of {base}")
    try:
        _run(["docker", "run", "--name", container, "--network", "none", "-v", f"{wheel_dir}:/wheels:ro", base,
              "sh", "-c", f"python3 -m venv {VENV} && {VENV}/bin/pip install --quiet --no-index "
                          f"--disable-pip-version-check --find-links /wheels sixfold && {VENV}/bin/sixfold --version"],
             "installing the wheels", INSTALL_TIMEOUT_S)
        progress(f"docker commit as {tag}")
        _run(["docker", "commit", "-c", f"ENV PATH={IMAGE_PATH}", "-c", "ENV PYTHONUNBUFFERED=1",
              "-c", f"LABEL {SOURCE_LABEL}={source}", "-c", "WORKDIR /", "-c", 'CMD ["sixfold", "--help"]',
              container, tag], "docker commit", 120)
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)


def build(progress: Progress = _quiet, rebuild_base: bool = False, mirror: str = MIRROR) -> BuildResult:
    """Builds what is missing; returns the image tag to run."""
    t0 = time.monotonic()
    reason = docker_available()
    if reason:
        raise ImageError(reason)
    root = project_root()
    base = base_tag()
    base_built = False
    if rebuild_base or not image_exists(base):
        build_base(base, progress, mirror)
        base_built = True
    else:
        progress(f"base image {base} exists: reused")
    tag = image_tag(root, base)
    image_built = False
    if base_built or not image_exists(tag):
        with tempfile.TemporaryDirectory(prefix="sixfold-wheels-") as tmp:
            build_wheels(root, Path(tmp), progress)
            install_project(base, tag, Path(tmp), tag.rsplit("-", 1)[1], progress)
        image_built = True
    else:
        progress(f"image {tag} is up to date with the source: reused")
    _run(["docker", "tag", tag, f"{IMAGE_REPOSITORY}:latest"], "docker tag", 60)
    if image_built:
        removed = remove_older_images(tag)
        if removed:
            progress(f"removed {len(removed)} image(s) of older source trees: {', '.join(removed)}")
    return BuildResult(tag, base, base_built, image_built, round(time.monotonic() - t0, 2))


def remove_older_images(keep: str) -> list[str]:
    """Project images of earlier source trees (each is a few hundred MB). Docker refuses to remove
    one a container still uses, and that one stays."""
    listed = subprocess.run(["docker", "images", IMAGE_REPOSITORY, "--filter", f"label={SOURCE_LABEL}",
                             "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True, timeout=60)
    removed = []
    for tag in listed.stdout.split():
        if tag not in (keep, f"{IMAGE_REPOSITORY}:latest", f"{IMAGE_REPOSITORY}:<none>"):
            if subprocess.run(["docker", "rmi", tag], capture_output=True, timeout=120).returncode == 0:
                removed.append(tag)
    return removed


def current_image() -> str | None:
    """The project image for this source tree, if it was built (None otherwise)."""
    try:
        tag = image_tag(project_root(), base_tag())
    except ImageError:
        return None
    return tag if image_exists(tag) else None
