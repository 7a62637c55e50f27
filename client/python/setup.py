"""Build hook: generates brainstem.v1 stubs from the repository's proto/ into the build tree.

The protos are looked up, in order, in $BRAINSTEM_PROTO_DIR, ./proto (an sdist carries a copy there)
and ../../proto (this package inside the brainstem repository). grpcio-tools writes `*_pb2.py`, their
`*_pb2.pyi` type stubs and `*_pb2_grpc.py`; nothing generated is checked in, so the stubs can never
drift from the protos they were built from.
"""

import glob
import importlib.metadata
import importlib.resources
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = os.path.dirname(os.path.abspath(__file__))


def proto_dir():
    candidates = [os.environ.get("BRAINSTEM_PROTO_DIR"), os.path.join(HERE, "proto"), os.path.join(HERE, "..", "..", "proto")]
    for candidate in candidates:
        if candidate and glob.glob(os.path.join(candidate, "brainstem", "v1", "*.proto")):
            return os.path.abspath(candidate)
    raise SystemExit(
        "brainstem-client: no brainstem/v1/*.proto found; build from the brainstem repository "
        "(pip install ./client/python) or set BRAINSTEM_PROTO_DIR"
    )


def generate(out_dir):
    import grpc_tools
    from grpc_tools import protoc

    root = proto_dir()
    protos = sorted(glob.glob(os.path.join(root, "brainstem", "v1", "*.proto")))
    well_known = str(importlib.resources.files(grpc_tools) / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"brainstem-client: protoc failed (exit {rc}) on {root}")
    # Type checkers need the marker inside the generated package too.
    open(os.path.join(out_dir, "brainstem", "v1", "py.typed"), "w").close()


class BuildPy(build_py):
    def run(self):
        super().run()
        generate(self.build_lib)


class Sdist(sdist):
    """An sdist carries the protos it was cut from, so it builds away from the repository."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        src = os.path.join(proto_dir(), "brainstem", "v1")
        shutil.copytree(src, os.path.join(base_dir, "proto", "brainstem", "v1"), dirs_exist_ok=True)


def floor(dist):
    """`dist>=X.Y` for the version installed in the build environment (what generated the stubs)."""
    major, minor = importlib.metadata.version(dist).split(".")[:2]
    return f"{dist}>={major}.{minor}"


setup(
    cmdclass={"build_py": BuildPy, "sdist": Sdist},
    install_requires=[
        # grpcio-tools X.Y writes stubs that check for grpcio >= X.Y at import.
        floor("grpcio-tools").replace("grpcio-tools", "grpcio"),
        floor("protobuf"),
        # google.rpc.Status / BadRequest / RetryInfo, the error details the daemon sends.
        "googleapis-common-protos>=1.56",
    ],
)
