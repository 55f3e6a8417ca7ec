"""Run ComfyUI 0.8.0's own execution tests (tests/execution/) against comfyd.

    python bench/run_comfyui_execution_tests.py /path/to/ComfyUI [pytest args...]
    COMFYD_EXTRA_FLAGS="--batch-prompts" python bench/run_comfyui_execution_tests.py ...  (comfyd flags added
    to every server the tests start)

The ComfyUI checkout only provides the tests and their testing_nodes pack; nothing of it is
copied into this repository. A scratch folder gets the tests plus a main.py that starts
comfyd, so the tests' `python main.py --flags` fixture launches comfyd instead of ComfyUI.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ComfyUI keeps history in memory, so each test class's fresh server starts with none; comfyd
# keeps it in user/__comfyd. Every start therefore gets its own empty user directory.
MAIN = f"""import os, sys, tempfile
sys.path.insert(0, {ROOT!r})
from server.main import main
argv = sys.argv[1:] + os.environ.get("COMFYD_EXTRA_FLAGS", "").split()
if "--user-directory" not in argv:
    argv += ["--user-directory", tempfile.mkdtemp(prefix="user-", dir="scratch")]
main(argv)
"""

PYTEST_INI = """[pytest]
markers =
  inference: inference tests
  execution: execution tests
addopts = -p no:cacheprovider
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    checkout = os.path.abspath(sys.argv[1])
    src = os.path.join(checkout, "tests")
    if not os.path.isdir(os.path.join(src, "execution")):
        print(f"{checkout} has no tests/execution folder")
        return 2
    work = tempfile.mkdtemp(prefix="comfyd-exec-tests-")
    os.makedirs(os.path.join(work, "tests"))
    for name in ("__init__.py", "conftest.py"):
        shutil.copy(os.path.join(src, name), os.path.join(work, "tests", name))
    shutil.copytree(os.path.join(src, "execution"), os.path.join(work, "tests", "execution"))
    os.makedirs(os.path.join(work, "scratch"))
    with open(os.path.join(work, "main.py"), "w") as f:
        f.write(MAIN)
    with open(os.path.join(work, "pytest.ini"), "w") as f:
        f.write(PYTEST_INI)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join([work, ROOT, os.path.join(ROOT, "compat")])
    args = sys.argv[2:] or ["tests/execution/test_execution.py"]
    if "--port" not in args:  # the tests default to 8188, which another server may hold
        args += ["--port", str(free_port())]
    print(f"running in {work}: pytest {' '.join(args)}", flush=True)
    return subprocess.call([sys.executable, "-m", "pytest", *args, "--output_dir", os.path.join(work, "out")],
                           cwd=work, env=env)


if __name__ == "__main__":
    sys.exit(main())
