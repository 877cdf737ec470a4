"""Names of `workflow.patched` markers: changes to what workflows do, kept replay-safe.

Account workflows run for months. A change to the commands a workflow issues (an activity more or
less, a signal, a continue-as-new) would break the replay of runs started before it (a
non-determinism error stalls them); behind a patch, those runs keep the old behaviour and new runs
(or the same run, from the point it passes the patch live) get the new one. Remove a patch once no
run started before it can still be replayed.
"""

STORED_SIZE_RECOUNT = "stored-size-recount"             # passes recount folders of unknown size
RECORD_REFUSED_PASS = "record-refused-pass"             # a pass ended by refused credentials is in history
CREDENTIALS_FLAG_AT_REFUSAL = "credentials-flag-at-refusal"  # new credentials count from the refusal on
THROTTLED_ERROR_REPORTS = "throttled-error-reports"     # a failing page reports its error every 10 min, CANs
STALE_REFUSALS_RETRIED = "stale-refusals-retried"       # refused with credentials replaced since: try again
