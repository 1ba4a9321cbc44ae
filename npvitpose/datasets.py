"""Per-dataset facts: keypoint names, skeleton, flip pairs, warp/decode mode, MoE expert, OKS sigmas.

Names, skeleton links and sigmas are the `dataset_info` of the official ViTPose/mmpose-0.x
`configs/_base_/datasets/{coco,aic,mpii,ap10k,coco_wholebody}.py`, with links turned into 0-based
index pairs; APT-36K uses the AP-10K layout (its configs load `ap10k.py`).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Dataset:
    """One keypoint layout and the inference conventions of its ViTPose config."""

    name: str
    keypoint_names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]  # links drawn between keypoints, 0-based
    flip_pairs: tuple[tuple[int, int], ...]  # left/right channels swapped by the flip test, spec 5.1
    mode: str  # "udp" or "classic": warp and decode, spec 4.2
    expert: int  # MoE dataset index, spec 1.6
    sigmas: tuple[float, ...] | None  # OKS sigmas, one per keypoint

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)


_COCO_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)

_COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)

_COCO_FLIP = (
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
)

_COCO_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
    0.087, 0.087, 0.089, 0.089,
)

_AIC_NAMES = (
    "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top",
    "neck",
)

_AIC_SKELETON = (
    (2, 1), (1, 0), (0, 13), (13, 3), (3, 4), (4, 5), (8, 7), (7, 6), (6, 9), (9, 10), (10, 11),
    (12, 13), (0, 6), (3, 9),
)

_AIC_FLIP = (
    (0, 3), (1, 4), (2, 5), (6, 9), (7, 10), (8, 11),
)

_AIC_SIGMAS = (
    0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144, 0.03909642, 0.03686941,
    0.01981803, 0.03843971, 0.03412318, 0.02415081, 0.01291456, 0.01236173,
)

_MPII_NAMES = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis",
    "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder",
    "left_shoulder", "left_elbow", "left_wrist",
)

_MPII_SKELETON = (
    (0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9), (8, 12), (12, 11),
    (11, 10), (8, 13), (13, 14), (14, 15),
)

_MPII_FLIP = (
    (0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13),
)

_MPII_SIGMAS = (
    0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026, 0.026, 0.026, 0.062, 0.072, 0.179,
    0.179, 0.072, 0.062,
)

_AP10K_NAMES = (
    "L_Eye", "R_Eye", "Nose", "Neck", "Root of tail", "L_Shoulder", "L_Elbow", "L_F_Paw",
    "R_Shoulder", "R_Elbow", "R_F_Paw", "L_Hip", "L_Knee", "L_B_Paw", "R_Hip", "R_Knee", "R_B_Paw",
)

_AP10K_SKELETON = (
    (0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (3, 5), (5, 6), (6, 7), (3, 8), (8, 9), (9, 10),
    (4, 11), (11, 12), (12, 13), (4, 14), (14, 15), (15, 16),
)

_AP10K_FLIP = (
    (0, 1), (5, 8), (6, 9), (7, 10), (11, 14), (12, 15), (13, 16),
)

_AP10K_SIGMAS = (
    0.025, 0.025, 0.026, 0.035, 0.035, 0.079, 0.072, 0.062, 0.079, 0.072, 0.062, 0.107, 0.087,
    0.089, 0.107, 0.087, 0.089,
)

_WHOLEBODY_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle", "left_big_toe", "left_small_toe", "left_heel",
    "right_big_toe", "right_small_toe", "right_heel", "face-0", "face-1", "face-2", "face-3",
    "face-4", "face-5", "face-6", "face-7", "face-8", "face-9", "face-10", "face-11", "face-12",
    "face-13", "face-14", "face-15", "face-16", "face-17", "face-18", "face-19", "face-20",
    "face-21", "face-22", "face-23", "face-24", "face-25", "face-26", "face-27", "face-28",
    "face-29", "face-30", "face-31", "face-32", "face-33", "face-34", "face-35", "face-36",
    "face-37", "face-38", "face-39", "face-40", "face-41", "face-42", "face-43", "face-44",
    "face-45", "face-46", "face-47", "face-48", "face-49", "face-50", "face-51", "face-52",
    "face-53", "face-54", "face-55", "face-56", "face-57", "face-58", "face-59", "face-60",
    "face-61", "face-62", "face-63", "face-64", "face-65", "face-66", "face-67", "left_hand_root",
    "left_thumb1", "left_thumb2", "left_thumb3", "left_thumb4", "left_forefinger1",
    "left_forefinger2", "left_forefinger3", "left_forefinger4", "left_middle_finger1",
    "left_middle_finger2", "left_middle_finger3", "left_middle_finger4", "left_ring_finger1",
    "left_ring_finger2", "left_ring_finger3", "left_ring_finger4", "left_pinky_finger1",
    "left_pinky_finger2", "left_pinky_finger3", "left_pinky_finger4", "right_hand_root",
    "right_thumb1", "right_thumb2", "right_thumb3", "right_thumb4", "right_forefinger1",
    "right_forefinger2", "right_forefinger3", "right_forefinger4", "right_middle_finger1",
    "right_middle_finger2", "right_middle_finger3", "right_middle_finger4", "right_ring_finger1",
    "right_ring_finger2", "right_ring_finger3", "right_ring_finger4", "right_pinky_finger1",
    "right_pinky_finger2", "right_pinky_finger3", "right_pinky_finger4",
)

_WHOLEBODY_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (15, 17), (15, 18),
    (15, 19), (16, 20), (16, 21), (16, 22), (91, 92), (92, 93), (93, 94), (94, 95), (91, 96),
    (96, 97), (97, 98), (98, 99), (91, 100), (100, 101), (101, 102), (102, 103), (91, 104),
    (104, 105), (105, 106), (106, 107), (91, 108), (108, 109), (109, 110), (110, 111), (112, 113),
    (113, 114), (114, 115), (115, 116), (112, 117), (117, 118), (118, 119), (119, 120), (112, 121),
    (121, 122), (122, 123), (123, 124), (112, 125), (125, 126), (126, 127), (127, 128), (112, 129),
    (129, 130), (130, 131), (131, 132),
)

# spec 5.1: the 61 COCO-WholeBody pairs (body, feet, face, then hand i <-> hand i)
_WHOLEBODY_FLIP = _COCO_FLIP + (
    (17, 20), (18, 21), (19, 22),
    (23, 39), (24, 38), (25, 37), (26, 36), (27, 35), (28, 34), (29, 33), (30, 32), (40, 49),
    (41, 48), (42, 47), (43, 46), (44, 45), (54, 58), (55, 57), (59, 68), (60, 67), (61, 66),
    (62, 65), (63, 70), (64, 69), (71, 77), (72, 76), (73, 75), (78, 82), (79, 81), (83, 87),
    (84, 86), (88, 90),
) + tuple((91 + i, 112 + i) for i in range(21))

_WHOLEBODY_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
    0.087, 0.087, 0.089, 0.089, 0.068, 0.066, 0.066, 0.092, 0.094, 0.094, 0.042, 0.043, 0.044,
    0.043, 0.04, 0.035, 0.031, 0.025, 0.02, 0.023, 0.029, 0.032, 0.037, 0.038, 0.043, 0.041, 0.045,
    0.013, 0.012, 0.011, 0.011, 0.012, 0.012, 0.011, 0.011, 0.013, 0.015, 0.009, 0.007, 0.007,
    0.007, 0.012, 0.009, 0.008, 0.016, 0.01, 0.017, 0.011, 0.009, 0.011, 0.009, 0.007, 0.013, 0.008,
    0.011, 0.012, 0.01, 0.034, 0.008, 0.008, 0.009, 0.008, 0.008, 0.007, 0.01, 0.008, 0.009, 0.009,
    0.009, 0.007, 0.007, 0.008, 0.011, 0.008, 0.008, 0.008, 0.01, 0.008, 0.029, 0.022, 0.035, 0.037,
    0.047, 0.026, 0.025, 0.024, 0.035, 0.018, 0.024, 0.022, 0.026, 0.017, 0.021, 0.021, 0.032, 0.02,
    0.019, 0.022, 0.031, 0.029, 0.022, 0.035, 0.037, 0.047, 0.026, 0.025, 0.024, 0.035, 0.018,
    0.024, 0.022, 0.026, 0.017, 0.021, 0.021, 0.032, 0.02, 0.019, 0.022, 0.031,
)

# spec 4.2 (udp for COCO/MPII configs, classic elsewhere) and spec 1.6 (expert index)
DATASETS = {
    "coco": Dataset("coco", _COCO_NAMES, _COCO_SKELETON, _COCO_FLIP, "udp", 0, _COCO_SIGMAS),
    "aic": Dataset("aic", _AIC_NAMES, _AIC_SKELETON, _AIC_FLIP, "classic", 1, _AIC_SIGMAS),
    "mpii": Dataset("mpii", _MPII_NAMES, _MPII_SKELETON, _MPII_FLIP, "udp", 2, _MPII_SIGMAS),
    "ap10k": Dataset("ap10k", _AP10K_NAMES, _AP10K_SKELETON, _AP10K_FLIP, "classic", 3, _AP10K_SIGMAS),
    "apt36k": Dataset("apt36k", _AP10K_NAMES, _AP10K_SKELETON, _AP10K_FLIP, "classic", 4, _AP10K_SIGMAS),
    "wholebody": Dataset(
        "wholebody", _WHOLEBODY_NAMES, _WHOLEBODY_SKELETON, _WHOLEBODY_FLIP, "classic", 5, _WHOLEBODY_SIGMAS
    ),
}
