#!/usr/bin/env bash
# Regenerates sixfold/rpc/*_pb2*.py from proto/. The generated files are
# committed so that `pip install -e .` needs no code generator; the test
# tests/test_proto_generated.py fails when they are out of date.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/sixfold/rpc/*.proto
