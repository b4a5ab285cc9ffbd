"""MLE-SAM: SAM2 with per-modality LoRA experts for multi-sensor semantic segmentation (no ROS in here)."""

__version__ = "0.1.0"

_LAZY = {"Segmenter": "mlesam_core.predictor", "Prediction": "mlesam_core.predictor"}


def __getattr__(name: str):
    # `import mlesam_core` stays light (no torch/sam2); the predictor loads on first use.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mlesam_core' has no attribute {name!r}")


__all__ = ["Segmenter", "Prediction", "__version__"]
