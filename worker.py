"""The worker, as Temporal's samples start theirs: ``python worker.py``.

The same as ``twofa worker``: it serves the two-factor workflow and its activities on the task
queue, and sends the notification mails; settings come from ``TWOFA_*`` variables.
"""

from twofa.cli import worker

if __name__ == "__main__":
    worker()
