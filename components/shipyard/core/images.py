"""The TF Serving image shipyard renders, and the TensorFlow it runs. Pure.

One constant, so the manifests, the rollout policy's default and the serving-runtime check
(exporter/runtime.py) cannot disagree about which runtime a version must load on.
"""

from __future__ import annotations

import re

TF_SERVING_IMAGE = "tensorflow/serving:2.19.0"
TF_SERVING_GPU_IMAGE = f"{TF_SERVING_IMAGE}-gpu"
# shipyard's own image (the Dockerfile at the repository root): the KFP components run in it,
# and so does the TF Serving pods' signature check (kube/verify.py), model-signing included.
SHIPYARD_IMAGE = "ghcr.io/shipyard-mlops/shipyard:0.1.0"

_RELEASE_TAG = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?(?:-gpu)?")


def runtime_of_image(image: str) -> str | None:
    """The TensorFlow major.minor an image's tag names ("tensorflow/serving:2.19.0" -> "2.19").

    TF Serving 2.Y is built on TensorFlow 2.Y (its release tags follow TensorFlow's), so the
    tag says which ops and attrs the server's runtime has. None for tags such as `latest` or a
    digest, which say nothing about it.
    """
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    match = _RELEASE_TAG.fullmatch(tag)
    return f"{match[1]}.{match[2]}" if match else None


DEFAULT_SERVING_RUNTIME = runtime_of_image(TF_SERVING_IMAGE)
