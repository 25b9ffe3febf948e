"""The websocket server robots talk to: codec, observations <-> tensors, the per-robot session, the app."""
