"""Build the ROS tools environment: colcon (and, given checkouts, the real launch/launch_ros) beside the project venv.

    python tools/ros_tools_venv.py [--venv .venv-ros-tools] [--project-venv .venv]
        [--launch-src PATH/TO/ros2/launch --launch-ros-src PATH/TO/ros2/launch_ros]

colcon-common-extensions wants setuptools<80 and the project's venv has setuptools 80, so colcon gets a venv of its
own and the project's is never touched. colcon runs a package's tests with its own interpreter, so this venv sees the
project's packages (torch, rclpy, the ament linters, ...) through a site hook that comes after its own
site-packages: its setuptools wins. The hook also puts the ROS wheels' libraries of both venvs on LD_LIBRARY_PATH
(once, by re-executing Python as the ROS wheels' own bootstrapper does for one venv).

`launch` and `launch_ros` (what `ros2 launch` runs) are not on the package registry: with --launch-src and
--launch-ros-src (checkouts of ros2/launch and ros2/launch_ros, e.g. the `jazzy` branch) their pure-Python packages
are pip-installed here, with their registry dependencies. launch_ros imports `composition_interfaces` (a generated
message package that is not on the registry either) at module level, only for composable-node containers; an
import-only stand-in is written whose services raise when used. Nothing of theirs is kept in this repository.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO_ROOT / "tools" / "requirements-ros-tools.txt"
# registry dependencies of launch and launch_ros (their package.xml exec_depends that are Python packages)
LAUNCH_REQUIREMENTS = ["osrf-pycommon==2.0.2", "lark==1.3.1", "ros-jazzy-ament-index-python==1.8.1",
                       "ros-jazzy-lifecycle-msgs==2.0.3"]
LAUNCH_PACKAGES = {"launch-src": ["launch", "launch_xml", "launch_yaml"], "launch-ros-src": ["launch_ros"]}

HOOK = '''\
"""Site hook of the ROS tools venv (written by tools/ros_tools_venv.py): the project venv's packages after ours."""
import glob
import os
import site
import sys

PROJECT_PREFIX = {project_prefix!r}
PROJECT_SITE = {project_site!r}


def _library_dirs(prefix, site_dir):
    return [os.path.join(prefix, "lib"), *sorted(glob.glob(os.path.join(site_dir, "ros_*.libs")))]


_wanted = _library_dirs(sys.prefix, os.path.dirname(os.path.abspath(__file__))) + _library_dirs(PROJECT_PREFIX,
                                                                                                  PROJECT_SITE)
_present = [part for part in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if part]
_missing = [part for part in _wanted if part not in _present]
if _missing and not os.environ.get("_MLESAM_ROS_TOOLS_LAYERED"):
    os.execve(sys.executable, sys.orig_argv, dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(_missing + _present),
                                                  _ROS_WHEELS_BOOTSTRAP_COMPLETE="1",
                                                  _MLESAM_ROS_TOOLS_LAYERED="1"))
site.addsitedir(PROJECT_SITE)
'''

COMPOSITION_STAND_IN = '''\
"""Import-only stand-in for composition_interfaces.srv (tools/ros_tools_venv.py): launch_ros imports it at module
level for LoadComposableNodes; the segmentation node is a plain process and never loads composable nodes."""


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("composition_interfaces is not installed in this tools environment (import-only stand-in)")

    Request = Response = None


LoadNode = UnloadNode = ListNodes = _Unavailable
'''


def run(*command: str | Path) -> None:
    """Run a command, echoing it; stop on failure."""
    print("[ros-tools]", " ".join(map(str, command)), flush=True)
    subprocess.run([str(c) for c in command], check=True)


def site_packages(python: Path) -> Path:
    """The site-packages directory of the venv whose interpreter is `python`."""
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True, env={"_ROS_WHEELS_BOOTSTRAP_COMPLETE": "1"})
    return Path(out.stdout.strip())


def main(argv: list[str] | None = None) -> None:
    """Create or update the tools venv."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", type=Path, default=REPO_ROOT / ".venv-ros-tools", help="tools venv to build")
    parser.add_argument("--project-venv", type=Path, default=REPO_ROOT / ".venv", help="the project's venv")
    parser.add_argument("--launch-src", type=Path, help="checkout of ros2/launch (installs launch, launch_xml, "
                                                        "launch_yaml)")
    parser.add_argument("--launch-ros-src", type=Path, help="checkout of ros2/launch_ros (installs launch_ros)")
    args = parser.parse_args(argv)
    project_python = args.project_venv.resolve() / "bin" / "python"
    if not project_python.exists():
        parser.error(f"no project venv at {args.project_venv} (run `make setup` first)")
    if bool(args.launch_src) != bool(args.launch_ros_src):
        parser.error("--launch-src and --launch-ros-src go together")
    venv = args.venv.resolve()
    python = venv / "bin" / "python"
    if not python.exists():
        run(project_python, "-m", "venv", venv)
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run(*pip, "-r", REQUIREMENTS)
    tools_site = site_packages(python)
    project_site = site_packages(project_python)
    (tools_site / "_mlesam_project_venv.py").write_text(HOOK.format(project_prefix=str(args.project_venv.resolve()),
                                                                    project_site=str(project_site)))
    (tools_site / "_mlesam_project_venv.pth").write_text("import _mlesam_project_venv\n")
    if args.launch_src:
        run(*pip, *LAUNCH_REQUIREMENTS)
        for option, packages in LAUNCH_PACKAGES.items():
            source = getattr(args, option.replace("-", "_")).resolve()
            for package in packages:
                run(*pip, "--no-deps", "--no-build-isolation", source / package)
        stand_in = tools_site / "composition_interfaces"
        (stand_in / "srv").mkdir(parents=True, exist_ok=True)
        (stand_in / "__init__.py").write_text('"""Import-only stand-in (tools/ros_tools_venv.py)."""\n')
        (stand_in / "srv" / "__init__.py").write_text(COMPOSITION_STAND_IN)
    check = "import colcon_core, setuptools, torch, rclpy; print('setuptools', setuptools.__version__)"
    if args.launch_src:
        check += "; import launch, launch_ros.actions; print('launch', launch.__file__)"
    run(python, "-c", textwrap.dedent(check))


if __name__ == "__main__":
    sys.exit(main())
