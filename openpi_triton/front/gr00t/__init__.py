"""GR00T clients (Isaac GR00T's ZeroMQ policy protocol) served beside the websocket front: codec (the wire
format), requests (get_action in both msgpack generations), server (the ROUTER socket)."""
