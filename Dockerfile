# MLE-SAM on ROS 2 Jazzy with a CUDA build of PyTorch.
#
# NOT BUILT OR TESTED on the project's own machines: they have no Docker engine and no GPU. It is kept minimal
# on purpose; the supported, tested path is `make setup` (see README). Build and run on a GPU host with the
# NVIDIA container toolkit:
#   docker build -t mlesam:jazzy .
#   docker run --gpus all --net host -v /path/to/sam2.1_hiera_base_plus.pt:/models/sam2.pt:ro \
#       -v /path/to/adapters.safetensors:/models/adapters.safetensors:ro mlesam:jazzy \
#       ros2 launch mlesam_ros segment.launch.py checkpoint:=/models/sam2.pt \
#       adapters:=/models/adapters.safetensors device:=cuda
FROM ros:jazzy-ros-base

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1

RUN apt-get update && apt-get install -y --no-install-recommends \
        python3-pip python3-colcon-common-extensions python3-opencv \
        ros-jazzy-vision-msgs ros-jazzy-diagnostic-msgs ros-jazzy-cv-bridge \
        ros-jazzy-event-camera-msgs ros-jazzy-tf2-ros ros-jazzy-image-transport-plugins \
    && rm -rf /var/lib/apt/lists/*

# CUDA PyTorch first (never torchvision: the project does not use it), then sam2's modelling code without
# its torchvision requirement, then the pinned pure-Python requirements. rclpy and the message packages come
# from the ROS apt packages above, not from the wheels in requirements.txt.
RUN pip3 install torch==2.13.0 --index-url ${TORCH_INDEX} \
    && pip3 install --no-deps rf-sam-2==1.0.3 \
    && pip3 install hydra-core==1.3.8 iopath==0.1.10 safetensors==0.8.0 tqdm==4.70.1 pyyaml rosbags==0.11.9 \
        h5py matplotlib tensorboard evt3==0.4.1 faery==0.7.1

WORKDIR /ws/src/mlesam
COPY . .
RUN . /opt/ros/jazzy/setup.sh && cd /ws && colcon build --packages-select mlesam_ros

RUN printf '#!/bin/bash\nset -e\n. /opt/ros/jazzy/setup.bash\n. /ws/install/setup.bash\nexec "$@"\n' \
        > /entrypoint.sh && chmod +x /entrypoint.sh
WORKDIR /ws/src/mlesam
ENTRYPOINT ["/entrypoint.sh"]
CMD ["ros2", "launch", "mlesam_ros", "segment.launch.py"]
