"""Build hook: the gRPC API's Python modules are generated from ``wasmtop/proto/**/*.proto`` at
build time with ``grpc_tools.protoc`` (``grpcio-tools`` is a build requirement), never committed.

Everything else about the distribution is in pyproject.toml. ``build_proto`` is a sub-command
of ``build`` (setuptools' protocol for generated files, PEP 660 included): for a wheel it writes
into ``build_lib`` after ``build_py`` has copied the sources; for an editable install
(``pip install -e``) into the source tree, where the editable finder imports them from (the
generated files are in .gitignore). A failure stops the install: a custom ``build_py`` would not
do, as an editable install turns its exceptions into a warning and installs without them.

One compiled module, ``wasmtop.probes._tracefast`` (``probes/_tracefast.c``, CPython C API, no
other dependency): the trace-context probe's ring-buffer decoding and the common request head's
parse, per request the costliest Python wasmtop ran. ``build_ext`` builds it (in place for an
editable install); the pure-Python code it replaces stays and is used when it is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import Command, Extension, setup
from setuptools.command.build import build
from setuptools.errors import ExecError

ROOT = Path(__file__).resolve().parent
# The import root of the protos: wasmtop/proto/wasmtop/v1/snapshots.proto is
# "wasmtop/v1/snapshots.proto" (the path its package wasmtop.v1 names, as grpcurl and buf expect)
# and becomes the module wasmtop.proto.wasmtop.v1.snapshots_pb2.
PROTO_ROOT = Path("wasmtop", "proto")
PROTO_PACKAGE = "wasmtop.proto"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def protos() -> list[Path]:
    """The .proto files, relative to the import root."""
    return sorted(p.relative_to(ROOT / PROTO_ROOT) for p in (ROOT / PROTO_ROOT).rglob("*.proto"))


def fix_imports(text: str, tops: set[str]) -> str:
    """protoc writes module paths from the import root (``from wasmtop.v1 import ..._pb2``);
    here they live under ``wasmtop.proto``. Also names the right module in the classes'
    ``__module__`` (``BuildTopDescriptorsAndMessages``)."""
    names = "|".join(sorted(map(re.escape, tops)))
    text = re.sub(rf"^(from|import) ({names})\b", rf"\1 {PROTO_PACKAGE}.\2", text, flags=re.M)
    return re.sub(
        rf"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')({names})\.",
        rf"\1{PROTO_PACKAGE}.\2.",
        text,
    )


class build_proto(Command):  # noqa: N801 - setuptools names commands this way
    description = (
        "generate the gRPC API's *_pb2.py, *_pb2.pyi and *_pb2_grpc.py (grpc_tools.protoc)"
    )
    user_options: list = []

    def initialize_options(self) -> None:
        self.build_lib: str | None = None
        self.editable_mode = False

    def finalize_options(self) -> None:
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def _generated(self, base: Path) -> list[Path]:
        return [
            base / PROTO_ROOT / p.parent / (p.stem + suffix)
            for p in protos()
            for suffix in SUFFIXES
        ]

    def get_source_files(self) -> list[str]:
        return [str(PROTO_ROOT / p) for p in protos()]

    def get_outputs(self) -> list[str]:
        return [str(p) for p in self._generated(Path(self.build_lib))]

    def get_output_mapping(self) -> dict[str, str]:
        if not self.editable_mode:
            return {}
        return dict(zip(self.get_outputs(), map(str, self._generated(ROOT))))

    def run(self) -> None:
        try:
            import grpc_tools
            from grpc_tools import protoc
        except ImportError as exc:
            raise ExecError(
                f"generating the gRPC modules needs grpcio-tools ({exc}); it is a build "
                "requirement, so only a build without isolation lacks it: pip install grpcio-tools"
            ) from None
        base = ROOT if self.editable_mode else Path(self.build_lib)
        out = base / PROTO_ROOT
        out.mkdir(parents=True, exist_ok=True)
        sources = protos()
        args = [
            "grpc_tools.protoc",
            f"--proto_path={ROOT / PROTO_ROOT}",
            f"--proto_path={Path(grpc_tools.__file__).parent / '_proto'}",  # well-known types
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *(str(ROOT / PROTO_ROOT / p) for p in sources),
        ]
        self.announce(f"generating gRPC modules in {out}", level=2)
        if protoc.main(args) != 0:
            raise ExecError(f"grpc_tools.protoc failed on {', '.join(map(str, sources))}")
        tops = {p.parts[0] for p in sources}
        for path in self._generated(base):
            path.write_text(fix_imports(path.read_text(), tops))


class build_with_proto(build):  # noqa: N801
    # After build_py: a wheel gets fresh modules even when the source tree holds older ones.
    sub_commands = [*build.sub_commands, ("build_proto", None)]


TRACEFAST = Extension(
    "wasmtop.probes._tracefast",
    sources=["probes/_tracefast.c"],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    # Without a C compiler or Python's headers the install goes on, and the pure-Python path
    # serves (the same answers, about twice the CPU per traced request).
    optional=True,
)

setup(
    cmdclass={"build": build_with_proto, "build_proto": build_proto},
    ext_modules=[TRACEFAST],
)
