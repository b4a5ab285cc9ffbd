"""MLE-SAM: SAM2 with per-modality LoRA experts for multi-sensor semantic segmentation (no ROS in here)."""

__version__ = "0.1.0"
