import os
import subprocess
import sys

import pytest

from client_demo import proctree

# A parent that starts a child burning 0.3 s of CPU; both then wait for stdin to close.
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
sys.stdin.read()
child.stdin.close()
child.wait()
"""
CHILD = """
import sys, time
while time.process_time() < 0.3:
    pass
print("burnt", flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_a_tree_counts_the_cpu_of_every_live_descendant():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        child_pid, word = parent.stdout.readline().split()
        child = int(child_pid)
        assert word == "burnt"
        assert proctree.tree([parent.pid]) == {parent.pid, child}
        assert proctree.children(parent.pid) == [child]
        whole = proctree.tree_cpu_s([parent.pid])
        alone = proctree.tree_cpu_s([parent.pid], exclude=[child])
        assert whole - alone >= 0.29  # the child's 0.3 s (clock ticks of 10 ms)
        assert proctree.tree_cpu_s([parent.pid, child]) == pytest.approx(whole, abs=0.05)
    finally:
        parent.stdin.close()
        parent.wait(10)
    with pytest.raises(OSError):
        proctree.tree_cpu_s([parent.pid])  # reaped: gone
