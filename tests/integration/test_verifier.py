"""The verifier as a process: a verifier whose exporter dies before sending a job cleans up
after itself. (Its comparisons on plain arrays: unit/test_verifier.py.)"""

from __future__ import annotations


def test_a_verifier_left_without_a_job_removes_its_folder():
    """If the exporter dies before sending a job, the verifier cleans up after itself."""
    from shipyard.exporter.verifier import VerifierProcess

    verifier = VerifierProcess()
    verifier._process.stdin.close()  # what the kernel does when the exporter is killed
    assert verifier._process.wait(timeout=120) == 0
    assert not verifier.workdir.exists()
