"""gRPC servicers, validation and conversion between protobuf and the engine."""
