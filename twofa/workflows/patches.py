"""The workflow's patch ids: one per change that older histories cannot follow.

Each is taken only by runs that did not pass its point under the old code (``workflow.patched``).
The README's "Upgrading" section says how to add one and when to deprecate it;
tests/workflows/histories holds each release's histories, replayed against the current code.
"""

PATCH_ACTIVATION_REFUSAL = "activation-refusal-returns-to-pending-activation"
PATCH_REPEATED_CODE = "repeated-code-of-a-login-is-accepted-again"
PATCH_MAIL_REFUSAL = "refused-activation-mail-leaves-no-code"
PATCH_LOCAL_EFFECTS = "database-effects-run-as-local-activities"
PATCH_DUE_LOCK_ENDS_FIRST = "a-lock-whose-time-is-up-ends-before-a-pin-verdict"
PATCH_LOCAL_MAIL_FIRST = "activation-mail-tries-first-as-a-local-activity"
PATCH_MAIL_RETRIED_AFTER_THE_STEP = "a-busy-relay-retries-the-mail-after-the-step-answers"
PATCH_EARLIER_CUT_STANDS = "an-enable-keeps-the-session-cut-an-earlier-try-made"
