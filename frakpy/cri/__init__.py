"""Kubelet-facing CRI edge: the gRPC servicers, the proto and a small client."""
