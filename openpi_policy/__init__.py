"""Policy-side library: the preprocess shared by the Triton python models and the in-process reference,
the pi0-shaped reference policy, the serving wrapper that gives it the core's uint8 interface, and
their ONNX export."""
