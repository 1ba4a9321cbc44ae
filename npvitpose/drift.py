"""How far a bf16 or int8 model lands from its fp32 self, through the whole pipeline (`predict`).

Used by `npvitpose bench --precision P --compare IMAGE BOXES` and tools/drift.py (the README table).
"""

from dataclasses import dataclass

import numpy as np

from .pipeline import predict


@dataclass(frozen=True)
class Drift:
    heatmap_max: float  # max |heatmap - fp32| / max |fp32 heatmap| over the boxes
    heatmap_rms: float  # rms(heatmap - fp32) / rms(fp32 heatmap)
    px_median: float  # keypoint displacement in image pixels
    px_p95: float
    px_max: float
    score_median: float  # |score - fp32 score| (scores are heatmap maxima)
    score_max: float
    keypoints: int  # how many keypoints were compared

    def row(self):
        return (f"{self.heatmap_max:.2e} | {self.heatmap_rms:.2e} | {self.px_median:.2f} | {self.px_p95:.2f} | "
                f"{self.px_max:.2f} | {self.score_median:.1e} | {self.score_max:.1e} | {self.keypoints}")


HEADER = ("heatmap max err (of max) | heatmap rms err (of rms) | px median | px p95 | px max | "
          "score change median | score change max | keypoints")


def pipeline_outputs(model, cases, **kwargs):
    """[(keypoints, scores, heatmaps)] of `predict` for each (image, boxes) case."""
    return [predict(model, image, boxes, return_heatmaps=True, **kwargs) for image, boxes in cases]


def measure(reference_outputs, outputs):
    """Drift of `outputs` against `reference_outputs`, both from `pipeline_outputs` on the same cases."""
    px, score, hmax, num, den = [], [], 0.0, 0.0, 0.0
    for (k0, s0, h0), (k1, s1, h1) in zip(reference_outputs, outputs):
        if not len(k0):
            continue
        d = h1.astype(np.float64) - h0
        hmax = max(hmax, float(np.abs(d).max() / max(np.abs(h0).max(), 1e-30)))
        num, den = num + float((d * d).sum()), den + float((h0.astype(np.float64) ** 2).sum())
        px.append(np.linalg.norm(k1.astype(np.float64) - k0, axis=-1).ravel())
        score.append(np.abs(s1.astype(np.float64) - s0).ravel())
    px = np.concatenate(px) if px else np.zeros(0)
    score = np.concatenate(score) if score else np.zeros(0)
    if not px.size:
        return Drift(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    return Drift(hmax, float(np.sqrt(num / max(den, 1e-30))), float(np.median(px)), float(np.percentile(px, 95)),
                 float(px.max()), float(np.median(score)), float(score.max()), int(px.size))
