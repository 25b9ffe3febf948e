"""LeRobot robots (LeRobot's async-inference `RobotClient`, gRPC) served beside the websocket front: wire (the
`transport.AsyncInference` service without lerobot's generated code), unpickle (the restricted reader of the
client's pickles), replies (the pickled `TimedAction` lists), features (which served policy a client gets and
how its robot's raw dict becomes that policy's observation), robots (per-client state), access (the network
allow-list) and server (the grpc.aio endpoint)."""
