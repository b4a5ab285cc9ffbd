"""ament_python package `mlesam_ros`; also installs the ROS-free `mlesam_core` library.

`training/` is deliberately not installed: it runs from the repository root (`python -m training.train`).
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "mlesam_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["mlesam_core", "mlesam_core.*", "mlesam_ros", "mlesam_ros.*"]),
    package_data={"mlesam_core": ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/model", glob("config/model/*.yaml")),
    ],
    install_requires=["setuptools"],
    # colcon runs pytest (not unittest) only for packages that declare it as a test dependency
    extras_require={"test": ["pytest", "pytest-timeout"]},
    zip_safe=True,
    maintainer="MLE-SAM developers",
    maintainer_email="mlesam@example.org",
    description="MLE-SAM multi-sensor semantic segmentation: SAM2 + per-modality LoRA experts, ROS 2 node",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "segment_node = mlesam_ros.node:main",
            "mlesam_replay = mlesam_ros.replay:main",
            "mlesam_dataset_to_bag = mlesam_ros.dataset_to_bag:main",
        ],
    },
)
