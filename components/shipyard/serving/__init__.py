"""TF Serving: the model config (model_server_config protos), label moves, the gRPC client."""
