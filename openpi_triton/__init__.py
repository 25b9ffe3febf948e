"""openpi-triton: an OpenPI websocket policy server on NVIDIA Triton Inference Server.

The folders are the architecture, and imports point down this list (import-linter checks it):
`cli` (the command line) -> `front` (websocket server), `loadgen` (fleet load generator), `check`
(model repository checks) -> `triton` (model config -> Policy, gRPC client, shared memory, embedded
tritonserver) -> `config`, `process`, `example_observations`.
"""
