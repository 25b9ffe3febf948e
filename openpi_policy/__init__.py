"""Policy-side library: transforms shared by the Triton python models and the in-process reference,
the pi0-shaped reference policy and its ONNX export."""
