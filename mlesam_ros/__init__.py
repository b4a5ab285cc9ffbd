"""ROS 2 package: synchronised multi-sensor segmentation node, bag replay, dataset-to-bag (thin rclpy)."""
