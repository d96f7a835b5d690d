"""Pose metrics: PoseTrack mAP (poseval), COCO OKS AP/AR, PCK (Sub-JHMDB), AP and PCKh on occluded joints."""

from .coco import CocoResult, evaluate_coco
from .common import EvaluationWarning, MissingPredictionError, NonFiniteKeypointError
from .occlusion import occlusion_metrics
from .pck import PCKResult, evaluate_pck
from .posetrack import PoseTrackAP, evaluate_posetrack

__all__ = ["CocoResult", "EvaluationWarning", "MissingPredictionError", "NonFiniteKeypointError", "PCKResult",
           "PoseTrackAP", "evaluate_coco", "evaluate_pck", "evaluate_posetrack", "occlusion_metrics"]
