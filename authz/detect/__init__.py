"""Detection and containment on the check path, and the identity posture report.

The detectors (`detectors.py`) judge each decided check against its agent's
windows (kept in the store: `authz.stores.windows`, so a fleet counts one
agent together); `monitor.py` feeds them from the pipeline and feeds their
current values back to policy as `context.risk`; `respond.py` carries out
the configured response (record, alert, approve, suspend, revoke) through
the same store and trail as every admin change; `webhook.py` signs alerts.
`posture.py` judges what `inventory.py` reads from the store, the policies
and the trail for standing exposure (`lasthop posture`; `findings.py` says
what a finding holds, `policy_gaps.py` asks Cedar about the policies).
"""
