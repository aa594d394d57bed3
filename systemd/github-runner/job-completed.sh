#!/bin/sh
# GitHub Actions self-hosted runner hook (ACTIONS_RUNNER_HOOK_JOB_COMPLETED):
# ends the job's enrollment so the next job on this runner starts without
# the previous job's identity. A job that never enrolled has nothing to end;
# that is not an error for the job.
set -u
interceptor="${INTERCEPTOR_BIN:-/usr/local/bin/interceptor}"
if ! "$interceptor" enroll --revoke; then
    echo "interceptor: no enrollment to revoke for this job" >&2
fi
exit 0
