"""The Triton side: model configs -> policies, the gRPC client, shared memory, the embedded tritonserver."""
