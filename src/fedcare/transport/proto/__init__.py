"""Generated protobuf/gRPC modules of the wire protocol (regenerate with ``make proto``)."""
