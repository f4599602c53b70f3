"""The KServe V2 Open Inference Protocol beside v1, under /v2: the routes (routes.py), what an
infer request asks for (infer.py) and its tensors, JSON or binary, both ways (tensors.py)."""
