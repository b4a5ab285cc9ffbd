"""Every node parameter the README and docs/*.md name exists (docs drift: a name the node would refuse)."""

from __future__ import annotations

import fnmatch
import re

from fixtures import REPO_ROOT

from mlesam_ros.params import REMOVED_PARAMETERS, SegmentConfig, iter_parameters

# the first part of a dotted node parameter (the groups of SegmentConfig); `qos` is a removed group
GROUPS = ("model", "sensors", "sync", "depth", "lidar", "events", "camera", "outputs", "diagnostics", "qos")
# these documents describe the model and training configs, whose `model.*` keys are another namespace
MODEL_CONFIG_DOCS = ("architecture.md", "data.md", "method.md", "model.md", "training.md")
BACKTICKED = re.compile(r"`([a-z_]+(?:\.[A-Za-z_<>*0-9]+)+)`")


def named_parameters():
    """(document, dotted name) of every backticked name shaped like a node parameter."""
    for doc in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        for name in BACKTICKED.findall(doc.read_text()):
            group = name.split(".")[0]
            if group in GROUPS and not (group == "model" and doc.name in MODEL_CONFIG_DOCS):
                yield doc.name, name


def known(name, declared):
    """A declared parameter (placeholders <m>, <modality> and * stand for any part) or one the node refuses
    naming its replacement (REMOVED_PARAMETERS, where the docs say what replaced it)."""
    pattern = re.sub(r"<\w+>", "*", name)
    return any(fnmatch.fnmatchcase(candidate, pattern) for candidate in [*declared, *REMOVED_PARAMETERS])


def test_every_parameter_the_docs_name_exists():
    declared = [name for name, *_ in iter_parameters(SegmentConfig())]
    named = list(named_parameters())
    assert ("robot.md", "outputs.overlay_alpha") in named  # the scan sees the parameter tables
    assert [(doc, name) for doc, name in named if not known(name, declared)] == []


def test_a_name_the_node_would_refuse_is_caught():
    declared = [name for name, *_ in iter_parameters(SegmentConfig())]
    assert not known("model.cpu_threads", declared) and known("model.threads", declared)
    assert known("sensors.<m>.slop", declared) and not known("sensors.<m>.slope", declared)
    assert known("qos.*", declared)  # removed: the node names what replaced it
