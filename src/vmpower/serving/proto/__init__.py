"""Generated gRPC code of power_estimation.proto (see the .proto for how to regenerate)."""
