"""The segmentation node with a model made slow on demand (test-only): each `Segmenter.predict` first sleeps the
seconds written in the file $MLESAM_TEST_MODEL_DELAY (0 = the model's own speed)."""

import os
import sys
import time
from pathlib import Path

from mlesam_ros import node  # before torch loads: the node module chooses the OpenMP wait policy


def slow_down_the_model() -> None:
    from mlesam_core import predictor

    predict = predictor.Segmenter.predict

    def slowed_predict(self, *args, **kwargs):
        time.sleep(float(Path(os.environ["MLESAM_TEST_MODEL_DELAY"]).read_text() or 0))
        return predict(self, *args, **kwargs)

    predictor.Segmenter.predict = slowed_predict


if __name__ == "__main__":
    slow_down_the_model()
    sys.exit(node.main())
