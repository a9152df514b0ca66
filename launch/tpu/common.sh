# Shared by the launch/tpu scripts (sourced, not run).
#
# DRY_RUN=1 makes every script print the commands it would run, one per line, and run none of
# them (no gcloud needed): check the names, zone and paths before spending money.

# run CMD ARGS...: runs the command, or prints it (shell-quoted) under DRY_RUN=1.
run() {
  if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NAME=${NAME:-reasoner}
