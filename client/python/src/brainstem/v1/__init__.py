"""Generated brainstem.v1 stubs (`*_pb2`, `*_pb2_grpc`), written here at build time from proto/."""
