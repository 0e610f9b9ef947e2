#!/usr/bin/env bash
# Regenerate the committed protobuf/gRPC modules from src/fedcare/transport/proto/fedcare.proto.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m grpc_tools.protoc -I src --python_out=src --pyi_out=src --grpc_python_out=src \
    src/fedcare/transport/proto/fedcare.proto
