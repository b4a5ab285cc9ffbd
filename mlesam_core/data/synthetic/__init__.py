"""Procedural multi-modal street scenes in the DELIVER layout (`python -m mlesam_core.data.synthetic --help`)."""

from mlesam_core.data.synthetic.generate import (
                                                 SyntheticSample,
                                                 assignment,
                                                 generate_dataset,
                                                 render_sample,
                                                 write_sample,
)

__all__ = ["SyntheticSample", "assignment", "generate_dataset", "render_sample", "write_sample"]
