"""KServe V2 through NVIDIA's tritonclient. Run from the repository root while `make run` serves."""

import json
from pathlib import Path

import numpy as np
import tritonclient.http as triton  # type: ignore[import-untyped]

body = json.loads(Path("docs/examples/uncertainty.json").read_text())
pixels = np.array(body["instances"], dtype=np.float32)  # [2, 784]: the boot and the coat

client = triton.InferenceServerClient("127.0.0.1:8000")
print(client.is_server_ready(), client.is_model_ready("fashion-cnn"))
metadata = client.get_model_metadata("fashion-cnn")
print(metadata["versions"], metadata["inputs"])

images = triton.InferInput("images", [2, 784], "FP32")
images.set_data_from_numpy(pixels)  # sent as binary tensor data
outputs = [triton.InferRequestedOutput(n) for n in ("class_index", "votes", "mutual_information")]
result = client.infer(
    "fashion-cnn", [images], outputs=outputs, parameters={"mc_samples": 100, "seed": 0}
)
print(result.as_numpy("class_index"), result.as_numpy("mutual_information").round(4))
print(result.as_numpy("votes"))

eval_mode = client.infer("fashion-cnn", [images])  # no mc_samples: one pass, dropout off
print(eval_mode.as_numpy("probabilities")[0].max().round(4), eval_mode.as_numpy("class_index"))
