"""micro-sam's click path, answering over a pipe for ``bench_widget.py`` (runs in micro-sam's own environment).

    python _microsam_server.py CHECKPOINT IMAGE.npy

Loads SAM ViT-B from CHECKPOINT with ``micro_sam.util.get_sam_model``, precomputes the image's embedding with
``precompute_image_embeddings`` and prints one JSON line (version, embedding seconds). Then, for each JSON line
``{"points": [[y, x], ...], "labels": [1, 0, ...]}`` on stdin, runs ``segment_from_points`` with the precomputed
embedding (what micro-sam's annotator does for a click) and prints ``{"seconds": ...}``.
"""

import json
import sys
import time

import numpy as np


def main() -> None:
    import micro_sam
    from micro_sam.prompt_based_segmentation import segment_from_points
    from micro_sam.util import get_sam_model, precompute_image_embeddings

    checkpoint, image_path = sys.argv[1], sys.argv[2]
    image = np.load(image_path)
    predictor = get_sam_model(model_type="vit_b", device="cpu", checkpoint_path=checkpoint)
    start = time.perf_counter()
    embeddings = precompute_image_embeddings(predictor, image, verbose=False)
    print(json.dumps({"version": micro_sam.__version__, "embed_seconds": time.perf_counter() - start}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        points = np.asarray(request["points"], dtype=float)
        labels = np.asarray(request["labels"], dtype=int)
        start = time.perf_counter()
        segment_from_points(predictor, points, labels, image_embeddings=embeddings)
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()
