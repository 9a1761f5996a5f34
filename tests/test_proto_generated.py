"""The committed generated gRPC code matches proto/ (run scripts/gen_proto.sh after editing a .proto)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos],
        cwd=ROOT, check=True,
    )
    stale = []
    for generated in tmp_path.rglob("*.py*"):
        committed = ROOT / generated.relative_to(tmp_path)
        if not committed.exists() or committed.read_bytes() != generated.read_bytes():
            stale.append(str(committed.relative_to(ROOT)))
    assert not stale, f"regenerate with scripts/gen_proto.sh: {stale}"
