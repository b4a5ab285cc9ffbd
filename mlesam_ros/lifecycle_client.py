"""Drive a managed node's lifecycle over its lifecycle_msgs services, as `ros2 lifecycle get|set` does.

For machines with rclpy but without the ros2 command line (the rclpy wheels), and for the tests and benchmarks:

    python -m mlesam_ros.lifecycle_client /mlesam_segmenter configure activate
    python -m mlesam_ros.lifecycle_client /mlesam_segmenter          # prints the state

Each transition is requested in turn; the exit code is 0 when all succeeded, 1 when one was refused (its name and
the state the node is in are printed), 2 for a transition name that does not exist.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState

TRANSITIONS = {"configure": Transition.TRANSITION_CONFIGURE, "cleanup": Transition.TRANSITION_CLEANUP,
               "activate": Transition.TRANSITION_ACTIVATE, "deactivate": Transition.TRANSITION_DEACTIVATE,
               "shutdown": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN}
# `shutdown` from each primary state has its own transition id (lifecycle_msgs/Transition)
_SHUTDOWN = {"unconfigured": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
             "inactive": Transition.TRANSITION_INACTIVE_SHUTDOWN, "active": Transition.TRANSITION_ACTIVE_SHUTDOWN}


class LifecycleClient:
    """ChangeState / GetState clients of one managed node, called from `node` (spun here while waiting)."""

    def __init__(self, node: Any, target: str) -> None:
        """Clients of `target`'s services (`<target>/change_state`, `<target>/get_state`)."""
        self.node = node
        self.target = target
        self._change = node.create_client(ChangeState, f"{target}/change_state")
        self._get = node.create_client(GetState, f"{target}/get_state")

    def ready(self, timeout: float) -> bool:
        """Whether the node's lifecycle services are there within `timeout` seconds."""
        return bool(self._change.wait_for_service(timeout_sec=timeout) and
                    self._get.wait_for_service(timeout_sec=timeout))

    def _call(self, client: Any, request: Any, timeout: float) -> Any:
        import rclpy

        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"{client.srv_name}: no such service after {timeout} s (is {self.target} running?)")
        future = client.call_async(request)
        rclpy.spin_until_future_complete(self.node, future, timeout_sec=timeout)
        if not future.done():
            raise TimeoutError(f"{client.srv_name}: no answer within {timeout} s")
        return future.result()

    def state(self, timeout: float = 30.0) -> str:
        """The node's current state label (unconfigured, inactive, active, finalized)."""
        return str(self._call(self._get, GetState.Request(), timeout).current_state.label)

    def change(self, transition: str, timeout: float = 300.0) -> bool:
        """Request `transition` (a TRANSITIONS name); whether the node took it. Configure loads the model: slow."""
        if transition not in TRANSITIONS:
            raise ValueError(f"transition {transition!r}: one of {', '.join(TRANSITIONS)}")
        transition_id = TRANSITIONS[transition]
        if transition == "shutdown":
            transition_id = _SHUTDOWN.get(self.state(), transition_id)
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return bool(self._call(self._change, request, timeout).success)


def main(argv: list[str] | None = None) -> int:
    """Command line: the node's state, or the transitions requested in order."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("node", help="the managed node, e.g. /mlesam_segmenter")
    parser.add_argument("transitions", nargs="*", help=f"in order: {', '.join(TRANSITIONS)}")
    args, ros_args = parser.parse_known_args(argv)
    unknown = [t for t in args.transitions if t not in TRANSITIONS]
    if unknown:
        print(f"transition {unknown[0]!r}: one of {', '.join(TRANSITIONS)}", file=sys.stderr)
        return 2
    import rclpy

    rclpy.init(args=ros_args)
    node = rclpy.create_node("mlesam_lifecycle_client")
    try:
        client = LifecycleClient(node, args.node)
        for transition in args.transitions:
            if not client.change(transition):
                print(f"{args.node}: {transition} refused; state {client.state()} (the node's log says why)",
                      file=sys.stderr)
                return 1
        print(client.state())
    except TimeoutError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        node.destroy_node()
        rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
