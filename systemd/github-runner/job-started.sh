#!/bin/sh
# GitHub Actions self-hosted runner hook (ACTIONS_RUNNER_HOOK_JOB_STARTED):
# requests the job's OIDC token and enrolls it with the interceptor, so every
# intercepted connection of the job is recorded with its repository, commit,
# run and actor, and identity-scoped policy rules apply to it.
#
# The token is only available when the workflow grants `id-token: write`
# and the runner passes ACTIONS_ID_TOKEN_REQUEST_URL/TOKEN to hooks. When the
# variables are missing this hook only warns: enroll from a first workflow
# step instead (see README.md, "CI runners").
set -eu
audience="${INTERCEPTOR_AUDIENCE:-interceptor}"
interceptor="${INTERCEPTOR_BIN:-/usr/local/bin/interceptor}"

if [ -z "${ACTIONS_ID_TOKEN_REQUEST_URL:-}" ] || [ -z "${ACTIONS_ID_TOKEN_REQUEST_TOKEN:-}" ]; then
    echo "interceptor: no OIDC token request variables in the job-started hook; this job is not enrolled (grant 'id-token: write' or enroll in a workflow step)" >&2
    exit 0
fi

case "$ACTIONS_ID_TOKEN_REQUEST_URL" in
    *\?*) url="${ACTIONS_ID_TOKEN_REQUEST_URL}&audience=${audience}" ;;
    *) url="${ACTIONS_ID_TOKEN_REQUEST_URL}?audience=${audience}" ;;
esac

# The answer is {"count":N,"value":"<jwt>"}; a JWT has no quotes in it.
token=$(curl -fsS --max-time 20 -H "Authorization: bearer ${ACTIONS_ID_TOKEN_REQUEST_TOKEN}" "$url" \
    | sed -n 's/.*"value"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
if [ -z "$token" ]; then
    echo "interceptor: could not obtain the job's OIDC token" >&2
    exit 1
fi
printf '%s' "$token" | "$interceptor" enroll --token -
